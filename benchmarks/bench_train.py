"""Training benchmarks: accuracy on the mini CIFAR-10 under one budget, and training throughput of
effbench's sdpa ViT against timm's VisionTransformer of the same size.

    python benchmarks/bench_train.py accuracy --data-dir ../shared/data/cifar10-mini
    python benchmarks/bench_train.py accuracy -a sdpa --epochs 20
    python benchmarks/bench_train.py throughput          # needs timm (the `bench` extra)

`accuracy` trains each mechanism with the spec's `[train]` recipe (overridable with --set) and
prints test top-1, the best-validation epoch and the wall time; `throughput` times full
training steps (forward, backward, AdamW) of both models in interleaved rounds and prints the
images/s ratio. Run it under tcmalloc (`effbench` re-executes itself; here set LD_PRELOAD) for
the figures quoted in the README.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from effbench.config.load import load_spec, select_models
from effbench.config.overrides import parse_set
from effbench.env import allocator_name, cpu_name, prepare_measuring_process
from effbench.measure import param_count
from effbench.model import build_model
from effbench.results import write_json_atomic
from effbench.train import Dist, Trainer

ROOT = Path(__file__).resolve().parents[1]


def accuracy(args: argparse.Namespace) -> dict:
    overrides = {
        "train.data_dir": str(args.data_dir),
        "train.output_dir": str(args.output),
        "train.device": "cpu",
        "train.epochs": args.epochs,
        **parse_set(args.set or []),
    }
    bench = select_models(load_spec(args.spec, overrides), args.attention)
    rows = []
    for entry in bench.models:
        t0 = time.perf_counter()
        run = Trainer(
            bench,
            entry,
            args.seed,
            dist=Dist(device=torch.device("cpu")),
            run_id=f"bench-{int(t0)}",
            resume=None,
        )
        final = None
        for rec in run.run():
            if rec.kind == "train_epoch":
                print(
                    f"  {entry.name} epoch {rec.epoch}: loss {rec.train_loss:.3f} "
                    f"val {100 * (rec.val_top1 or 0):.1f}% {rec.images_per_s:.0f} img/s",
                    flush=True,
                )
            else:
                final = rec
        wall = time.perf_counter() - t0
        rows.append(
            {
                "model": entry.name,
                "status": final.status,
                "test_top1": final.test_top1,
                "test_top5": final.test_top5,
                "best_epoch": final.best_epoch,
                "epochs": final.epochs_run,
                "train_s": final.train_s,
                "wall_s": wall,
                "images_per_s": final.images_per_s,
            }
        )
        print(
            f"{entry.name:10s} test top-1 {100 * (final.test_top1 or 0):5.1f}%  "
            f"top-5 {100 * (final.test_top5 or 0):5.1f}%  best epoch {final.best_epoch}  "
            f"train {final.train_s / 60:.2f} min  wall {wall / 60:.2f} min  "
            f"{final.images_per_s or 0:.0f} img/s",
            flush=True,
        )
    return {"recipe": bench.train.model_dump(mode="json"), "runs": rows}


def _timm_vit(bb: object) -> torch.nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=bb.image_size,
        patch_size=bb.patch_size,
        in_chans=bb.channels,
        num_classes=bb.num_classes,
        embed_dim=bb.dim,
        depth=bb.depth,
        num_heads=bb.heads,
        mlp_ratio=bb.mlp_ratio,
        qkv_bias=True,
        class_token=True,
        global_pool="token",
    )


def throughput(args: argparse.Namespace) -> dict:
    bench = select_models(load_spec(args.spec), ["sdpa"])
    bb = bench.backbone
    models = {
        "effbench": build_model(bb, bench.models[0].attention),
        "timm": _timm_vit(bb),
    }
    params = {k: param_count(m) for k, m in models.items()}
    x = torch.randn(args.batch_size, bb.channels, bb.image_size, bb.image_size)
    y = torch.randint(0, bb.num_classes, (args.batch_size,))
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}

    def step(name: str) -> None:
        loss = F.cross_entropy(models[name](x), y, label_smoothing=0.1)
        opts[name].zero_grad(set_to_none=True)
        loss.backward()
        opts[name].step()

    for name in models:
        for _ in range(3):
            step(name)
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(args.rounds):
        for name in models:  # interleaved: both see the same machine state
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(name)
            times[name].append((time.perf_counter() - t0) / args.steps)
    ips = {k: args.batch_size / statistics.median(v) for k, v in times.items()}
    ratio = ips["effbench"] / ips["timm"]
    for k in models:
        print(f"{k:9s} {params[k]:,} params  {ips[k]:7.1f} img/s (median of {args.rounds})")
    print(f"ours / timm images per second: {ratio:.3f} (target >= 1.0)")
    return {"params": params, "images_per_s": ips, "ratio": ratio, "batch_size": args.batch_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    acc = sub.add_parser("accuracy", help="train every mechanism on the mini CIFAR-10")
    acc.add_argument("--spec", default=str(ROOT / "bench.toml"))
    acc.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "cifar10-mini"))
    acc.add_argument("-a", "--attention", nargs="+", default=["all"])
    acc.add_argument("--epochs", type=int, default=None)
    acc.add_argument("--seed", type=int, default=0)
    acc.add_argument("--set", nargs="*", help="spec overrides, section.key=value")
    acc.add_argument("--output", default="runs-bench")
    thr = sub.add_parser("throughput", help="training images/s: effbench sdpa vs timm")
    thr.add_argument("--spec", default=str(ROOT / "bench.toml"))
    thr.add_argument("--batch-size", type=int, default=128)
    thr.add_argument("--steps", type=int, default=3)
    thr.add_argument("--rounds", type=int, default=7)
    for p in (acc, thr):
        p.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    env = prepare_measuring_process()  # as `effbench train` does: malloc and OpenMP
    if env is not None:
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    torch.manual_seed(0)
    print(
        f"{cpu_name()}, {torch.get_num_threads()} threads, {allocator_name()}, "
        f"torch {torch.__version__}",
        flush=True,
    )
    out = accuracy(args) if args.what == "accuracy" else throughput(args)
    if args.json:
        env = {"cpu": cpu_name(), "threads": torch.get_num_threads(), "allocator": allocator_name()}
        write_json_atomic(Path(args.json), {"env": env, **out})
    sys.exit(0)


if __name__ == "__main__":
    main()
