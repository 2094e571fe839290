"""Layer 3, runners that yield records and never print: the profile grid (each attention layer
across sequence lengths), the scale grid (whole models across resolutions) and trained-checkpoint
evaluation; `common` holds what the grids share."""

from __future__ import annotations

from effbench.measure import DTYPES, MIB
from effbench.sweep.checkpoint import checkpoint_spec, checkpoint_sweep, scorer_on_test_split
from effbench.sweep.common import (
    FLOP_TOLERANCE,
    FlopMismatchError,
    NonFiniteError,
    attempt,
    check_finite,
    check_flop_counts,
    classify,
    free_memory,
    note_breakdown,
    note_check,
    note_flops,
    sdpa_layer,
)
from effbench.sweep.profile import (
    Point,
    block_breakdown,
    measure_attention,
    profile_grid,
    profile_sweep,
    run_point,
)
from effbench.sweep.scale import (
    BREAKDOWN_CALLS,
    SLOW_CALL_MS,
    Evaluate,
    ScalePoint,
    Trained,
    autocast,
    baseline_name,
    fit_to_tokens,
    measure_model,
    precision_name,
    run_scale_point,
    scale_backbone,
    scale_grid,
    scale_sweep,
    summary_records,
)

__all__ = [
    "BREAKDOWN_CALLS",
    "DTYPES",
    "FLOP_TOLERANCE",
    "MIB",
    "SLOW_CALL_MS",
    "Evaluate",
    "FlopMismatchError",
    "NonFiniteError",
    "Point",
    "ScalePoint",
    "Trained",
    "attempt",
    "autocast",
    "baseline_name",
    "block_breakdown",
    "check_finite",
    "check_flop_counts",
    "checkpoint_spec",
    "checkpoint_sweep",
    "classify",
    "fit_to_tokens",
    "free_memory",
    "measure_attention",
    "measure_model",
    "note_breakdown",
    "note_check",
    "note_flops",
    "precision_name",
    "profile_grid",
    "profile_sweep",
    "run_point",
    "run_scale_point",
    "scale_backbone",
    "scale_grid",
    "scale_sweep",
    "scorer_on_test_split",
    "sdpa_layer",
    "summary_records",
]
