"""Side-by-side CPU benchmark of effbench's efficient attentions, in one run.

Every figure comes from the same process, thread count, allocator and input shape (float32,
batch 8, 4 heads of 32 dims, so C = 128). Timings are medians over interleaved rounds: ours and
the reference alternate block by block (A), and every forward point of B-D is timed once per
round, round-robin, so that a slow spell of a shared machine hits all points alike:

  A. ours vs the reference packages (performer-pytorch, nystrom-attention, linformer) at equal
     settings, forward and forward+backward, ratio ours/theirs (target <= 1.0);
  B. crossover against our `sdpa`: the smallest N from which each mechanism is faster;
  C. at 4,097 tokens: forward speed-up over `sdpa` and peak forward memory;
  D. log-log slope of forward time against N over ~1k-16k tokens (hybrid target <= 1.15).

Forward passes run under `torch.inference_mode()` in eval mode; forward+backward runs in train
mode with an input that requires grad and `out.sum().backward()`. Like `effbench profile`, the
script settles malloc and the OpenMP wait policy first (`effbench.env.prepare_measuring_process`:
tcmalloc or jemalloc preloaded when one is installed, else glibc malloc tuned;
EFFBENCH_ALLOCATOR=system keeps glibc malloc); the allocator is printed and saved with the
figures.

Usage (from the repository root):
    PYTHONPATH=. python benchmarks/bench_attention.py [--quick] [--threads N] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from effbench.attention import build_attention
from effbench.attention.base import Attention
from effbench.config.attention import (
    HybridConfig,
    LinformerConfig,
    NystromConfig,
    PerformerConfig,
    SdpaConfig,
    StandardConfig,
)
from effbench.crossover import crossover as effbench_crossover
from effbench.crossover import loglog_slope
from effbench.env import allocator_name, cpu_name, prepare_measuring_process
from effbench.measure import MIB, peak_bytes

BATCH = 8
HEADS = 4
HEAD_DIM = 32
DIM = HEADS * HEAD_DIM
DEVICE = torch.device("cpu")
SEED = 0
REFERENCE_PACKAGES = ("performer-pytorch", "nystrom-attention", "linformer", "einops")

# The mechanisms of sections B-D, by the name the tables use.
CONFIGS: dict[str, Any] = {
    "sdpa": SdpaConfig(),
    "standard": StandardConfig(),
    "linformer": LinformerConfig(k=64),
    "nystrom": NystromConfig(landmarks=32, pinv_iterations=6, conv_kernel=0),
    "performer": PerformerConfig(features=64, redraw_interval=0),
    "hybrid": HybridConfig(window=3, dilation=2),
}
EFFICIENT = ("linformer", "nystrom", "performer")

# Targets.
RATIO_TARGET = 1.0
CROSSOVER_TARGETS = {"linformer": 130, "nystrom": 320, "performer": 320}
SPEEDUP_TARGETS = {"linformer": 20.0, "nystrom": 20.0, "performer": 8.0}
PEAK_MIB_TARGET = 150.0
HYBRID_SLOPE_TARGET = 1.15


@dataclass(frozen=True)
class Plan:
    """What to measure and for how long."""

    a_lengths: tuple[int, ...]
    b_grid: tuple[int, ...]
    c_length: int
    d_sides: tuple[int, ...]
    exact_max_n: int  # `standard` materialises B*H*N*N floats: no points above this
    sdpa_max_n: int
    rounds: int  # interleaved timing rounds; figures are medians over them
    min_block_s: float  # each timed block repeats the call until it lasts this long
    warmup: int
    equivalence_n: int = 256  # a multiple of the 32 landmarks: no padding in the reference


FULL = Plan(
    a_lengths=(257, 1025, 4097),
    b_grid=(65, 97, 130, 161, 193, 225, 257, 289, 320, 385, 513, 769, 1025),
    c_length=4097,
    d_sides=(32, 48, 64, 96, 128),
    exact_max_n=4097,
    sdpa_max_n=16385,
    rounds=7,
    min_block_s=0.1,
    warmup=2,
)
QUICK = Plan(
    a_lengths=(257, 1025),
    b_grid=(65, 130, 193, 257, 320, 513, 1025),
    c_length=4097,
    d_sides=(32, 64, 128),
    exact_max_n=1025,
    sdpa_max_n=4097,
    rounds=3,
    min_block_s=0.05,
    warmup=1,
)


# ---------------------------------------------------------------------------- environment


def environment(threads: int, plan: Plan, quick: bool) -> dict[str, Any]:
    """Versions, threads and machine: what the figures depend on."""
    versions = {}
    for pkg in REFERENCE_PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "logical_cpus": torch.multiprocessing.cpu_count(),
        "threads": threads,
        "allocator": allocator_name(),
        "interop_threads": torch.get_num_interop_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "mkl": torch.backends.mkl.is_available(),
        "dtype": "float32",
        "batch": BATCH,
        "heads": HEADS,
        "head_dim": HEAD_DIM,
        "mode": "quick" if quick else "full",
        "plan": asdict(plan),
        "reference_packages": versions,
    }


# ---------------------------------------------------------------------------- measuring


def make_input(n: int) -> Tensor:
    """A fixed random (BATCH, n, DIM) input."""
    g = torch.Generator().manual_seed(SEED + n)
    return torch.randn(BATCH, n, DIM, generator=g)


def forward_fn(module: nn.Module, x: Tensor) -> Callable[[], None]:
    """One eval-mode forward under inference_mode."""
    module.eval()

    def fn() -> None:
        with torch.inference_mode():
            module(x)

    return fn


def forward_backward_fn(module: nn.Module, x: Tensor) -> Callable[[], None]:
    """One train-mode forward+backward, input requiring grad, loss = out.sum()."""
    module.train()
    xg = x.detach().clone().requires_grad_(True)

    def fn() -> None:
        module.zero_grad(set_to_none=True)
        xg.grad = None
        module(xg).sum().backward()

    return fn


def block_s(fn: Callable[[], None], calls: int) -> float:
    """Seconds per call over `calls` back-to-back calls."""
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def calls_per_block(fn: Callable[[], None], plan: Plan) -> int:
    """Enough calls for one block to last plan.min_block_s (after plan.warmup calls)."""
    for _ in range(plan.warmup):
        fn()
    return max(1, math.ceil(plan.min_block_s / max(block_s(fn, 1), 1e-6)))


def paired_ms(
    ours: Callable[[], None], theirs: Callable[[], None], plan: Plan
) -> tuple[float, float, float]:
    """(ours ms, theirs ms, ratio): medians over plan.rounds rounds of one block each,
    alternating; the ratio is the median of the per-round ratios."""
    k_ours, k_theirs = calls_per_block(ours, plan), calls_per_block(theirs, plan)
    a, b = [], []
    for _ in range(plan.rounds):
        a.append(block_s(ours, k_ours))
        b.append(block_s(theirs, k_theirs))
    ratio = statistics.median(x / y for x, y in zip(a, b, strict=True))
    return statistics.median(a) * 1e3, statistics.median(b) * 1e3, ratio


def forward_peak_mib(module: nn.Module, x: Tensor) -> tuple[float, str]:
    """Peak bytes allocated during one eval forward under inference_mode, in MiB."""
    fn = forward_fn(module, x)
    fn()  # allocations on first call (e.g. lazily built buffers) are not the steady state
    nbytes, source = peak_bytes(fn, DEVICE)
    return nbytes / MIB, source


def build(name: str, n: int, **overrides: Any) -> Attention:
    """Our mechanism `name` (a CONFIGS key) built for n tokens, options overridden."""
    cfg = CONFIGS[name].model_copy(update=overrides)
    return build_attention(cfg, dim=DIM, num_heads=HEADS, seq_len=n)


class ForwardTimes:
    """Forward times of our mechanisms (CONFIGS settings) at many lengths, measured together:
    every point once per round, round-robin, for plan.rounds rounds; the median is kept.
    Sections B, C and D read the same measurements."""

    def __init__(self, plan: Plan, points: Iterable[tuple[str, int]]) -> None:
        self.plan = plan
        self.points = sorted(set(points), key=lambda p: (p[1], p[0]))
        self.ms: dict[tuple[str, int], float] = {}

    def measure(self) -> None:
        fns, calls = {}, {}
        for name, n in self.points:
            torch.manual_seed(SEED)
            fns[name, n] = forward_fn(build(name, n), make_input(n))
            calls[name, n] = calls_per_block(fns[name, n], self.plan)
        times: dict[tuple[str, int], list[float]] = {p: [] for p in self.points}
        for _ in range(self.plan.rounds):
            for p in self.points:
                times[p].append(block_s(fns[p], calls[p]))
        self.ms = {p: statistics.median(t) * 1e3 for p, t in times.items()}

    def __call__(self, name: str, n: int) -> float:
        return self.ms[name, n]


def forward_points(plan: Plan) -> list[tuple[str, int]]:
    """Every (mechanism, N) that sections B, C and D read."""
    pts = [(name, n) for name in ("sdpa", *EFFICIENT) for n in plan.b_grid]
    pts += [(name, plan.c_length) for name in ("sdpa", *EFFICIENT, "hybrid")]
    limits = {"standard": plan.exact_max_n, "sdpa": plan.sdpa_max_n}
    for name in ("hybrid", *EFFICIENT, "sdpa", "standard"):
        pts += [(name, 1 + s * s) for s in plan.d_sides if 1 + s * s <= limits.get(name, 1 << 62)]
    return pts


# ---------------------------------------------------------------------------- references


class RefPerformerLayer(nn.Module):
    """performer_pytorch.FastAttention between exactly our projections.

    performer_pytorch's SelfAttention uses three separate q/k/v Linears (three GEMMs and three
    rearranges instead of one fused Linear(128, 384)), so its cost would differ from ours in the
    projections rather than in FAVOR+. Wrapping FastAttention with our fused qkv Linear, our
    head split and our output Linear makes both sides do the same projections, so the ratio
    isolates the attention itself; there is no dropout, no redraw (FastAttention never redraws
    by itself) and no local heads.
    """

    def __init__(self, features: int, *, qkv_bias: bool) -> None:
        super().__init__()
        from performer_pytorch import FastAttention

        self.qkv = nn.Linear(DIM, 3 * DIM, bias=qkv_bias)
        self.proj = nn.Linear(DIM, DIM)
        self.fast = FastAttention(dim_heads=HEAD_DIM, nb_features=features, causal=False)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).view(B, N, 3, HEADS, HEAD_DIM).permute(2, 0, 3, 1, 4)
        o = self.fast(qkv[0], qkv[1], qkv[2])
        return self.proj(o.transpose(1, 2).reshape(B, N, C))


@torch.no_grad()
def load_performer(ref: RefPerformerLayer, ours: Attention) -> None:
    """Give the reference our weights and random features."""
    ref.qkv.load_state_dict(ours.qkv.state_dict())
    ref.proj.load_state_dict(ours.proj.state_dict())
    ref.fast.projection_matrix.copy_(ours.features)


@torch.no_grad()
def load_nystrom(ref: nn.Module, ours: Attention) -> None:
    """Give the reference our weights (its to_qkv has the same fused layout, no bias)."""
    ref.to_qkv.weight.copy_(ours.qkv.weight)
    ref.to_out[0].load_state_dict(ours.proj.state_dict())
    if ours.conv is not None:
        ref.res_conv.weight.copy_(ours.conv.weight)


@torch.no_grad()
def load_linformer(ref: nn.Module, ours: Attention) -> None:
    """Give the reference our weights: split W_qkv, E and F transposed to its (N, k)."""
    wq, wk, wv = ours.qkv.weight.chunk(3)
    ref.to_q.weight.copy_(wq)
    ref.to_k.weight.copy_(wk)
    ref.to_v.weight.copy_(wv)
    ref.proj_k.copy_(ours.e.T)
    ref.proj_v.copy_(ours.f.T)
    ref.to_out.load_state_dict(ours.proj.state_dict())


@dataclass(frozen=True)
class Pair:
    """One of our configurations and the reference layer built with the same settings."""

    label: str
    ours: Callable[[int], Attention]
    theirs: Callable[[int], nn.Module]
    load: Callable[[nn.Module, Attention], None]
    note: str


def reference_pairs() -> list[Pair]:
    """Section A's pairs. Ours run with qkv_bias=False: none of the references has one."""
    from linformer import LinformerSelfAttention
    from nystrom_attention import NystromAttention

    def nystrom_pair(kernel: int) -> Pair:
        return Pair(
            label=f"nystrom conv={kernel}",
            ours=lambda n: build("nystrom", n, qkv_bias=False, conv_kernel=kernel),
            theirs=lambda n: NystromAttention(
                dim=DIM,
                dim_head=HEAD_DIM,
                heads=HEADS,
                num_landmarks=32,
                pinv_iterations=6,
                residual=bool(kernel),
                residual_conv_kernel=kernel or 33,
            ),
            load=load_nystrom,
            note="reference pads N up to a multiple of 32 landmarks (part of its cost)",
        )

    return [
        Pair(
            label="performer",
            ours=lambda n: build("performer", n, qkv_bias=False),
            theirs=lambda n: RefPerformerLayer(64, qkv_bias=False),
            load=load_performer,
            note="reference = FastAttention(dim_heads=32, nb_features=64) in our projections",
        ),
        nystrom_pair(0),
        nystrom_pair(33),
        Pair(
            label="linformer",
            ours=lambda n: build("linformer", n, qkv_bias=False),
            theirs=lambda n: LinformerSelfAttention(
                dim=DIM, seq_len=n, k=64, heads=HEADS, dim_head=HEAD_DIM
            ),
            load=load_linformer,
            note="reference has separate to_q/to_k/to_v Linears (no bias)",
        ),
    ]


# ---------------------------------------------------------------------------- sections


def section_equivalence(pairs: Sequence[Pair], n: int) -> list[dict[str, Any]]:
    """Max |ours - theirs| of the forward output with shared weights: the settings match."""
    rows = []
    x = make_input(n)
    for pair in pairs:
        torch.manual_seed(SEED)
        ours, theirs = pair.ours(n).eval(), pair.theirs(n).eval()
        pair.load(theirs, ours)
        with torch.inference_mode():
            a, b = ours(x), theirs(x)
        diff = (a - b).abs().max().item()
        rows.append({"pair": pair.label, "n": n, "max_abs_diff": diff, "out_std": a.std().item()})
    return rows


def section_a(pairs: Sequence[Pair], plan: Plan) -> list[dict[str, Any]]:
    """Ours vs the reference: forward and forward+backward, alternating block by block."""
    rows = []
    for n in plan.a_lengths:
        x = make_input(n)
        for pair in pairs:
            torch.manual_seed(SEED)
            ours, theirs = pair.ours(n), pair.theirs(n)
            pair.load(theirs, ours)
            row: dict[str, Any] = {"pair": pair.label, "n": n}
            for mode, make in (("fwd", forward_fn), ("fwd_bwd", forward_backward_fn)):
                a, b, ratio = paired_ms(make(ours, x), make(theirs, x), plan)
                row.update({f"ours_{mode}_ms": a, f"ref_{mode}_ms": b, f"ratio_{mode}": ratio})
            rows.append(row)
            print(
                f"  A {pair.label} N={n}: ratio fwd {row['ratio_fwd']:.3f}, "
                f"fwd+bwd {row['ratio_fwd_bwd']:.3f}",
                flush=True,
            )
    return rows


def crossover(ns: Sequence[int], mech_ms: Sequence[float], sdpa_ms: Sequence[float]) -> dict:
    """First grid N where the mechanism is faster, and the first from which it stays faster
    (`effbench.crossover`'s rule, on single medians)."""
    first = next((n for n, m, s in zip(ns, mech_ms, sdpa_ms, strict=True) if m < s), None)
    stays = effbench_crossover(
        dict(zip(ns, mech_ms, strict=True)), dict(zip(ns, sdpa_ms, strict=True))
    )
    return {"first_faster_n": first, "stays_faster_from_n": stays[0] if stays else None}


def section_b(fwd: ForwardTimes, plan: Plan) -> dict[str, Any]:
    """Forward ms of sdpa and the efficient mechanisms on the grid, and their crossovers."""
    names = ("sdpa", *EFFICIENT)
    ms = {name: [fwd(name, n) for n in plan.b_grid] for name in names}
    cross = {name: crossover(plan.b_grid, ms[name], ms["sdpa"]) for name in EFFICIENT}
    return {"grid": list(plan.b_grid), "forward_ms": ms, "crossover": cross}


def section_c(fwd: ForwardTimes, plan: Plan) -> list[dict[str, Any]]:
    """At plan.c_length: forward ms, speed-up over sdpa and peak forward memory."""
    n = plan.c_length
    x = make_input(n)
    sdpa_flops = build("sdpa", n).flops(n)
    rows = []
    for name in ("sdpa", *EFFICIENT, "hybrid"):
        torch.manual_seed(SEED)
        module = build(name, n)
        peak, source = forward_peak_mib(module, x)
        ms = fwd(name, n)
        rows.append(
            {
                "mechanism": name,
                "n": n,
                "forward_ms": ms,
                "speedup_vs_sdpa": fwd("sdpa", n) / ms,
                # What the speed-up would be at equal FLOP/s: sdpa's analytic FLOPs over ours.
                "flop_ratio_vs_sdpa": sdpa_flops / module.flops(n),
                "gflops_per_s": module.flops(n) * BATCH / ms / 1e6,
                "peak_mib": peak,
                "peak_source": source,
            }
        )
    return rows


def section_d(fwd: ForwardTimes, plan: Plan) -> dict[str, Any]:
    """Forward time on square grids N = 1 + s^2 and the fitted log-log slope per mechanism."""
    ns = [1 + s * s for s in plan.d_sides]
    limits = {"standard": plan.exact_max_n, "sdpa": plan.sdpa_max_n}
    out: dict[str, Any] = {"n": ns, "sides": list(plan.d_sides), "mechanisms": {}}
    for name in ("hybrid", *EFFICIENT, "sdpa", "standard"):
        pts = [n for n in ns if n <= limits.get(name, max(ns))]
        ms = [fwd(name, n) for n in pts]
        out["mechanisms"][name] = {
            "n": pts,
            "forward_ms": ms,
            "slope": loglog_slope(zip(pts, ms, strict=True)),
            "skipped_n": [n for n in ns if n not in pts],
        }
    return out


# ---------------------------------------------------------------------------- targets


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target with its measured value and whether it passes."""
    out = []

    def add(name: str, value: float | None, op: str, limit: float) -> None:
        if value is None:
            ok = False
        else:
            ok = {"<=": value <= limit, ">=": value >= limit, "<": value < limit}[op]
        out.append({"target": name, "value": value, "op": op, "limit": limit, "pass": ok})

    for row in results["A"]:
        for mode in ("fwd", "fwd_bwd"):
            add(
                f"A {row['pair']} N={row['n']} {mode} ours/ref",
                row[f"ratio_{mode}"],
                "<=",
                RATIO_TARGET,
            )
    for name, limit in CROSSOVER_TARGETS.items():
        add(f"B crossover {name} (stays faster from N)", _cross(results, name), "<=", limit)
    for row in results["C"]:
        name = row["mechanism"]
        if name in SPEEDUP_TARGETS:
            add(f"C {name} speed-up vs sdpa", row["speedup_vs_sdpa"], ">=", SPEEDUP_TARGETS[name])
            add(f"C {name} peak forward MiB", row["peak_mib"], "<", PEAK_MIB_TARGET)
    slope = results["D"]["mechanisms"]["hybrid"]["slope"]
    add("D hybrid log-log slope", slope, "<=", HYBRID_SLOPE_TARGET)
    return out


def _cross(results: dict[str, Any], name: str) -> int | None:
    return results["B"]["crossover"][name]["stays_faster_from_n"]


# ---------------------------------------------------------------------------- printing


def table(title: str, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain fixed-width table: floats to 3 significant-ish places, None as '-'."""

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, bool):
            return "PASS" if v else "FAIL"
        if isinstance(v, float):
            if v == 0 or abs(v) >= 100:
                return f"{v:.1f}"
            if abs(v) >= 1e-3:
                return f"{v:.3f}"
            return f"{v:.2e}"
        return str(v)

    body = [[cell(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(headers)]
    line = "  ".join("-" * w for w in widths)
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([title, fmt.format(*headers), line, *(fmt.format(*r) for r in body)])


def print_env(env: dict[str, Any]) -> None:
    print("== Environment")
    keys = ("torch", "python", "cpu", "logical_cpus", "threads", "allocator", "mode")
    for key in keys:
        print(f"  {key}: {env[key]}")
    print(f"  shape: float32, batch {BATCH}, {HEADS} heads x {HEAD_DIM} dims (C = {DIM})")
    refs = ", ".join(f"{k} {v}" for k, v in env["reference_packages"].items())
    print(f"  references: {refs}")
    plan = env["plan"]
    print(
        f"  timing: warmup {plan['warmup']}, {plan['rounds']} interleaved rounds, "
        f"blocks of >= {plan['min_block_s']} s; medians"
    )
    print()


def print_results(results: dict[str, Any]) -> None:
    """Every section's table, then the targets."""
    print(
        table(
            "== A0. Same weights, same input: max |ours - reference| of the forward output",
            ("pair", "N", "max|diff|", "out std"),
            ((r["pair"], r["n"], r["max_abs_diff"], r["out_std"]) for r in results["A0"]),
        )
    )
    print()
    print(
        table(
            "== A. Ours vs reference (ms; ratio = ours/ref, target <= 1.0)",
            ("pair", "N", "ours fwd", "ref fwd", "ratio", "ours f+b", "ref f+b", "ratio"),
            (
                (
                    r["pair"],
                    r["n"],
                    r["ours_fwd_ms"],
                    r["ref_fwd_ms"],
                    r["ratio_fwd"],
                    r["ours_fwd_bwd_ms"],
                    r["ref_fwd_bwd_ms"],
                    r["ratio_fwd_bwd"],
                )
                for r in results["A"]
            ),
        )
    )
    print()
    b = results["B"]
    names = ("sdpa", *EFFICIENT)
    print(
        table(
            "== B. Forward ms vs N (crossover with sdpa; * = faster than sdpa)",
            ("N", *names),
            (
                (
                    n,
                    *(
                        f"{b['forward_ms'][k][i]:.2f}"
                        + (
                            "*"
                            if k != "sdpa" and b["forward_ms"][k][i] < b["forward_ms"]["sdpa"][i]
                            else " "
                        )
                        for k in names
                    ),
                )
                for i, n in enumerate(b["grid"])
            ),
        )
    )
    print(
        table(
            "   crossover on this grid",
            ("mechanism", "first faster N", "stays faster from N", "target N <="),
            (
                (k, v["first_faster_n"], v["stays_faster_from_n"], CROSSOVER_TARGETS[k])
                for k, v in b["crossover"].items()
            ),
        )
    )
    print()
    print(
        table(
            f"== C. At N = {results['C'][0]['n']}: forward speed-up over sdpa and peak memory",
            ("mechanism", "fwd ms", "speed-up", "FLOP ratio", "GFLOP/s", "peak MiB"),
            (
                (
                    r["mechanism"],
                    r["forward_ms"],
                    r["speedup_vs_sdpa"],
                    r["flop_ratio_vs_sdpa"],
                    r["gflops_per_s"],
                    r["peak_mib"],
                )
                for r in results["C"]
            ),
        )
    )
    print("   FLOP ratio = sdpa's analytic FLOPs / the mechanism's: the speed-up at equal GFLOP/s")
    print(f"   peak memory from: {results['C'][0]['peak_source']}, inference_mode")
    print()
    d = results["D"]
    print(
        table(
            "== D. Forward ms on square grids N = 1 + s^2, and log-log slope of time vs N",
            ("mechanism", *(f"N={n}" for n in d["n"]), "slope"),
            (
                (
                    k,
                    *(v["forward_ms"][v["n"].index(n)] if n in v["n"] else None for n in d["n"]),
                    v["slope"],
                )
                for k, v in d["mechanisms"].items()
            ),
        )
    )
    for k, v in d["mechanisms"].items():
        if v["skipped_n"]:
            print(f"   {k}: skipped N = {v['skipped_n']} (slope fitted on the rest)")
    print()
    print(
        table(
            "== Targets",
            ("target", "value", "need", "result"),
            (
                (t["target"], t["value"], f"{t['op']} {t['limit']}", t["pass"])
                for t in results["targets"]
            ),
        )
    )
    passed = sum(t["pass"] for t in results["targets"])
    print(f"{passed} of {len(results['targets'])} targets pass")


# ---------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer lengths, shorter timing (~1-2 min)")
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads for every figure (default: all)"
    )
    p.add_argument("--out", default=None, help="write every figure to this JSON file")
    return p.parse_args(argv)


def run(plan: Plan, quick: bool, threads: int) -> dict[str, Any]:
    """Measure every section; returns all figures (JSON-ready)."""
    env = environment(threads, plan, quick)
    print_env(env)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # performer_pytorch uses distutils
        pairs = reference_pairs()
    fwd = ForwardTimes(plan, forward_points(plan))
    results: dict[str, Any] = {"env": env}
    sections: list[tuple[str, Callable[[], Any]]] = [
        ("A0", lambda: section_equivalence(pairs, plan.equivalence_n)),
        ("A", lambda: section_a(pairs, plan)),
        ("forward times", fwd.measure),
        ("B", lambda: section_b(fwd, plan)),
        ("C", lambda: section_c(fwd, plan)),
        ("D", lambda: section_d(fwd, plan)),
    ]
    for key, fn in sections:
        t0 = time.perf_counter()
        out = fn()
        if out is not None:
            results[key] = out
        print(f"[section {key} measured in {time.perf_counter() - t0:.0f} s]", flush=True)
    print()
    results["targets"] = targets(results)
    results["wall_s"] = time.perf_counter() - started
    print_results(results)
    print(f"\nwall time {results['wall_s']:.0f} s")
    return results


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    env = prepare_measuring_process()  # as `effbench profile` does: malloc and OpenMP
    if env is not None and argv is None:
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    torch.manual_seed(SEED)
    results = run(QUICK if args.quick else FULL, args.quick, threads)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
        print(f"figures written to {args.out}")


if __name__ == "__main__":
    main()
