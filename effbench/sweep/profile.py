"""Measurement grids. A point that runs out of memory, produces NaN or raises becomes a record
with that status, keeping whatever it measured before failing, and the grid goes on.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from effbench.attention import Attention, build_attention
from effbench.attention.sdpa import SdpaAttention
from effbench.config.spec import BenchSpec, ModelEntry
from effbench.measure import (
    FlopCounts,
    Timing,
    count_flops,
    param_count,
    peak_bytes,
    time_call,
)
from effbench.measure.dispatch import dispatched_ops, sdpa_backend_fields
from effbench.measure.profiler import breakdown, profile_call
from effbench.model import Block
from effbench.results import Env, ProfileRecord, Status

MIB = 2**20
# Counted and analytic FLOPs may differ by at most this fraction before a point is an error.
FLOP_TOLERANCE = 0.01

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


@dataclass(frozen=True)
class Point:
    model: ModelEntry
    seq_len: int

    @property
    def label(self) -> str:
        return f"{self.model.name}-N{self.seq_len}"


def profile_grid(spec: BenchSpec) -> list[Point]:
    return [Point(m, n) for m in spec.models for n in spec.profile.seq_lens]


def check_finite(t: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise NonFiniteError(f"{what} is not finite (NaN or Inf)")


def measure_attention(
    spec: BenchSpec,
    point: Point,
    *,
    device: torch.device,
    out: dict[str, Any],
    trace_dir: Path | None = None,
) -> None:
    """Measure one attention layer at one sequence length, filling `out` as it goes."""
    bb, prof = spec.backbone, spec.profile
    dtype = DTYPES[prof.dtype]
    n, B = point.seq_len, prof.batch_size
    torch.manual_seed(0)
    layer = build_attention(point.model.attention, dim=bb.dim, num_heads=bb.heads, seq_len=n)
    layer = layer.to(device=device, dtype=dtype).eval()
    out["params"] = param_count(layer)
    out["flops_analytic"] = layer.flops(n)
    x = torch.randn(B, n, bb.dim, device=device, dtype=dtype)

    def fwd() -> torch.Tensor:
        with torch.inference_mode():
            return layer(x)

    check_finite(fwd(), "forward output")
    if isinstance(layer, SdpaAttention):
        ops = dispatched_ops(lambda: layer(x))
        out.update(sdpa_backend_fields(layer.cfg.backend, device=device, kernels=[], ops=ops))
    timing = _timed(fwd, "fwd", spec=spec, device=device, out=out)
    out["fwd_gflops_per_s"] = out["flops_analytic"] * B / (timing.median_ms / 1e3) / 1e9
    peak, out["mem_source"] = peak_bytes(fwd, device)
    out["fwd_peak_mib"] = peak / MIB
    if prof.top_ops or trace_dir:
        ops = profile_call(
            fwd,
            device=device,
            top=prof.top_ops,
            trace_dir=_sub(trace_dir, "fwd"),
            worker=point.label,
        )
        out["top_ops"] = [o.model_dump() for o in ops]
    if prof.breakdown:
        block_breakdown(layer, x, spec=spec, device=device, out=out)

    if prof.backward:
        layer.train()
        xg = x.detach().requires_grad_()
        params = [p for p in layer.parameters() if p.requires_grad]
        grad_out = torch.ones_like(x)

        def fwdbwd() -> tuple[torch.Tensor, ...]:
            return torch.autograd.grad(layer(xg), [xg, *params], grad_outputs=grad_out)

        check_finite(fwdbwd()[0], "input gradient")
        _timed(fwdbwd, "fwdbwd", spec=spec, device=device, out=out)
        out["fwdbwd_peak_mib"] = peak_bytes(fwdbwd, device)[0] / MIB
        if trace_dir:
            profile_call(
                fwdbwd,
                device=device,
                top=0,
                trace_dir=_sub(trace_dir, "fwdbwd"),
                worker=point.label,
            )
        layer.eval()

    if prof.count_flops:
        counts = count_flops(layer, x, analytic=out["flops_analytic"])
        out.update(
            flops_fvcore=counts.fvcore,
            flops_flop_counter=counts.flop_counter,
            flops_by_op=counts.by_op,
        )
        check_flop_counts(counts)


def _timed(
    fn: Callable[[], Any], phase: str, *, spec: BenchSpec, device: torch.device, out: dict[str, Any]
) -> Timing:
    """Time fn as `[profile]` says into `<phase>_*` fields, with its CPU check."""
    prof = spec.profile
    timing = time_call(
        fn,
        device=device,
        warmup=prof.warmup,
        min_run_time=prof.min_run_time,
        retries=prof.retries,
    )
    out.update(timing.as_dict(phase))
    note_check(out, phase, timing)
    return timing


def note_check(out: dict[str, Any], phase: str, timing: Timing) -> None:
    """Keep a timing's CPU check in the record fields being filled: `cpu_checks[phase]`, and
    `contended` when any phase's timing stayed disturbed."""
    if timing.check is None:
        return
    out.setdefault("cpu_checks", {})[phase] = timing.check
    out["contended"] = out.get("contended", False) or timing.check.disturbed


def check_flop_counts(counts: FlopCounts) -> None:
    """Raises FlopMismatchError, naming all three counts, when they disagree by more than
    FLOP_TOLERANCE in all or in the attention."""
    if counts.max_rel_diff() > FLOP_TOLERANCE:
        raise FlopMismatchError(counts.mismatch())


def block_breakdown(
    layer: Attention,
    x: torch.Tensor,
    *,
    spec: BenchSpec,
    device: torch.device,
    out: dict[str, Any],
) -> None:
    """Time of one transformer block around `layer` (pre-norm, attention, MLP), split into
    attention / MLP / norm / other by the profiler; on CUDA also the SDPA backend from the
    kernels that ran."""
    bb = spec.backbone
    block = Block(layer, mlp_ratio=bb.mlp_ratio, dropout=0.0).to(device=device, dtype=x.dtype)
    block.eval()

    def fwd() -> torch.Tensor:
        with torch.inference_mode():
            return block(x)

    b = breakdown(fwd, model=block, device=device, top=0)
    out.update(breakdown_ms=b.parts_ms, breakdown_step_ms=b.step_ms, breakdown_source=b.source)
    if isinstance(layer, SdpaAttention) and device.type == "cuda":
        out.update(
            sdpa_backend_fields(
                layer.cfg.backend, device=device, kernels=b.kernel_names, ops=b.op_names
            )
        )


def _sub(root: Path | None, name: str) -> Path | None:
    return None if root is None else root / name


def run_point(
    spec: BenchSpec,
    point: Point,
    *,
    device: torch.device,
    env: Env,
    run_id: str,
    trace_root: Path | None = None,
    measure: Callable[..., None] | None = None,
) -> ProfileRecord:
    """One grid point as a record; failures become a status, never an exception.

    `measure` defaults to `measure_attention`; it fills a dict of record fields as it goes.
    """
    measure = measure or measure_attention
    bb = spec.backbone
    out: dict[str, Any] = {}
    trace_dir = None if trace_root is None else trace_root / point.label
    status, error = attempt(
        lambda: measure(spec, point, device=device, out=out, trace_dir=trace_dir), device
    )
    if trace_dir is not None and trace_dir.exists():
        out["trace_dir"] = str(trace_dir)
    return ProfileRecord(
        status=status,
        error=error,
        run_id=run_id,
        spec_hash=spec.hash(),
        model=point.model.name,
        attention=point.model.attention.model_dump(mode="json"),
        env=env,
        seq_len=point.seq_len,
        batch_size=spec.profile.batch_size,
        dim=bb.dim,
        heads=bb.heads,
        **out,
    )


def profile_sweep(
    spec: BenchSpec,
    *,
    device: torch.device,
    env: Env,
    run_id: str,
    trace_root: Path | None = None,
) -> Iterator[ProfileRecord]:
    """Every model x sequence length of the spec's profile grid, one record each."""
    for point in profile_grid(spec):
        yield run_point(spec, point, device=device, env=env, run_id=run_id, trace_root=trace_root)
