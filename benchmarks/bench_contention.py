"""Figures a user can trust on an ordinary machine: contention, malloc and the thread policy.

Three parts, each printing its figures (and saving them with --out):

  grid       The default `effbench profile` grid (bench.toml) on a quiet machine, then again
             with one busy PyTorch process alongside (small training steps on every core,
             OpenMP left at its defaults, as a second training or a notebook would be): how
             many points were flagged contended, how many recovered on a re-measurement, and
             the flagged and unflagged figures against the quiet ones.
  allocator  The same grid on a quiet machine under glibc malloc as the C library sets it up
             (EFFBENCH_ALLOCATOR=untuned), glibc malloc with huge pages (=system), the
             mimalloc that effbench's install brings (=auto) and tcmalloc (preloaded), point
             by point with every wall time and each run's peak memory.
  policy     Layer-alone forward times (and forward+backward at 65 tokens) of the default
             models at 65-1,025 tokens under several OpenMP/thread settings, each in a fresh
             process, quiet and beside the busy PyTorch process: what each setting costs on a
             quiet machine and how much damage it bounds under contention.

Usage (from the repository root, the package installed):
    python benchmarks/bench_contention.py grid [--duty "ON OFF"] [--out FILE.json]
    python benchmarks/bench_contention.py allocator --tcmalloc /path/libtcmalloc_minimal.so.4
    python benchmarks/bench_contention.py policy [--rounds 4]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OMP_KNOBS = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "OMP_NUM_THREADS")

# A PyTorch process busy with small training steps on every core, OpenMP at its defaults;
# with argv[1] = "ON OFF" seconds it works ON seconds, then sleeps OFF seconds, and again.
NEIGHBOUR = """
import sys, time, torch
m = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 256))
opt = torch.optim.SGD(m.parameters(), lr=1e-3)
x = torch.randn(64, 256)
on, off = (float(v) for v in sys.argv[1].split()) if len(sys.argv) > 1 else (1e9, 0.0)
print("ready", flush=True)
while True:
    end = time.time() + on
    while time.time() < end:
        opt.zero_grad(); m(x).square().mean().backward(); opt.step()
    time.sleep(off)
"""

# One process of the policy part: forward ms per point (and forward+backward at 65 tokens).
PROBE = """
import json, os, sys
import torch
if os.environ.get("PROBE_INTEROP"):
    torch.set_num_interop_threads(int(os.environ["PROBE_INTEROP"]))
from effbench.attention import build_attention
from effbench.measure import time_call
from effbench.config.spec import load_spec
spec = load_spec(sys.argv[1])
cpu = torch.device("cpu")
out = {}
for n in (65, 257, 1025):
    for m in spec.models:
        if n == 1025 and m.attention.kind in ("standard", "fused"):
            continue
        torch.manual_seed(0)
        layer = build_attention(m.attention, dim=128, num_heads=4, seq_len=n).eval()
        x = torch.randn(8, n, 128)
        def fwd():
            with torch.inference_mode():
                return layer(x)
        out[f"{m.name}@{n}"] = time_call(fwd, device=cpu, warmup=2, min_run_time=0.15).median_ms
        if n == 65:
            layer.train()
            xg = x.detach().requires_grad_()
            ps = list(layer.parameters())
            go = torch.ones_like(x)
            def fb():
                return torch.autograd.grad(layer(xg), [xg, *ps], grad_outputs=go)
            t = time_call(fb, device=cpu, warmup=2, min_run_time=0.15)
            out[f"{m.name}@{n} f+b"] = t.median_ms
print(json.dumps(out))
"""

POLICIES: dict[str, dict[str, str]] = {
    "OpenMP default (spin 300k)": {"GOMP_SPINCOUNT": "300000"},
    "effbench (GOMP_SPINCOUNT=1000)": {"GOMP_SPINCOUNT": "1000"},
    "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "1 thread (spin 1000)": {"GOMP_SPINCOUNT": "1000", "OMP_NUM_THREADS": "1"},
    "1 interop thread (spin 1000)": {"GOMP_SPINCOUNT": "1000", "PROBE_INTEROP": "1"},
}


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without OpenMP settings or a preload, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in (*OMP_KNOBS, "LD_PRELOAD")}
    env.pop("EFFBENCH_ALLOCATOR_REEXEC", None)
    return {**env, **extra}


@contextmanager
def busy_neighbour(duty: str | None = None) -> Iterator[None]:
    """A busy PyTorch process for as long as the block lasts (`duty` "ON OFF": busy ON
    seconds, idle OFF seconds, in turn)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", NEIGHBOUR, *([duty] if duty else [])],
        stdout=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(1.0)
        yield
    finally:
        proc.kill()
        proc.wait()


PEAK_RSS: dict[str, list[float]] = {}  # label -> peak resident GiB of each profile run


def profile_run(env: dict[str, str], label: str) -> tuple[dict[str, dict[str, Any]], float]:
    """`effbench profile` on the default bench.toml: records by point, and the wall time (its
    peak resident memory goes to PEAK_RSS)."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "log.txt"
        t0 = time.perf_counter()
        with log.open("w") as fh:
            spec = str(ROOT / "bench.toml")
            proc = subprocess.Popen(
                [sys.executable, "-m", "effbench", "profile", "--spec", spec, "--output", tmp],
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{label}: effbench profile failed:\n{log.read_text()[-3000:]}")
        (path,) = Path(tmp).glob("profile-*.jsonl")
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rss = usage.ru_maxrss / 2**20  # KiB -> GiB
    PEAK_RSS.setdefault(label, []).append(rss)
    print(f"  {label}: {len(records)} points in {wall:.0f} s, peak RSS {rss:.1f} GiB", flush=True)
    return {f"{r['model']}@{r['seq_len']}": r for r in records}, wall


def ratio_line(values: list[float]) -> str:
    if not values:
        return "-"
    values = sorted(values)
    return (
        f"median {statistics.median(values):.2f}, min {values[0]:.2f}, max {values[-1]:.2f}"
        f" (n={len(values)})"
    )


# ---------------------------------------------------------------------------- grid


def grid(args: argparse.Namespace) -> dict[str, Any]:
    env = clean_env()
    print("quiet machine:")
    quiet, quiet_s = profile_run(env, "quiet")
    what = "busy" if args.duty is None else f"busy {args.duty.replace(' ', ' s on, ')} s off"
    print(f"one PyTorch process alongside ({what}):")
    with busy_neighbour(args.duty):
        busy, busy_s = profile_run(env, "busy")
    rows = []
    for key, r in busy.items():
        q = quiet[key]
        for phase in ("fwd", "fwdbwd"):
            check = (r.get("cpu_checks") or {}).get(phase)
            if check is None or not r.get(f"{phase}_ms") or not q.get(f"{phase}_ms"):
                continue
            rows.append(
                {
                    "point": key,
                    "phase": phase,
                    "quiet_ms": q[f"{phase}_ms"],
                    "busy_ms": r[f"{phase}_ms"],
                    "ratio": r[f"{phase}_ms"] / q[f"{phase}_ms"],
                    "flagged": check["disturbed"],
                    "attempts": check["attempts"],
                    "wait_share": check.get("wait_share"),
                    "others_cpus": check.get("others_cpus"),
                    "quiet_flagged": (q.get("cpu_checks") or {}).get(phase, {}).get("disturbed"),
                }
            )
    flagged = [x for x in rows if x["flagged"]]
    recovered = [x for x in rows if not x["flagged"] and x["attempts"] > 1]
    clean = [x for x in rows if not x["flagged"]]
    print(f"\n{'point':<18} {'phase':<7} {'quiet ms':>9} {'busy ms':>9} {'ratio':>6}  verdict")
    for x in rows:
        verdict = (
            f"contended (wait {x['wait_share']:.0%}, others {x['others_cpus']:.1f})"
            if x["flagged"]
            else "recovered on retry"
            if x["attempts"] > 1
            else "clean"
        )
        print(
            f"{x['point']:<18} {x['phase']:<7} {x['quiet_ms']:>9.3f} {x['busy_ms']:>9.3f} "
            f"{x['ratio']:>6.2f}  {verdict}"
        )
    print(
        f"\ntimings: {len(rows)}; flagged contended: {len(flagged)}; recovered on a "
        f"re-measurement: {len(recovered)}; quiet-run timings flagged: "
        f"{sum(bool(x['quiet_flagged']) for x in rows)}"
    )
    print(f"flagged figures / quiet: {ratio_line([x['ratio'] for x in flagged])}")
    print(f"unflagged figures / quiet: {ratio_line([x['ratio'] for x in clean])}")
    print(f"wall time: quiet {quiet_s:.0f} s, busy {busy_s:.0f} s")
    return {
        "neighbour": what,
        "rows": rows,
        "flagged": len(flagged),
        "recovered": len(recovered),
        "timings": len(rows),
        "quiet_s": quiet_s,
        "busy_s": busy_s,
    }


# ---------------------------------------------------------------------------- allocator


def allocator(args: argparse.Namespace) -> dict[str, Any]:
    lib = Path(args.tcmalloc) if args.tcmalloc else None
    if lib is None:
        from effbench.env import find_allocator

        lib = find_allocator()
    if lib is None or not lib.is_file():
        raise SystemExit("no tcmalloc: pass --tcmalloc /path/to/libtcmalloc_minimal.so.4")
    setups = {
        "glibc untuned": clean_env(EFFBENCH_ALLOCATOR="untuned"),
        "glibc huge pages": clean_env(EFFBENCH_ALLOCATOR="system"),
        "mimalloc": clean_env(EFFBENCH_ALLOCATOR="auto"),
        "tcmalloc": clean_env(LD_PRELOAD=str(lib)),
    }
    expect = {"glibc untuned": "glibc malloc", "glibc huge pages": "glibc malloc (huge pages)"}
    runs: dict[str, list[dict[str, dict[str, Any]]]] = {k: [] for k in setups}
    walls: dict[str, list[float]] = {k: [] for k in setups}
    for i in range(args.rounds):
        print(f"round {i + 1} of {args.rounds}:")
        for name, env in setups.items():
            recs, wall = profile_run(env, name)
            alloc = next(iter(recs.values()))["env"]["allocator"]
            assert alloc == expect.get(name, name), (name, alloc)
            runs[name].append(recs)
            walls[name].append(wall)

    def med(name: str, key: str, field: str) -> float | None:
        vals = [r[key].get(field) for r in runs[name] if r[key].get(field)]
        return statistics.median(vals) if vals else None

    keys = list(runs["tcmalloc"][0])
    short = {"glibc untuned": "untuned", "glibc huge pages": "huge", "mimalloc": "mimalloc"}
    rows = []
    print(
        f"\n{'point':<18} {'phase':<7} {'untuned':>9} {'huge':>9} {'mimalloc':>9} "
        f"{'tcmalloc':>9}   ratios to tcmalloc"
    )
    for key in keys:
        for phase in ("fwd", "fwdbwd"):
            field = f"{phase}_ms"
            ms = {n: med(n, key, field) for n in setups}
            if not all(ms.values()):
                continue
            t = ms["tcmalloc"]
            rows.append({"point": key, "phase": phase, **{f"{n}_ms": v for n, v in ms.items()}})
            print(
                f"{key:<18} {phase:<7} "
                + " ".join(f"{v:>9.2f}" for v in ms.values())
                + "   "
                + " ".join(f"{short[n]} {ms[n] / t:.2f}" for n in short)
            )
    geo = {
        n: math.exp(statistics.fmean(math.log(x[f"{n}_ms"] / x["tcmalloc_ms"]) for x in rows))
        for n in short
    }
    print(f"\ngeometric mean over the points, against tcmalloc: {geo}")
    target = [x for x in rows if x["point"].split("@")[0] in ("linformer", "nystrom", "performer")]
    target = [x for x in target if x["point"].endswith("@4097")]
    print("target: linformer, nystrom and performer at 4,097 tokens within 15 % of tcmalloc")
    for x in target:
        t = x["tcmalloc_ms"]
        print(
            f"  {x['point']} {x['phase']}: "
            + ", ".join(
                f"{n} {x[f'{n}_ms'] / t:.2f}" + ("" if x[f"{n}_ms"] / t <= 1.15 else " (NOT met)")
                for n in setups
                if n != "tcmalloc"
            )
        )
    print("whole-run wall time (s): " + ", ".join(f"{n} {walls[n]}" for n in walls))
    return {"rows": rows, "geomean_vs_tcmalloc": geo, "walls_s": walls, "library": str(lib)}


# ---------------------------------------------------------------------------- policy


def probe(env: dict[str, str]) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(ROOT / "bench.toml")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def policy(args: argparse.Namespace) -> dict[str, Any]:
    quiet: dict[str, list[dict[str, float]]] = {p: [] for p in POLICIES}
    busy: dict[str, list[dict[str, float]]] = {p: [] for p in POLICIES}
    for i in range(args.rounds):
        print(f"round {i + 1} of {args.rounds} (quiet)", flush=True)
        for name, extra in POLICIES.items():
            quiet[name].append(probe(clean_env(**extra)))
    for i in range(args.busy_rounds):
        print(f"round {i + 1} of {args.busy_rounds} (busy neighbour)", flush=True)
        for name, extra in POLICIES.items():
            with busy_neighbour():
                busy[name].append(probe(clean_env(**extra)))

    def medians(runs: list[dict[str, float]]) -> dict[str, float]:
        return {k: statistics.median(r[k] for r in runs) for k in runs[0]}

    base = medians(quiet["OpenMP default (spin 300k)"])
    out = {}
    print(f"\n{'setting':<32} {'quiet / default':>28}   {'busy / quiet default':>28}")
    for name in POLICIES:
        q, b = medians(quiet[name]), medians(busy[name])
        qr = [q[k] / base[k] for k in base]
        br = [b[k] / base[k] for k in base]
        qgeo = math.exp(statistics.fmean(math.log(x) for x in qr))
        bgeo = math.exp(statistics.fmean(math.log(x) for x in br))
        print(
            f"{name:<32} geo {qgeo:5.2f} max {max(qr):5.2f}        "
            f"geo {bgeo:6.2f} median {statistics.median(br):6.2f} max {max(br):6.2f}"
        )
        out[name] = {
            "quiet_geomean": qgeo,
            "quiet_max": max(qr),
            "busy_geomean": bgeo,
            "busy_median": statistics.median(br),
            "busy_max": max(br),
            "quiet_ms": q,
            "busy_ms": b,
        }
    return {"settings": out, "points": list(base), "quiet_default_ms": base}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="part", required=True)
    g = sub.add_parser("grid", help="the default profile grid, quiet and beside a busy process")
    g.add_argument(
        "--duty", help="'ON OFF': the neighbour is busy ON seconds, then idle OFF seconds"
    )
    a = sub.add_parser("allocator", help="the default profile grid under three mallocs")
    a.add_argument("--tcmalloc", help="libtcmalloc_minimal.so.4 (default: the installed one)")
    a.add_argument("--rounds", type=int, default=1)
    p = sub.add_parser("policy", help="OpenMP and thread settings, quiet and busy")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--busy-rounds", type=int, default=2)
    for s in sub.choices.values():
        s.add_argument("--out", help="also write the figures to this JSON file")
    args = parser.parse_args()
    from effbench.env import cpu_name

    print(f"{cpu_name()}, {os.cpu_count()} CPUs, python {sys.version.split()[0]}", flush=True)
    started = time.perf_counter()
    figures = {"grid": grid, "allocator": allocator, "policy": policy}[args.part](args)
    figures["wall_s"] = time.perf_counter() - started
    figures["peak_rss_gib"] = PEAK_RSS
    figures["cpu"] = cpu_name()
    print(f"\nwall time {figures['wall_s']:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
        print(f"figures written to {args.out}")


if __name__ == "__main__":
    main()
