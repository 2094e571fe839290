"""What a SLURM job costs a study's unit: the delay from submission to the job running and to
its records being there, for units that do nothing but start effbench (`effbench --version`),
submitted the way `compare --executor slurm` submits them (one array, then one job alone),
beside the same units run as child processes here.

    bash .ci/slurm-up.sh                       # a one-node cluster, or use your own
    python benchmarks/bench_slurm.py --jobs 4 --partition debug

Prints one line per unit and the medians: submit -> running (the scheduler's part) and
submit -> done (what a unit of the study waits beyond its own work).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from effbench.config.spec import ClusterSection
from effbench.study import open_study
from effbench.study.cluster import ClusterExecutor, squeue
from effbench.study.machine import LocalExecutor
from effbench.study.units import ACCURACY, Unit

SPEC = """
[[models]]
name = "sdpa"
attention = { kind = "sdpa" }
"""


def units(study, prefix: str, n: int) -> list[Unit]:  # type: ignore[no-untyped-def]
    return [
        Unit(
            f"{prefix}{i}",
            "startup",
            ACCURACY,
            ["--version"],
            study.results / f"{prefix}{i}",
            study.out / ".attempts" / f"{prefix}{i}",
        )
        for i in range(n)
    ]


def timed_jobs(executor: ClusterExecutor, study, todo: list[Unit]) -> list[tuple[float, float]]:  # type: ignore[no-untyped-def]
    """(submit -> running, submit -> done) per unit, polling the queue every 50 ms."""
    t0 = time.perf_counter()
    live = executor.submit(todo, lambda *_: None)
    running: dict[str, float] = {}
    done: dict[str, float] = {}
    while len(done) < len(todo):
        states = {jid: st for jid, (_n, st) in squeue().items()}
        now = time.perf_counter() - t0
        for key, jid in live.items():
            st = states.get(jid)
            if st in ("RUNNING", "COMPLETING") and key not in running:
                running[key] = now
            if (st is None or st in ("COMPLETED", "FAILED", "CANCELLED")) and key not in done:
                done[key] = now
                running.setdefault(key, now)
        time.sleep(0.05)
    return [(running[u.key], done[u.key]) for u in todo]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--partition", default=None)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-slurm-"))
    (root / "bench.toml").write_text(SPEC, encoding="utf-8")
    study = open_study(root / "study", root / "bench.toml", [], None, fresh=False)
    executor = ClusterExecutor(study, ClusterSection(partition=args.partition), poll_s=0.05)
    nodes = subprocess.run(["sinfo", "-h", "-o", "%D %c %P"], capture_output=True, text=True)
    print(f"cluster: {nodes.stdout.strip()} (nodes, CPUs each, partition)")
    t0 = time.perf_counter()
    LocalExecutor().run(study, units(study, "local", args.jobs), lambda *_: None)
    local = (time.perf_counter() - t0) / args.jobs
    print(f"here, one after another: {local:.2f} s a unit")
    for name, todo in (("array", units(study, "array", args.jobs)),
                       ("alone", units(study, "alone", 1))):  # fmt: skip
        times = timed_jobs(executor, study, todo)
        for u, (run, end) in zip(todo, times, strict=True):
            print(f"{name} {u.key}: running after {run:.2f} s, done after {end:.2f} s")
        print(f"{name}: median submit -> running {statistics.median(t[0] for t in times):.2f} s,"
              f" submit -> done {statistics.median(t[1] for t in times):.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
