"""The scale grid: whole ViTs across input resolutions (time, memory, FLOPs, time by part),
with trained weights loaded when a checkpoint is evaluated. A failed point is a record."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from effbench.config.attention import AttentionConfig
from effbench.config.spec import Backbone, BenchSpec, ModelEntry
from effbench.crossover import baseline_label, summarize
from effbench.measure import MIB, OnStep, Repeats, Rounds, param_count, peak_bytes
from effbench.measure import autocast as precision_autocast
from effbench.measure.dispatch import dispatched_ops, sdpa_backend_fields
from effbench.measure.energy import EnergyCall, energy_fields
from effbench.measure.profiler import breakdown, kernel_time_ms, launch_bound
from effbench.model import ViT, adapt_state_dict, build_model
from effbench.results import Env, ScaleRecord, ScaleSummaryRecord, record_base
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

# A profiled breakdown repeats a call this many times, once when the call is slower than this.
BREAKDOWN_CALLS = 3
SLOW_CALL_MS = 500.0


@dataclass(frozen=True)
class ScalePoint:
    model: ModelEntry
    image_size: int

    @property
    def label(self) -> str:
        return f"{self.model.name} {self.image_size}px"


def scale_backbone(spec: BenchSpec) -> Backbone:
    """The backbone at `[scale]`'s patch size."""
    return spec.backbone.model_copy(update={"patch_size": spec.scale_patch()})


def scale_grid(spec: BenchSpec) -> list[ScalePoint]:
    return [ScalePoint(m, r) for m in spec.models for r in spec.scale.resolutions]


def baseline_names(spec: BenchSpec) -> list[str]:
    """The models crossovers are measured against: every one of the baseline kind
    (`effbench.config.attention.BASELINE_KIND`; one per SDPA backend, say) that merges no
    tokens, whose best figure at each resolution is the one to beat."""
    return [m.name for m in spec.models if m.attention.baseline and not m.merge_r(spec.backbone)]


def fit_to_tokens(cfg: AttentionConfig, tokens: int) -> tuple[AttentionConfig, str | None]:
    """The options capped at the token count (Linformer's k, Nystrom's landmarks; agents at
    the largest square) and a note saying so; unchanged options give no note. The capped
    options are validated like the spec's own."""
    fitted = cfg.fitted_to(tokens)
    if not fitted:
        return cfg, None
    limits = cfg.token_limits()
    changes = ", ".join(f"{k} {limits[k]} -> {v}" for k, v in fitted.items())
    capped = type(cfg).model_validate({**cfg.model_dump(), **fitted})
    return capped, f"{changes} (only {tokens} tokens)"


def precision_name(dtype: str) -> str:
    return "float32" if dtype == "float32" else f"{dtype} autocast"


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision for a non-float32 dtype (weights stay float32), else nothing."""
    return precision_autocast(device, dtype)


# ---------------------------------------------------------------------------- one point

Evaluate = Callable[[ViT, Callable[[], contextlib.AbstractContextManager[Any]]], dict[str, Any]]


@dataclass(frozen=True)
class Trained:
    """Weights to load into every point's model, and how to score it (`--checkpoint`)."""

    state: dict[str, torch.Tensor]
    grid: tuple[int, int]
    evaluate: Evaluate


def measure_model(
    spec: BenchSpec,
    point: ScalePoint,
    *,
    device: torch.device,
    out: dict[str, Any],
    rounds: Rounds,
    trained: Trained | None = None,
) -> None:
    """Measure one whole model at one resolution, filling `out` as it goes; the timing
    repeats are `rounds`'s to take."""
    sc, bb = spec.scale, scale_backbone(spec)
    res = point.image_size
    torch.manual_seed(0)
    model = build_model(bb, point.model.attention, image_size=res, merge_r=point.model.merge_r(bb))
    if trained is not None:
        model.load_state_dict(adapt_state_dict(trained.state, model, trained_grid=trained.grid))
    model = model.to(device)
    out.update(
        params=param_count(model),
        flops_analytic=model.flops(),
        attn_flops_analytic=model.attention_flops(),
        block_tokens=model.block_tokens if model.merge_r else None,
    )

    def images(batch: int) -> torch.Tensor:
        return torch.randn(batch, bb.channels, res, res, device=device)

    def amp() -> contextlib.AbstractContextManager[Any]:
        return autocast(device, sc.dtype)

    def batch_for(phase: str, call: Callable[[torch.Tensor], Callable[[], Any]]) -> torch.Tensor:
        """The phase's input: the spec's batch, or the largest that fits (`--batch max`)."""
        if sc.batch_size != "max":
            return images(sc.batch_size)
        make = lambda b: call(images(b))  # noqa: E731
        return images(search_batch(make, phase, section=sc, device=device, out=out))

    if trained is not None:
        model.eval()
        out.update(trained.evaluate(model, amp))
    x = None
    energy_calls: dict[str, EnergyCall] = {}  # measured last, apart from the timings
    if sc.mode in ("infer", "both"):
        x = batch_for("infer", lambda x: inference_call(model.eval(), x, amp))
        fwd = _inference(spec, point, model, x, amp=amp, device=device, out=out, rounds=rounds)
        energy_calls["infer"] = EnergyCall(fwd, items=x.shape[0], per="image")
    if sc.count_flops:
        note_flops(
            out,
            model,
            images(1),
            attention_analytic=out["attn_flops_analytic"],
            elementwise=model.elementwise_flops(),
        )
    if sc.mode in ("train", "both"):
        xt = batch_for("train", lambda x: _train_step(copy.deepcopy(model), x, amp, device))
        step = _training(spec, point, model, xt, amp=amp, device=device, out=out, rounds=rounds)
        energy_calls["train"] = EnergyCall(step, items=1, per="step")
    out["batch_size"] = (x if x is not None else xt).shape[0]
    out.update(energy_fields(energy_calls, device=device, enabled=sc.energy))


def _train_step(
    model: nn.Module,
    x: torch.Tensor,
    amp: Callable[[], contextlib.AbstractContextManager[Any]],
    device: torch.device,
    run: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Callable[[], torch.Tensor]:
    """One optimizer step of `model` (put in training mode) on `x`: forward (through `run`,
    the compiled model where there is one), cross-entropy, backward, AdamW."""
    model.train()
    forward = model if run is None else run  # a compiled module has no truth value
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    g = torch.Generator(device="cpu").manual_seed(0)
    y = torch.randint(0, model.head.out_features, (x.shape[0],), generator=g).to(device)

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        with amp():
            logits = forward(x)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def _time_and_peak(
    fn: Callable[[], Any],
    phase: str,
    point: ScalePoint,
    *,
    spec: BenchSpec,
    batch: int,
    device: torch.device,
    out: dict[str, Any],
    rounds: Rounds,
) -> float:
    """Time fn `repeats` times (when `rounds` takes them) into `<phase>_*` fields, and
    measure its peak memory. Returns the milliseconds of one warm call."""
    sc = spec.scale

    def done(got: Repeats) -> None:
        note_repeats(out, phase, got)
        if sc.batch_size == "max":
            note_per_image(out, phase, got, batch)
        # inference's is plain `images_per_s`, the name the measured records already carry
        out["images_per_s" if phase == "infer" else f"{phase}_images_per_s"] = batch / (
            got.timing.median_ms / 1e3
        )

    call_ms = rounds.add(
        fn,
        label=f"{point.label} {phase}",
        device=device,
        done=done,
        warmup=sc.warmup,
        min_run_time=sc.min_run_time,
        retries=sc.retries,
        point=(point.image_size, phase),
    )
    peak, out["mem_source"] = peak_bytes(fn, device)
    out[f"{phase}_peak_mib"] = peak / MIB
    return call_ms


def _inference(
    spec: BenchSpec,
    point: ScalePoint,
    model: ViT,
    x: torch.Tensor,
    *,
    amp: Callable[[], contextlib.AbstractContextManager[Any]],
    device: torch.device,
    out: dict[str, Any],
    rounds: Rounds,
) -> Callable[[], Any]:
    """The forward under `inference_mode`: timed (in `rounds`), its peak memory, kernel time
    and time by part measured. Returns the call, for the energy measured after it."""
    sc = spec.scale
    model.eval()
    run = compile_for(model, sc, out, phase="infer", device=device, grad=False)

    fwd = inference_call(run, x, amp)
    fwd_eager = inference_call(model, x, amp)  # the breakdown wraps the model's own modules

    check_finite(first_call(fwd, "infer", out), "forward output")
    call_ms = _time_and_peak(
        fwd, "infer", point, spec=spec, batch=x.shape[0], device=device, out=out, rounds=rounds
    )
    out["infer_kernel_ms"] = kernel_time_ms(fwd, device=device)
    kernels: list[str] = []
    ops: list[str] | None = None
    if sc.breakdown or sc.top_ops:
        calls = 1 if call_ms > SLOW_CALL_MS else BREAKDOWN_CALLS
        b = breakdown(fwd_eager, model=model, device=device, calls=calls, top=sc.top_ops)
        kernels, ops = b.kernel_names, b.op_names
        out["top_ops"] = [o.model_dump() for o in b.top_ops]
        if sc.breakdown:
            note_breakdown(out, b)
    sdpa = sdpa_layer(model)
    if sdpa is not None:
        if ops is None:
            with amp():
                ops = dispatched_ops(lambda: model(x))
        out.update(sdpa_backend_fields(sdpa.cfg.backend, device=device, kernels=kernels, ops=ops))
    return fwd


def _training(
    spec: BenchSpec,
    point: ScalePoint,
    model: ViT,
    x: torch.Tensor,
    *,
    amp: Callable[[], contextlib.AbstractContextManager[Any]],
    device: torch.device,
    out: dict[str, Any],
    rounds: Rounds,
) -> Callable[[], Any]:
    """One optimizer step: forward, cross-entropy, backward, AdamW. A copy of the model
    trains, so that inference's repeats in the rounds still time the model in eval mode with the
    weights it was measured with. Returns the step, for the energy measured after it."""
    model = copy.deepcopy(model).train()
    run = compile_for(model, spec.scale, out, phase="train", device=device, grad=True)
    step = _train_step(model, x, amp, device, run)

    check_finite(first_call(step, "train", out), "training loss")
    _time_and_peak(
        step, "train", point, spec=spec, batch=x.shape[0], device=device, out=out, rounds=rounds
    )
    return step


def start_scale_point(
    spec: BenchSpec,
    point: ScalePoint,
    *,
    device: torch.device,
    env: Env,
    run_id: str,
    rounds: Rounds,
    trained: Trained | None = None,
    checkpoint: dict[str, Any] | None = None,
) -> Callable[[], ScaleRecord]:
    """Measure one model at one resolution, its timing repeats left to `rounds`; the
    function that makes its record once they are in. A failure becomes the record's status,
    never an exception.

    Without `trained`, options above the token count are capped (and noted); a trained
    model keeps its own, and a point where they do not fit fails.
    """
    sc, bb = spec.scale, scale_backbone(spec)
    tokens = bb.seq_len(point.image_size)
    note = None
    if trained is None:
        cfg, note = fit_to_tokens(point.model.attention, tokens)
        point = ScalePoint(point.model.model_copy(update={"attention": cfg}), point.image_size)
    out: dict[str, Any] = {}
    status, error = attempt(
        lambda: measure_model(spec, point, device=device, out=out, rounds=rounds, trained=trained),
        device,
    )

    def record() -> ScaleRecord:
        fields = {"repeats": sc.repeats, **(checkpoint or {})} | out
        batch = fields.pop("batch_size", None if sc.batch_size == "max" else sc.batch_size)
        fields["launch_bound"] = launch_bound(fields.get("infer_kernel_ms"), fields.get("infer_ms"))
        return ScaleRecord(
            status=status,
            error=error,
            **record_base(spec, point.model, env=env, run_id=run_id),
            image_size=point.image_size,
            patch_size=bb.patch_size,
            seq_len=tokens,
            batch_size=batch,
            batch_search="max" if sc.batch_size == "max" else None,
            mode=sc.mode,
            precision=precision_name(sc.dtype),
            dim=bb.dim,
            depth=bb.depth,
            heads=point.model.attention.head_count(dim=bb.dim, backbone_heads=bb.heads),
            note=note,
            **fields,
        )

    return record


def scale_sweep(
    spec: BenchSpec,
    *,
    device: torch.device,
    env: Env,
    run_id: str,
    trained: Trained | None = None,
    checkpoint: dict[str, Any] | None = None,
    on_step: OnStep | None = None,
) -> Iterator[ScaleRecord]:
    """Every model x resolution of the spec's scale grid, one record each, with the timing
    repeats round-robin over the grid unless `[scale] interleave` is off (`in_rounds`)."""
    rounds = Rounds(spec.scale.repeats, interleave=spec.scale.interleave)
    start = partial(
        start_scale_point,
        spec,
        device=device,
        env=env,
        run_id=run_id,
        rounds=rounds,
        trained=trained,
        checkpoint=checkpoint,
    )
    starts = [(p.label, partial(start, p)) for p in scale_grid(spec)]
    yield from in_rounds(rounds, starts, on_step)


def summary_records(
    spec: BenchSpec, records: list[ScaleRecord], *, env: Env, run_id: str
) -> list[ScaleSummaryRecord]:
    """Per model: crossovers against the baseline (`baseline_names`: the best of them) and
    slopes, as records."""
    bases = baseline_names(spec)
    found = summarize([r.model_dump() for r in records], baseline=bases, mode=spec.scale.mode)
    return [
        ScaleSummaryRecord(
            **record_base(spec, m, env=env, run_id=run_id),
            baseline=baseline_label(bases),
            mode=spec.scale.mode,
            resolutions=spec.scale.resolutions,
            **found[m.name]
            | {
                "verdicts": {
                    metric: {str(px): v for px, v in by_px.items()}
                    for metric, by_px in found[m.name]["verdicts"].items()
                }
            },
        )
        for m in spec.models
        if m.name in found
    ]
