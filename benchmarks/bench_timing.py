"""How steady effbench's CPU timings are, and whether they agree with the attention benchmark.

Two parts, measured in one process (same threads, allocator and machine state):

  1. Spread: the default spec's `scale` grid (`bench.toml`) timed twice, its repeats once
     round-robin over the grid (`[scale] interleave = true`, the default) and once back to
     back per point (`interleave = false`), in alternating order over `--passes` passes.
     Printed: each point's repeat spread ((max - min) / median of the repeats' medians) and
     the median over the grid for each order. Target: median < 5 % round-robin.
  2. Crossovers: the default `profile` grid (its sequence lengths) at the attention
     benchmark's shape (float32, batch 8, 4 heads of 32 dims) timed by `effbench profile`'s
     sweep and by `benchmarks/bench_attention.py`'s own interleaved rounds (`ForwardTimes`).
     Printed: forward ms both ways and, per mechanism, the lengths at which it beats `sdpa`
     and its crossover by each. Target: the same crossover for every mechanism.

Like `effbench`, the script settles malloc and the OpenMP wait policy first
(`effbench.env.prepare_measuring_process`).

Usage (from the repository root):
    PYTHONPATH=. python benchmarks/bench_timing.py [--passes 2] [--threads N] [--out FILE.json]
        [--skip spread crossovers verdicts]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_attention as ba

from effbench.config.load import load_spec, select_models
from effbench.config.spec import BenchSpec
from effbench.crossover import point_verdicts
from effbench.env import environment, prepare_measuring_process
from effbench.ratios import rounds_of
from effbench.results import new_run_id
from effbench.sweep import profile_sweep, scale_sweep

SPEC = Path(__file__).resolve().parent.parent / "bench.toml"
CPU = torch.device("cpu")
SPREAD_TARGET = 0.05
MECHANISMS = ("linformer", "nystrom", "performer", "hybrid")


def scale_spreads(spec: BenchSpec, interleave: bool) -> dict[str, Any]:
    """The scale grid with its repeats in one order: per point, median ms and spread."""
    scale = spec.scale.model_copy(update={"interleave": interleave})
    spec = spec.model_copy(update={"scale": scale})
    env = environment(str(CPU), spec.scale.dtype)
    t0 = time.perf_counter()
    points = {}
    for r in scale_sweep(spec, device=CPU, env=env, run_id=new_run_id()):
        for phase in ("infer", "train"):
            if getattr(r, f"{phase}_ms") is not None:
                points[f"{r.model} {r.image_size}px {phase}"] = {
                    "ms": getattr(r, f"{phase}_ms"),
                    "spread": getattr(r, f"{phase}_repeat_spread"),
                    "contended": r.contended,
                }
    spreads = [p["spread"] for p in points.values()]
    return {
        "interleave": interleave,
        "points": points,
        "median_spread": statistics.median(spreads),
        "under_target": sum(s < SPREAD_TARGET for s in spreads),
        "wall_s": time.perf_counter() - t0,
    }


def part_spread(spec: BenchSpec, passes: int) -> list[dict[str, Any]]:
    runs = []
    for i in range(passes):
        for interleave in (True, False) if i % 2 == 0 else (False, True):
            runs.append(scale_spreads(spec, interleave))
            r = runs[-1]
            order = "round-robin " if interleave else "back to back"
            print(
                f"  pass {i + 1}, {order}: median spread {100 * r['median_spread']:.1f} %, "
                f"{r['under_target']}/{len(r['points'])} points under "
                f"{100 * SPREAD_TARGET:.0f} %, {r['wall_s']:.0f} s",
                flush=True,
            )
    return runs


def crossover_of(ns: Sequence[int], mech: Sequence[float], base: Sequence[float]) -> dict:
    return ba.crossover(ns, mech, base)


def part_crossovers(spec: BenchSpec) -> dict[str, Any]:
    """Forward ms of sdpa and each mechanism on the profile grid, both ways."""
    ns = spec.profile.seq_lens
    prof = spec.profile.model_copy(
        update={
            "batch_size": ba.BATCH,
            "backward": False,
            "count_flops": False,
            "top_ops": 0,
            "breakdown": False,
            "trace": False,
        }
    )
    bb = spec.backbone.model_copy(update={"dim": ba.DIM, "heads": ba.HEADS})
    models = [m for m in spec.models if m.name in ("sdpa", *MECHANISMS)]
    spec = spec.model_copy(update={"profile": prof, "backbone": bb, "models": models})
    for m in models:  # the benchmark builds its own settings: they must be these
        assert m.attention == ba.CONFIGS[m.name], (m.name, m.attention, ba.CONFIGS[m.name])
    env = environment(str(CPU), prof.dtype)
    ours: dict[str, dict[int, float]] = {m.name: {} for m in models}
    for r in profile_sweep(spec, device=CPU, env=env, run_id=new_run_id()):
        ours[r.model][r.seq_len] = r.fwd_ms
    plan = ba.FULL
    fwd = ba.ForwardTimes(plan, [(m.name, n) for m in models for n in ns])
    fwd.measure()
    theirs = {m.name: {n: fwd(m.name, n) for n in ns} for m in models}
    out: dict[str, Any] = {"lengths": ns, "effbench_ms": ours, "benchmark_ms": theirs, "by": {}}
    for name in (m.name for m in models if m.name != "sdpa"):
        a = crossover_of(ns, [ours[name][n] for n in ns], [ours["sdpa"][n] for n in ns])
        b = crossover_of(ns, [theirs[name][n] for n in ns], [theirs["sdpa"][n] for n in ns])
        out["by"][name] = {"effbench": a, "benchmark": b, "agree": a == b}
    return out


def print_crossovers(c: dict[str, Any]) -> None:
    ns = c["lengths"]
    print("  forward ms, effbench profile / bench_attention rounds:")
    print("  " + "model".ljust(10) + "".join(f"N={n}".rjust(20) for n in ns))
    for name, row in c["effbench_ms"].items():
        cells = "".join(f"{row[n]:.3g} / {c['benchmark_ms'][name][n]:.3g}".rjust(20) for n in ns)
        print("  " + name.ljust(10) + cells)
    print("  crossover against sdpa (first faster N, stays faster from N):")
    for name, by in c["by"].items():
        e, b = by["effbench"], by["benchmark"]
        print(
            f"  {name:10} effbench {e['first_faster_n']}, {e['stays_faster_from_n']}; "
            f"benchmark {b['first_faster_n']}, {b['stays_faster_from_n']}: "
            f"{'agree' if by['agree'] else 'DISAGREE'}"
        )


VERDICT_GRIDS = {
    "scale": ("image_size", ("infer", "train")),
    "profile": ("seq_len", ("fwd", "fwdbwd")),
}


def grid_records(spec: BenchSpec, grid: str) -> list[dict[str, Any]]:
    env = environment(str(CPU), getattr(spec, grid).dtype)
    sweep = scale_sweep if grid == "scale" else profile_sweep
    return [r.model_dump() for r in sweep(spec, device=CPU, env=env, run_id=new_run_id())]


def spread(values: Sequence[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values)


def verdicts_of(records: list[dict[str, Any]], grid: str) -> dict[tuple[str, str, int], str]:
    """(model, phase, point) -> verdict against sdpa at that point."""
    at, phases = VERDICT_GRIDS[grid]
    base = [r for r in records if r["model"] == "sdpa"]
    out = {}
    for model in sorted({r["model"] for r in records} - {"sdpa"}):
        mine = [r for r in records if r["model"] == model]
        for phase in phases:
            for point, v in point_verdicts(mine, base, f"{phase}_ms", at).items():
                out[(model, phase, point)] = v["verdict"]
    return out


def part_verdicts(spec: BenchSpec) -> dict[str, Any]:
    """Both default grids twice: absolute and paired-ratio spreads, and verdict agreement."""
    out: dict[str, Any] = {}
    for grid, (at, phases) in VERDICT_GRIDS.items():
        t0 = time.perf_counter()
        runs = [grid_records(spec, grid) for _ in range(2)]
        absolute, paired = [], []
        for records in runs:
            base = {(r[at]): r for r in records if r["model"] == "sdpa"}
            for r in records:
                for phase in phases:
                    mine = rounds_of(r, f"{phase}_ms")
                    if not mine:
                        continue
                    absolute.append(spread(mine))
                    theirs = rounds_of(base.get(r[at]) or {}, f"{phase}_ms")
                    if r["model"] != "sdpa" and theirs:
                        paired.append(spread([a / b for a, b in zip(mine, theirs, strict=False)]))
        said = [verdicts_of(records, grid) for records in runs]
        tally = {"same": 0, "resolved in one": 0, "open in both": 0, "contradict": 0}
        contradictions = []
        for key in sorted(set(said[0]) & set(said[1])):
            a, b = said[0][key], said[1][key]
            kind = (
                "same" if a == b != "not resolved"
                else "open in both" if a == b
                else "resolved in one" if "not resolved" in (a, b)
                else "contradict"
            )  # fmt: skip
            tally[kind] += 1
            if kind == "contradict":
                contradictions.append(" ".join(map(str, key)))
        out[grid] = {
            "absolute_spread_median": statistics.median(absolute),
            "paired_ratio_spread_median": statistics.median(paired),
            "verdicts": tally,
            "contradictions": contradictions,
            "wall_s": time.perf_counter() - t0,
        }
        print(
            f"  {grid}: median spread of a point's rounds "
            f"{100 * statistics.median(absolute):.1f} %, of its paired ratio to sdpa "
            f"{100 * statistics.median(paired):.1f} %; verdicts of "
            f"two runs: {tally['same']} the same, {tally['resolved in one']} resolved in one "
            f"only, {tally['open in both']} open in both, {tally['contradict']} contradicting"
            + (f" ({', '.join(contradictions)})" if contradictions else "")
            + f"; {out[grid]['wall_s']:.0f} s",
            flush=True,
        )
    return out


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--passes", type=int, default=2, help="spread passes (each: both orders)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="write every figure to this JSON file")
    p.add_argument("--skip", nargs="*", choices=("spread", "crossovers", "verdicts"), default=[])
    args = p.parse_args(argv)
    env = prepare_measuring_process()
    if env is not None and argv is None:
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = select_models(load_spec(SPEC), None)
    started = time.perf_counter()
    manifest = environment(str(CPU), "float32").model_dump(mode="json")
    print(
        f"{manifest['device_name']}, torch {manifest['torch']}, {torch.get_num_threads()} "
        f"threads, {manifest['allocator']}, {manifest['openmp']}"
    )
    results: dict[str, Any] = {"env": manifest}
    if "spread" not in args.skip:
        sc = spec.scale
        print(
            f"1. Spread: scale grid of {SPEC.name} ({len(spec.models)} models x "
            f"{sc.resolutions} px, {sc.mode}, batch {sc.batch_size}, {sc.repeats} repeats of "
            f"{sc.min_run_time} s)",
            flush=True,
        )
        runs = part_spread(spec, args.passes)
        for interleave in (True, False):
            mine = [r for r in runs if r["interleave"] == interleave]
            med = statistics.median(r["median_spread"] for r in mine)
            order = "round-robin" if interleave else "back to back"
            print(f"  {order}: median spread over passes {100 * med:.1f} %")
        results["spread"] = runs
    if "crossovers" not in args.skip:
        print(
            f"2. Crossovers: profile grid N = {spec.profile.seq_lens}, batch {ba.BATCH}, "
            f"{ba.HEADS} heads of {ba.HEAD_DIM}",
            flush=True,
        )
        results["crossovers"] = part_crossovers(spec)
        print_crossovers(results["crossovers"])
    if "verdicts" not in args.skip:
        print("3. Verdicts: the default scale and profile grids, each twice", flush=True)
        results["verdicts"] = part_verdicts(spec)
    results["wall_s"] = time.perf_counter() - started
    print(f"wall time {results['wall_s']:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
        print(f"figures written to {args.out}")


if __name__ == "__main__":
    main()
