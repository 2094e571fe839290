"""What the profile and scale grids share: a point's failure as its record status, the checks
that fail a point (non-finite output, disagreeing FLOP counts), and the record fields they fill."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
from torch import nn

from effbench.attention.sdpa import SdpaAttention
from effbench.measure import FlopCounts, OnStep, Repeats, Rounds, Timing, count_flops
from effbench.measure.profiler import Breakdown
from effbench.results import Status

R = TypeVar("R")

# Counted and analytic FLOPs may differ by at most this fraction before a point is an error.
FLOP_TOLERANCE = 0.01


class NonFiniteError(RuntimeError):
    """The output held NaN or Inf."""


class FlopMismatchError(RuntimeError):
    """Analytic and counted FLOPs disagree by more than FLOP_TOLERANCE."""


def classify(err: BaseException) -> Status:
    """The record status for an exception raised while measuring."""
    if isinstance(err, torch.OutOfMemoryError | MemoryError):
        return "oom"
    msg = str(err).lower()
    if "out of memory" in msg or "can't allocate memory" in msg:
        return "oom"
    if isinstance(err, NonFiniteError):
        return "nan"
    return "error"


def compile_for(
    module: nn.Module,
    section: Any,
    out: dict[str, Any],
    *,
    phase: str,
    device: torch.device,
    grad: bool,
) -> nn.Module:
    """`module` `torch.compile`d as the spec section says (`compile`, `compile_mode`), or
    `module` itself; the record says which (`compiled`, `compile_mode`), and which backend
    its local attention runs in this phase (`local_backend[phase]`), if it has one."""
    local = next((m for m in module.modules() if hasattr(m, "local_backend")), None)
    if local is not None:
        backend = local.local_backend(device, grad=grad)
        out.setdefault("local_backend", {})[phase] = backend
    out["compiled"] = bool(section.compile)
    if not section.compile:
        return module
    out["compile_mode"] = section.compile_mode
    return torch.compile(module, mode=section.compile_mode)


def first_call(fn: Callable[[], R], phase: str, out: dict[str, Any]) -> R:
    """Call `fn` once; when the record's calls are compiled, this call compiles, and its
    seconds go to `compile_s[phase]`, apart from the timings."""
    t0 = time.perf_counter()
    result = fn()
    if out.get("compiled"):
        out.setdefault("compile_s", {})[phase] = time.perf_counter() - t0
    return result


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def attempt(measure: Callable[[], None], device: torch.device) -> tuple[Status, str | None]:
    """Run `measure`; an exception becomes its record status and message. Memory is freed
    afterwards, outside the except block, so that the traceback's frames are gone."""
    status: Status = "ok"
    error = None
    try:
        measure()
    except Exception as err:
        status, error = classify(err), f"{type(err).__name__}: {err}".strip()[:2000]
    free_memory(device)
    return status, error


def check_finite(t: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise NonFiniteError(f"{what} is not finite (NaN or Inf)")


def check_flop_counts(counts: FlopCounts) -> None:
    """Raises FlopMismatchError, naming all three counts, when they disagree by more than
    FLOP_TOLERANCE in all or in the attention."""
    if counts.max_rel_diff() > FLOP_TOLERANCE:
        raise FlopMismatchError(counts.mismatch())


def sdpa_layer(module: nn.Module) -> SdpaAttention | None:
    """The first SDPA attention layer in `module` (itself, when it is one): whose backend a
    record names."""
    return next((m for m in module.modules() if isinstance(m, SdpaAttention)), None)


def in_rounds(
    rounds: Rounds,
    starts: Sequence[tuple[str, Callable[[], Callable[[], R]]]],
    on_step: OnStep | None = None,
) -> Iterator[R]:
    """The grid's records, its timings taken in `rounds`.

    Each start measures one point (everything but its timing repeats, which it leaves to
    `rounds`) and gives back the function that makes its record once those are in. Without
    interleaving a record comes as soon as its point is measured; with it, every record comes
    after the last round. `on_step(what, done, of)` is told before each point and each timing
    of a round. On KeyboardInterrupt the points measured so far still come, with the
    repeats they have, before the interrupt goes on.
    """
    pending: list[Callable[[], R]] = []
    try:
        for i, (label, start) in enumerate(starts):
            if on_step is not None:
                on_step(label, i, len(starts))
            make = start()
            if rounds.interleave:
                pending.append(make)
            else:
                yield make()
        rounds.run(on_step)
    except KeyboardInterrupt:
        rounds.finish()
        yield from (make() for make in pending)
        raise
    yield from (make() for make in pending)


# ---------------------------------------------------------------------------- record fields


def note_repeats(out: dict[str, Any], phase: str, got: Repeats) -> None:
    """A phase's combined repeats into `<phase>_*` fields, its spread, each round's time
    (`<phase>_rounds_ms`, for paired ratios) and check, and `repeats`: the fewest any timed
    phase of the point has."""
    out.update(got.timing.as_dict(phase))
    out[f"{phase}_repeat_spread"] = got.spread
    out[f"{phase}_rounds_ms"] = got.rounds_ms
    out["repeats"] = min(out.get("repeats", got.taken), got.taken)
    note_check(out, phase, got.timing)


def note_check(out: dict[str, Any], phase: str, timing: Timing) -> None:
    """Keep a timing's CPU check in the record fields being filled: `cpu_checks[phase]`, and
    `contended` when any phase's timing stayed disturbed."""
    if timing.check is None:
        return
    out.setdefault("cpu_checks", {})[phase] = timing.check
    out["contended"] = out.get("contended", False) or timing.check.disturbed


def note_breakdown(out: dict[str, Any], b: Breakdown) -> None:
    """A profiled call's time by part into `breakdown_*` fields."""
    out.update(breakdown_ms=b.parts_ms, breakdown_step_ms=b.step_ms, breakdown_source=b.source)


def note_flops(
    out: dict[str, Any],
    module: nn.Module,
    x: torch.Tensor,
    *,
    attention_analytic: int | None = None,
) -> None:
    """Count module(x)'s FLOPs into `flops_*` fields beside `out["flops_analytic"]` (and, with
    `attention_analytic`, its attention layers' into `attn_flops_*`); then check that they
    agree, raising FlopMismatchError when not."""
    counts = count_flops(
        module, x, analytic=out["flops_analytic"], attention_analytic=attention_analytic
    )
    out.update(flops_fvcore=counts.fvcore, flops_flop_counter=counts.flop_counter)
    if attention_analytic is not None:
        out.update(
            attn_flops_fvcore=counts.attention_fvcore,
            attn_flops_flop_counter=counts.attention_flop_counter,
        )
    out["flops_by_op"] = counts.by_op
    check_flop_counts(counts)
