"""Small measuring functions: latency, peak memory, FLOPs (analytic and counted two ways).

FLOPs are 2 per multiply-add of matrix products everywhere in effbench. fvcore counts one
"flop" per multiply-add and misses several ops; FlopCounterMode misses the CPU SDPA kernel;
both are patched here, and an attention op that would count as zero raises instead.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils import benchmark

from effbench import contention
from effbench.results import CpuCheck

# ---------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class Timing:
    """Per-call times in milliseconds from `blocked_autorange`, and whether the CPU was the
    process's own while they were measured (None: not checked)."""

    median_ms: float
    iqr_ms: float
    runs: int
    calls_per_run: int
    check: CpuCheck | None = None

    def as_dict(self, prefix: str) -> dict[str, float | int]:
        return {
            f"{prefix}_ms": self.median_ms,
            f"{prefix}_iqr_ms": self.iqr_ms,
            f"{prefix}_runs": self.runs,
            f"{prefix}_calls_per_run": self.calls_per_run,
        }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _running_threads(device: torch.device) -> int:
    """Threads a timed call keeps busy: torch's intra-op threads on CPU, the launching thread
    on a GPU."""
    return torch.get_num_threads() if device.type == "cpu" else 1


def cpu_check(
    before: contention.Counters, *, device: torch.device, cpus: frozenset[int]
) -> CpuCheck:
    """Whether the process had its CPUs to itself since `before` (`effbench.contention`)."""
    s = contention.share(
        before, contention.read_counters(cpus), threads=_running_threads(device), cpus=len(cpus)
    )
    reason = contention.disturbance(s)
    return CpuCheck(**dataclasses.asdict(s), disturbed=reason is not None, reason=reason)


def time_call(
    fn: Callable[[], Any],
    *,
    device: torch.device,
    warmup: int = 2,
    min_run_time: float = 0.3,
    retries: int = 0,
) -> Timing:
    """Median and IQR of fn's time over repeated blocks, after `warmup` untimed calls.

    torch.utils.benchmark.Timer picks the calls per block and synchronises CUDA; it runs with
    torch's current thread count (Timer alone would default to one thread). Around the
    measurement the process's CPU time, its threads' run-queue wait and the machine's busy
    time are read (`effbench.contention`); a disturbed measurement is made again, up to
    `retries` times after a doubling back-off. When every attempt was disturbed the fastest
    is kept and its check says `disturbed`.
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    cpus = contention.usable_cpus()
    kept: Timing | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(contention.BACKOFF_S * 2 ** (attempt - 1))
        before = contention.read_counters(cpus)
        m = timer.blocked_autorange(min_run_time=min_run_time)
        check = cpu_check(before, device=device, cpus=cpus)
        timing = Timing(
            median_ms=m.median * 1e3,
            iqr_ms=m.iqr * 1e3,
            runs=len(m.times),
            calls_per_run=m.number_per_run,
            check=check,
        )
        if kept is None or not check.disturbed or timing.median_ms < kept.median_ms:
            kept = timing
        if not check.disturbed:
            break
    assert kept is not None and kept.check is not None
    done = kept.check.model_copy(update={"attempts": attempt + 1})
    return dataclasses.replace(kept, check=done)


def combine_checks(checks: list[CpuCheck]) -> CpuCheck:
    """One check for the median of several timings: shares weighted by wall time, attempts
    summed, and disturbed when at least half of them were (a median of timings that noise
    only slows is then no longer safe)."""
    wall = sum(c.wall_s for c in checks)

    def mean(values: list[float | None]) -> float | None:
        if any(v is None for v in values):
            return None
        return sum(v * c.wall_s for v, c in zip(values, checks, strict=True)) / wall

    bad = [c for c in checks if c.disturbed]
    return CpuCheck(
        wall_s=wall,
        threads=checks[0].threads,
        cpus=checks[0].cpus,
        cpu_share=mean([c.cpu_share for c in checks]) or 0.0,
        wait_share=mean([c.wait_share for c in checks]),
        others_cpus=mean([c.others_cpus for c in checks]),
        attempts=sum(c.attempts for c in checks),
        disturbed=2 * len(bad) >= len(checks),
        reason=f"{len(bad)} of {len(checks)} repeats: {bad[0].reason}" if bad else None,
    )


def time_repeats(
    fn: Callable[[], Any],
    *,
    device: torch.device,
    repeats: int,
    warmup: int = 1,
    min_run_time: float = 0.2,
    retries: int = 0,
) -> tuple[Timing, float]:
    """`time_call` repeated: the median of the repeats' medians (IQR: their median IQR; runs:
    all of them; check: `combine_checks` of theirs) and the spread (max - min) / median of
    those medians."""
    timings = [
        time_call(
            fn,
            device=device,
            warmup=warmup if i == 0 else 0,
            min_run_time=min_run_time,
            retries=retries,
        )
        for i in range(repeats)
    ]
    medians = [t.median_ms for t in timings]
    median = statistics.median(medians)
    combined = Timing(
        median_ms=median,
        iqr_ms=statistics.median(t.iqr_ms for t in timings),
        runs=sum(t.runs for t in timings),
        calls_per_run=timings[0].calls_per_run,
        check=combine_checks([t.check for t in timings if t.check is not None]),
    )
    return combined, (max(medians) - min(medians)) / median


# ---------------------------------------------------------------------------- memory


def cpu_peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak bytes allocated on the CPU during fn, above what was allocated before it.

    Read from the profiler's memory events (every allocation and free, in time order).
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return peak_from_events(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    )


def peak_from_events(events: Any) -> int:
    """Highest running total of (time, +/- bytes) events, never below 0."""
    total = peak = 0
    for _, nbytes in sorted(events):
        total += nbytes
        peak = max(peak, total)
    return peak


def cuda_peak_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes allocated on the GPU during fn, above what was allocated before it."""
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def peak_bytes(fn: Callable[[], Any], device: torch.device) -> tuple[int, str]:
    """(peak bytes during fn above the starting level, how it was measured)."""
    if device.type == "cuda":
        return cuda_peak_bytes(fn, device), "torch.cuda.max_memory_allocated"
    return cpu_peak_bytes(fn), "torch.profiler memory events (CPU)"


def _proc_kib_field(path: str, key: str) -> int | None:
    """A `Key:  N kB` field of a /proc file, in bytes (None when unreadable)."""
    from pathlib import Path

    try:
        for line in Path(path).read_text(encoding="ascii").splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def cap_cpu_memory(*, headroom: float = 0.9, extra_bytes: int | None = None) -> int | None:
    """Cap this process's data segment (RLIMIT_DATA) near the memory still available.

    On Linux an allocation that does not fit is otherwise often granted and the kernel's OOM
    killer later ends the whole sweep; with the cap the allocation fails at once, torch
    raises "can't allocate memory", and the point becomes an `oom` record. The cap is what
    the process uses now plus `headroom` of MemAvailable (or plus `extra_bytes`). Returns it,
    or None where it cannot be set (not Linux, unreadable /proc, or a lower limit exists).
    """
    try:
        import resource
    except ImportError:  # not a POSIX system
        return None

    used = _proc_kib_field("/proc/self/status", "VmData")
    if extra_bytes is None:
        available = _proc_kib_field("/proc/meminfo", "MemAvailable")
        extra = None if available is None else int(available * headroom)
    else:
        extra = extra_bytes
    if used is None or extra is None:
        return None
    cap = used + extra
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if soft != resource.RLIM_INFINITY and soft <= cap:
        return None
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    return cap


# ---------------------------------------------------------------------------- FLOPs

# Ops that do multiply-adds: fvcore must have a handle for each one it meets.
COMPUTE_OP_MARKERS = (
    "mm", "matmul", "einsum", "linear", "conv", "attention", "dot", "bilinear", "aten::mv",
    "aten::addmv", "aten::addr", "aten::outer", "aten::ger", "aten::inner", "aten::tensordot",
)  # fmt: skip


class FlopCountError(RuntimeError):
    """An op that does multiply-adds was met by a counter that cannot count it."""


def _shape(v: Any) -> list[int]:
    from fvcore.nn.jit_handles import get_shape

    s = get_shape(v)
    assert s is not None, "FLOP handle met an input without a known shape"
    return s


def _matmul_macs(a: list[int], b: list[int]) -> int:
    """Multiply-adds of torch.matmul with broadcasting, for any ranks."""
    a = [1, *a] if len(a) == 1 else a
    b = [*b, 1] if len(b) == 1 else b
    batch = torch.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))
    assert a[-1] == b[-2], f"matmul shapes {a} x {b} do not chain"
    return math.prod(batch) * a[-2] * a[-1] * b[-1]


def _matmul_handle(inputs: list[Any], outputs: list[Any]) -> int:
    return _matmul_macs(_shape(inputs[0]), _shape(inputs[1]))


def _einsum_handle(inputs: list[Any], outputs: list[Any]) -> int:
    """Exact multiply-adds of a two-operand einsum: the product of every index's size."""
    eq = inputs[0].toIValue().replace(" ", "")
    lhs = eq.split("->")[0].split(",")
    shapes = [_shape(v) for v in inputs[1].node().inputs()]
    if len(lhs) != 2 or "." in eq:
        raise FlopCountError(f"einsum {eq!r}: only two operands without '...' are counted")
    sizes: dict[str, int] = {}
    for letters, shape in zip(lhs, shapes, strict=True):
        sizes.update(zip(letters, shape, strict=True))
    return math.prod(sizes.values())


def _baddbmm_handle(inputs: list[Any], outputs: list[Any]) -> int:
    """aten::baddbmm(input, batch1, batch2): the batched product only (beta/alpha scalings
    and the addition are element-wise)."""
    b, n, k = _shape(inputs[1])
    assert _shape(inputs[2])[-2] == k, "baddbmm shapes do not chain"
    return b * n * k * _shape(inputs[2])[-1]


def _sdpa_handle(inputs: list[Any], outputs: list[Any]) -> int:
    """aten::scaled_dot_product_attention: Q K^T and P V."""
    q, k, v = (_shape(x) for x in inputs[:3])
    return math.prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1])


# Ops that fvcore counts by default although they are not matrix products.
_FVCORE_ELEMENTWISE = (
    "aten::batch_norm",
    "aten::group_norm",
    "aten::layer_norm",
    "aten::instance_norm",
    "aten::upsample_nearest2d",
    "aten::upsample_bilinear2d",
    "aten::adaptive_avg_pool2d",
    "aten::grid_sampler",
)


def _zero_handle(inputs: list[Any], outputs: list[Any]) -> int:
    return 0


def fvcore_flops(
    module: nn.Module, *inputs: torch.Tensor
) -> tuple[int, dict[str, int], dict[str, int]]:
    """fvcore's count (x2, so 2 per multiply-add), its split by op and by module name.

    Norms, pooling and upsampling handles are switched off so that the count holds matrix
    products only, like FlopCounterMode's and the analytic one.

    Raises:
        FlopCountError: when an op that does multiply-adds has no handle.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter; failures raise below
        return _fvcore_flops(module, inputs)


def _fvcore_flops(
    module: nn.Module, inputs: tuple[torch.Tensor, ...]
) -> tuple[int, dict[str, int], dict[str, int]]:
    from fvcore.nn import FlopCountAnalysis

    fca = FlopCountAnalysis(module, inputs)
    # set_op_handle(name, None) only marks an op ignored and leaves fvcore's own handle in
    # place, so the element-wise ops that fvcore counts by default get a zero handle instead.
    fca.set_op_handle(
        "aten::matmul", _matmul_handle,
        "aten::einsum", _einsum_handle,
        "aten::baddbmm", _baddbmm_handle,
        "aten::scaled_dot_product_attention", _sdpa_handle,
        **{op: _zero_handle for op in _FVCORE_ELEMENTWISE},
    )  # fmt: skip
    fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    by_op = {k: 2 * int(v) for k, v in fca.by_operator().items() if v}
    missed = Counter(fca.unsupported_ops())
    uncounted = sorted(op for op in missed if any(m in op for m in COMPUTE_OP_MARKERS))
    if uncounted:
        raise FlopCountError(f"fvcore has no FLOP handle for {', '.join(uncounted)}")
    by_module = {k: 2 * int(v) for k, v in fca.by_module().items()}
    return sum(by_op.values()), by_op, by_module


def _cpu_flash_sdpa_flops(
    query, key, value, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def _flop_counter_mapping() -> dict[Any, Any]:
    aten = torch.ops.aten
    out: dict[Any, Any] = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        out[aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_flash_sdpa_flops
    return out


# Kernels behind F.scaled_dot_product_attention: if one of these runs and FlopCounterMode has
# no formula for it, the attention would silently count as zero.
_SDPA_KERNELS = (
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_fused_attention_overrideable",
)


def flop_counter_flops(fn: Callable[[], Any]) -> tuple[int, dict[str, int], dict[str, int]]:
    """torch.utils.flop_counter.FlopCounterMode's count of fn (already 2 per multiply-add),
    its split by op and by module name (as `named_modules` gives it; the root is "").

    Raises:
        FlopCountError: when an SDPA kernel ran that the counter has no formula for.
    """
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    class _Seen(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.names: set[str] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.add(func.__name__.split(".")[0])
            return func(*args, **(kwargs or {}))

    counter = FlopCounterMode(display=False, custom_mapping=_flop_counter_mapping())
    seen = _Seen()
    with counter, seen:
        fn()
    known = {getattr(op, "__name__", str(op)).split(".")[0] for op in counter.flop_registry}
    missing = sorted(n for n in seen.names if n in _SDPA_KERNELS and n not in known)
    if missing:
        raise FlopCountError(f"FlopCounterMode has no formula for {', '.join(missing)}")
    counts = counter.get_flop_counts()
    by_op = {str(k): int(v) for k, v in counts.get("Global", {}).items()}
    # Module keys are "<root class>.<name>"; the root's own key is the bare class name.
    by_module = {
        k.partition(".")[2]: sum(int(v) for v in ops.values())
        for k, ops in counts.items()
        if k != "Global"
    }
    return int(counter.get_total_flops()), by_op, by_module


def rel_spread(*values: int) -> float:
    """(max - min) / max of some counts of the same thing; 0 when all are 0."""
    return (max(values) - min(values)) / max(max(values), 1)


@dataclass(frozen=True)
class FlopCounts:
    """Forward FLOPs per sample, 2 per multiply-add, from three sources, in all and for the
    attention layers alone."""

    analytic: int
    fvcore: int
    flop_counter: int
    by_op: dict[str, int]
    attention_analytic: int
    attention_fvcore: int
    attention_flop_counter: int

    def max_rel_diff(self) -> float:
        """The largest disagreement of the three counts, in all or in the attention."""
        return max(
            rel_spread(self.analytic, self.fvcore, self.flop_counter),
            rel_spread(self.attention_analytic, self.attention_fvcore, self.attention_flop_counter),
        )

    def mismatch(self) -> str:
        return (
            f"FLOP counts disagree by {self.max_rel_diff():.1%}: analytic {self.analytic:,}, "
            f"fvcore {self.fvcore:,}, FlopCounterMode {self.flop_counter:,} (attention: "
            f"{self.attention_analytic:,}, {self.attention_fvcore:,}, "
            f"{self.attention_flop_counter:,})"
        )


def attention_module_names(module: nn.Module) -> list[str]:
    """Names (as `named_modules` gives them) of the attention layers in `module`; [""] when
    `module` is one."""
    from effbench.attention.base import Attention

    names = [n for n, m in module.named_modules() if isinstance(m, Attention)]
    return [""] if "" in names else names


@torch.no_grad()
def count_flops(
    module: nn.Module, x: torch.Tensor, *, analytic: int, attention_analytic: int | None = None
) -> FlopCounts:
    """Count module(x)'s forward FLOPs both ways and return them per sample beside the
    analytic counts. `attention_analytic` is that of its attention layers; unset, it is all
    of `analytic` when the module is an attention layer, else 0."""
    was_training = module.training
    module.eval()
    try:
        fv, by_op, fv_modules = fvcore_flops(module, x)
        fc, _, fc_modules = flop_counter_flops(lambda: module(x))
    finally:
        module.train(was_training)
    names = attention_module_names(module)
    if attention_analytic is None:
        attention_analytic = analytic if names == [""] else 0
    b = x.shape[0]
    return FlopCounts(
        analytic=analytic,
        fvcore=fv // b,
        flop_counter=fc // b,
        by_op={k: v // b for k, v in by_op.items()},
        attention_analytic=attention_analytic,
        attention_fvcore=sum(fv_modules.get(n, 0) for n in names) // b,
        attention_flop_counter=sum(fc_modules.get(n, 0) for n in names) // b,
    )


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
