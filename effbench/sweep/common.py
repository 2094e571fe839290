"""What the profile and scale grids share: a point's failure as its record status, the checks
that fail a point (non-finite output, disagreeing FLOP counts), and the record fields they fill."""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
from torch import nn

from effbench.attention.sdpa import SdpaAttention
from effbench.config.size import parse_size
from effbench.measure import MIB, FlopCounts, OnStep, Repeats, Rounds, Timing, count_flops
from effbench.measure.maxbatch import NothingFits, find_max_batch
from effbench.measure.memory import memory_cap, peak_bytes
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


GPU_SHARE = 0.9  # `--batch max` on a GPU without a limit: this share of its free memory
# The process cap of a CPU search is the limit plus this much (or a quarter of the limit):
# libraries allocate beside torch's allocator (oneDNN's scratch space, the allocator's own
# segments), which the measured peak leaves out and which a cap at the limit would refuse.
CAP_SLACK = 64 * 2**20


def batch_limit(section: Any, device: torch.device) -> int:
    """The bytes a call may use under `batch_size = 'max'`: `memory_limit`, or on a GPU
    GPU_SHARE of its free memory. The CPU has no such default (`cli.live` asks for one)."""
    if section.memory_limit is not None:
        return parse_size(section.memory_limit)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0] * GPU_SHARE)
    raise ValueError("batch_size = 'max' on the CPU needs memory_limit")


def search_batch(
    make: Callable[[int], Callable[[], Any]],
    phase: str,
    *,
    section: Any,
    device: torch.device,
    out: dict[str, Any],
) -> int:
    """The largest batch whose call (`make(batch)`) fits the section's memory limit
    (`effbench.measure.maxbatch`), its search kept in `out["max_batch"][phase]`. Each batch
    tried is called once, then called again while its peak is measured, both under the limit
    (`memory_cap`), after one call of a batch of one outside it (what a first call loads
    once is not the batch's). A batch fits when its measured peak is at most the limit; the
    process is held to the limit and a slack (CAP_SLACK), so that a batch far beyond fails
    fast instead of swapping. The search is never timed. Raises MemoryError when nothing
    fits."""
    limit = batch_limit(section, device)
    peak_bytes(make(1), device)  # outside the limit: what a first call and the profiler load
    # once (lazy imports of torch's own modules, kernels) is not the batch's
    free_memory(device)

    def peak_at(batch: int) -> int | None:
        peak = None
        try:
            with memory_cap(device, limit + max(CAP_SLACK, limit // 4)):
                fn = make(batch)
                fn()
                peak = peak_bytes(fn, device)[0]
                del fn  # the call and its input go before the next batch is made
        except (RuntimeError, MemoryError):
            # The call ran at a batch of one outside the limit, so a failure at this batch
            # under it is memory, however a library words it ("can't allocate memory", or
            # oneDNN's "could not create a primitive" when its scratch space is refused).
            pass
        free_memory(device)
        return peak

    try:
        found = find_max_batch(peak_at, limit, largest=section.largest_batch)
    except NothingFits as err:
        raise MemoryError(f"{phase}: {err} ({limit / MIB:.0f} MiB)") from None
    out.setdefault("max_batch", {})[phase] = found.as_dict(MIB)
    return found.batch


def inference_call(
    module: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    amp: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> Callable[[], torch.Tensor]:
    """A call of `module` (or its compiled form) on `x` under `inference_mode` and `amp`
    (autocast, or nothing): what a forward phase times, and what `search_batch` sizes."""

    def fwd() -> torch.Tensor:
        with torch.inference_mode(), amp():
            return module(x)

    return fwd


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


def note_per_image(out: dict[str, Any], phase: str, got: Repeats, batch: int) -> None:
    """Under `batch_size = 'max'`, where each model runs its own batch: a phase's time per
    image (or sequence), `<phase>_image_ms`, and per round, so that models are compared per
    image (throughput) with the same paired ratios as times per batch."""
    out[f"{phase}_image_ms"] = got.timing.median_ms / batch
    out[f"{phase}_image_rounds_ms"] = [t / batch for t in got.rounds_ms]


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
    elementwise: int = 0,
) -> None:
    """Count module(x)'s FLOPs into `flops_*` fields beside `out["flops_analytic"]` (and, with
    `attention_analytic`, its attention layers' into `attn_flops_*`); then check that they
    agree, raising FlopMismatchError when not. `elementwise`: the part of the analytic
    counts that is element-wise work, which the counters do not see and are not checked
    against (recorded as `flops_elementwise` when there is any)."""
    counts = count_flops(
        module,
        x,
        analytic=out["flops_analytic"] - elementwise,
        attention_analytic=None if attention_analytic is None else attention_analytic - elementwise,
    )
    if elementwise:
        out["flops_elementwise"] = elementwise
    out.update(flops_fvcore=counts.fvcore, flops_flop_counter=counts.flop_counter)
    if attention_analytic is not None:
        out.update(
            attn_flops_fvcore=counts.attention_fvcore,
            attn_flops_flop_counter=counts.attention_flop_counter,
        )
    out["flops_by_op"] = counts.by_op
    check_flop_counts(counts)
