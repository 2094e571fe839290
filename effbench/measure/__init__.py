"""Layer 2, measuring one call: timing (latency, CPU checks), memory (peaks), flops (three counts
that must agree), precision (autocast); dispatch (ops, SDPA backend), profiler and energy (NVML's
counter) are imported as submodules."""

from __future__ import annotations

from effbench.measure.flops import (
    COMPUTE_OP_MARKERS,
    FlopCountError,
    FlopCounts,
    attention_module_names,
    count_flops,
    flop_counter_flops,
    fvcore_flops,
    param_count,
    rel_spread,
)
from effbench.measure.memory import (
    MIB,
    cap_cpu_memory,
    cpu_peak_bytes,
    cuda_peak_bytes,
    peak_bytes,
    peak_from_events,
    peak_memory,
    reset_peak_memory,
)
from effbench.measure.precision import DTYPES, PRECISIONS, autocast, autocast_dtype
from effbench.measure.timing import (
    OnStep,
    Repeats,
    Rounds,
    Timing,
    combine_checks,
    combine_repeats,
    cpu_check,
    synchronize,
    time_call,
)

__all__ = [
    "COMPUTE_OP_MARKERS",
    "DTYPES",
    "MIB",
    "PRECISIONS",
    "FlopCountError",
    "FlopCounts",
    "OnStep",
    "Repeats",
    "Rounds",
    "Timing",
    "attention_module_names",
    "autocast",
    "autocast_dtype",
    "cap_cpu_memory",
    "combine_checks",
    "combine_repeats",
    "count_flops",
    "cpu_check",
    "cpu_peak_bytes",
    "cuda_peak_bytes",
    "flop_counter_flops",
    "fvcore_flops",
    "param_count",
    "peak_bytes",
    "peak_from_events",
    "peak_memory",
    "rel_spread",
    "reset_peak_memory",
    "synchronize",
    "time_call",
]
