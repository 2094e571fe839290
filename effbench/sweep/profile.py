"""The profile grid: each attention layer alone across sequence lengths (time, memory, FLOPs,
kernels, time by part inside a block). A point that fails is a record with that status."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from effbench.attention import Attention, build_attention
from effbench.config.spec import BenchSpec, ModelEntry
from effbench.measure import DTYPES, MIB, OnStep, Repeats, Rounds, Timing, param_count, peak_bytes
from effbench.measure.dispatch import dispatched_ops, sdpa_backend_fields
from effbench.measure.profiler import breakdown, kernel_time_ms, launch_bound, profile_call
from effbench.model import Block
from effbench.results import Env, ProfileRecord, inside, record_base
from effbench.sweep.common import (
    NonFiniteError as NonFiniteError,  # tests reach it here, beside measure_attention
)
from effbench.sweep.common import (
    attempt,
    check_finite,
    compile_for,
    first_call,
    in_rounds,
    inference_call,
    note_breakdown,
    note_flops,
    note_per_image,
    note_repeats,
    sdpa_layer,
    search_batch,
)


@dataclass(frozen=True)
class Point:
    model: ModelEntry
    seq_len: int

    @property
    def label(self) -> str:
        return f"{self.model.name}-N{self.seq_len}"


def profile_grid(spec: BenchSpec) -> list[Point]:
    return [Point(m, n) for m in spec.models for n in spec.profile.seq_lens]


def measure_attention(
    spec: BenchSpec,
    point: Point,
    *,
    device: torch.device,
    out: dict[str, Any],
    rounds: Rounds,
    trace_dir: Path | None = None,
) -> None:
    """Measure one attention layer at one sequence length, filling `out` as it goes; the
    timing repeats are `rounds`'s to take."""
    bb, prof = spec.backbone, spec.profile
    dtype = DTYPES[prof.dtype]
    n = point.seq_len
    torch.manual_seed(0)
    heads = point.model.attention.head_count(dim=bb.dim, backbone_heads=bb.heads)
    layer = build_attention(point.model.attention, dim=bb.dim, num_heads=heads, seq_len=n)
    layer = layer.to(device=device, dtype=dtype).eval()
    out["params"] = param_count(layer)
    out["flops_analytic"] = layer.flops(n)

    def tokens(batch: int) -> torch.Tensor:
        return torch.randn(batch, n, bb.dim, device=device, dtype=dtype)

    x = tokens(prof.batch_size) if prof.batch_size != "max" else None
    if x is None:
        make = lambda b: inference_call(layer, tokens(b))  # noqa: E731
        x = tokens(search_batch(make, "fwd", section=prof, device=device, out=out))
    out["batch_size"] = B = x.shape[0]
    run = compile_for(layer, prof, out, phase="fwd", device=device, grad=False)
    fwd = inference_call(run, x)

    check_finite(first_call(fwd, "fwd", out), "forward output")
    sdpa = sdpa_layer(layer)
    if sdpa is not None:
        ops = dispatched_ops(lambda: layer(x))
        out.update(sdpa_backend_fields(sdpa.cfg.backend, device=device, kernels=[], ops=ops))
    flop = out["flops_analytic"] * B

    def gflops(timing: Timing) -> None:
        out["fwd_gflops_per_s"] = flop / (timing.median_ms / 1e3) / 1e9

    where = {"spec": spec, "device": device, "out": out, "rounds": rounds}
    _timed(fwd, "fwd", point, **where, then=gflops, batch=B)
    out["fwd_kernel_ms"] = kernel_time_ms(fwd, device=device)
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
        _backward(
            layer, x, point, spec=spec, device=device, out=out, rounds=rounds, trace_dir=trace_dir
        )
    if prof.count_flops:
        note_flops(out, layer, x, elementwise=layer.elementwise_flops(n))


def _grads(layer: Attention, run: Any, x: torch.Tensor) -> Callable[[], Any]:
    """Forward and backward of `layer` (through `run`, compiled where it is): the gradients
    of the input and the parameters."""
    xg = x.detach().requires_grad_()
    params = [p for p in layer.parameters() if p.requires_grad]
    grad_out = torch.ones_like(x)

    def fwdbwd() -> tuple[torch.Tensor, ...]:
        return torch.autograd.grad(run(xg), [xg, *params], grad_outputs=grad_out)

    return fwdbwd


def _backward(
    layer: Attention,
    x: torch.Tensor,
    point: Point,
    *,
    spec: BenchSpec,
    device: torch.device,
    out: dict[str, Any],
    rounds: Rounds,
    trace_dir: Path | None,
) -> None:
    """Forward and backward of `layer` (gradients of the input and the parameters) into
    `fwdbwd_*` fields, and its trace with `trace_dir`. A copy of the layer trains, so that the
    forward's repeats in the rounds still time the layer in eval mode."""
    layer = copy.deepcopy(layer).train()
    if spec.profile.batch_size == "max":
        make = lambda b: _grads(layer, layer, x[:1].expand(b, -1, -1).clone())  # noqa: E731
        b = search_batch(make, "fwdbwd", section=spec.profile, device=device, out=out)
        x = torch.randn(b, *x.shape[1:], device=x.device, dtype=x.dtype)
    run = compile_for(layer, spec.profile, out, phase="fwdbwd", device=device, grad=True)
    fwdbwd = _grads(layer, run, x)

    check_finite(first_call(fwdbwd, "fwdbwd", out)[0], "input gradient")
    where = {"spec": spec, "device": device, "out": out, "rounds": rounds}
    _timed(fwdbwd, "fwdbwd", point, **where, batch=x.shape[0])
    out["fwdbwd_peak_mib"] = peak_bytes(fwdbwd, device)[0] / MIB
    if trace_dir:
        profile_call(
            fwdbwd, device=device, top=0, trace_dir=_sub(trace_dir, "fwdbwd"), worker=point.label
        )


def _timed(
    fn: Callable[[], Any],
    phase: str,
    point: Point,
    *,
    spec: BenchSpec,
    device: torch.device,
    out: dict[str, Any],
    rounds: Rounds,
    then: Callable[[Timing], None] | None = None,
    batch: int = 1,
) -> None:
    """Time fn (of `batch` sequences) as `[profile]` says into `<phase>_*` fields (with its
    spread and CPU check) once `rounds` has its repeats; `then` gets the combined timing."""
    prof = spec.profile

    def done(got: Repeats) -> None:
        note_repeats(out, phase, got)
        if prof.batch_size == "max":
            note_per_image(out, phase, got, batch)
            out[f"{phase}_tokens_per_s"] = batch * point.seq_len / (got.timing.median_ms / 1e3)
        if then is not None:
            then(got.timing)

    rounds.add(
        fn,
        label=f"{point.label} {phase}",
        device=device,
        done=done,
        warmup=prof.warmup,
        min_run_time=prof.min_run_time,
        retries=prof.retries,
        point=(point.seq_len, phase),
    )


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
    note_breakdown(out, b)
    sdpa = sdpa_layer(layer)
    if sdpa is not None and device.type == "cuda":
        out.update(
            sdpa_backend_fields(
                sdpa.cfg.backend, device=device, kernels=b.kernel_names, ops=b.op_names
            )
        )


def _sub(root: Path | None, name: str) -> Path | None:
    return None if root is None else root / name


def start_point(
    spec: BenchSpec,
    point: Point,
    *,
    device: torch.device,
    env: Env,
    run_id: str,
    rounds: Rounds,
    trace_root: Path | None = None,
    measure: Callable[..., None] | None = None,
) -> Callable[[], ProfileRecord]:
    """Measure one grid point, its timing repeats left to `rounds`; the function that
    makes its record once they are in. A failure becomes the record's status, never an
    exception.

    `measure` defaults to `measure_attention` (looked up when called); it fills a dict of
    record fields as it goes.
    """
    measure = measure or measure_attention
    bb = spec.backbone
    out: dict[str, Any] = {}
    trace_dir = None if trace_root is None else inside(trace_root, point.label)
    status, error = attempt(
        lambda: measure(spec, point, device=device, out=out, rounds=rounds, trace_dir=trace_dir),
        device,
    )
    if trace_dir is not None and trace_dir.exists():
        out["trace_dir"] = str(trace_dir)

    def record() -> ProfileRecord:
        fields = {"repeats": spec.profile.repeats} | out
        most = spec.profile.batch_size == "max"
        batch = fields.pop("batch_size", None if most else spec.profile.batch_size)
        fields["launch_bound"] = launch_bound(fields.get("fwd_kernel_ms"), fields.get("fwd_ms"))
        return ProfileRecord(
            status=status,
            error=error,
            **record_base(spec, point.model, env=env, run_id=run_id),
            seq_len=point.seq_len,
            batch_size=batch,
            batch_search="max" if most else None,
            dim=bb.dim,
            heads=point.model.attention.head_count(dim=bb.dim, backbone_heads=bb.heads),
            token_merging=point.model.merge_r(bb) or None,
            **fields,
        )

    return record


def profile_sweep(
    spec: BenchSpec,
    *,
    device: torch.device,
    env: Env,
    run_id: str,
    trace_root: Path | None = None,
    on_step: OnStep | None = None,
) -> Iterator[ProfileRecord]:
    """Every model x sequence length of the spec's profile grid, one record each, with the
    timing repeats round-robin over the grid unless `[profile] interleave` is off
    (`in_rounds`)."""
    rounds = Rounds(spec.profile.repeats, interleave=spec.profile.interleave)
    where = {"device": device, "env": env, "run_id": run_id, "trace_root": trace_root}
    start = partial(start_point, spec, rounds=rounds, **where)
    starts = [(p.label, partial(start, p)) for p in profile_grid(spec)]
    yield from in_rounds(rounds, starts, on_step)
