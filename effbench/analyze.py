"""`effbench analyze`: attention maps and approximation fidelity of a trained run, computed
from its own weights on test images and written as one record that `effbench report` embeds.

Every figure compares the mechanism with exact softmax attention on the same layer's own
Q, K and V, so "error" means what the approximation changes, not what training learned.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from effbench.attention.base import Attention, relative_error, softmax_attention, split_heads
from effbench.model import ViT, build_model
from effbench.results import AnalyzeRecord, Env, LayerFidelity, record_base

if TYPE_CHECKING:
    from effbench.runs import TrainedRun

# Test images shown as maps, and used for the fidelity figures (fewer when maps are large).
MAP_IMAGES = 4
FIDELITY_IMAGES = 32
# Cap on floats in one layer's (B, H, N, N) maps while measuring fidelity.
MAP_FLOATS = 64 * 2**20
# Images wider than this are stored downsampled (they are shown, not measured).
SHOWN_SIDE = 96


def test_batch(loader: Any, n: int) -> tuple[Tensor, Tensor]:
    """The first `n` images and labels of an evaluation loader (fixed order)."""
    xs, ys, have = [], [], 0
    for x, y in loader.iterate():
        xs.append(x)
        ys.append(y)
        have += len(y)
        if have >= n:
            break
    return torch.cat(xs)[:n], torch.cat(ys)[:n]


def attention_inputs(model: ViT, images: Tensor) -> tuple[list[Tensor], Tensor]:
    """The input of every attention layer (after its LayerNorm) and the logits."""
    seen: list[Tensor] = []
    hooks = [
        layer.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
        for layer in model.attention_layers()
    ]
    try:
        logits = model(images)
    finally:
        for h in hooks:
            h.remove()
    return seen, logits


def total_variation(maps: Tensor, exact: Tensor) -> Tensor:
    """Per-row total-variation distance 0.5 * sum_j |p_j - q_j|: (..., N, N) -> (..., N)."""
    return 0.5 * (maps - exact).abs().sum(dim=-1)


def cls_grid(maps: Tensor, grid: tuple[int, int]) -> Tensor:
    """CLS query's weights on the patches, mean over heads: (B, H, N, N) -> (B, gh, gw)."""
    return maps[:, :, 0, 1:].mean(dim=1).reshape(-1, *grid)


def rollout(layer_maps: list[Tensor]) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020): the product over layers of the head-mean
    maps with the residual added, 0.5 A + 0.5 I, rows renormalised: -> (B, N, N).

    Rows are divided by their sum of absolute weights: the row sum for a distribution, as in
    the paper, and for a signed map (Linformer's) a divisor that cannot approach 0, where its
    rows, which need not sum to anything in particular, could.
    """
    out = None
    for maps in layer_maps:
        a = maps.mean(dim=1)  # (B, N, N)
        a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)
        a = a / a.abs().sum(dim=-1, keepdim=True).clamp_min(1e-12)
        out = a if out is None else a @ out
    assert out is not None, "no attention layers"
    return out


def shown_images(images: Tensor) -> list[list[list[list[int]]]]:
    """Images as (H, W, 3) uint8 nested lists, each stretched to its own range (so any
    normalisation is undone for display), at most SHOWN_SIDE pixels wide."""
    x = images.float()
    if x.shape[-1] > SHOWN_SIDE:
        x = torch.nn.functional.interpolate(x, size=SHOWN_SIDE, mode="bilinear", antialias=True)
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    x = ((x - lo) / (hi - lo).clamp_min(1e-6) * 255).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x[:, :3].permute(0, 2, 3, 1).tolist()


def _rounded(t: Tensor, digits: int = 5) -> list[Any]:
    return torch.round(t.float().cpu(), decimals=digits).tolist()


def layer_fidelity(
    layer: Attention,
    x: Tensor,
    eff: Tensor | None,
    exact: Tensor | None,
    *,
    index: int,
    heads: int | None = None,
) -> LayerFidelity:
    """One layer against exact softmax attention on its own float32 Q, K, V from input `x`,
    given its map `eff` and the exact map: the output error (and, where a branch bypasses
    the map, the attention part's own error and the branch's size apart), TV distance where
    the map is a distribution, row sums, and the mechanism's own figures. Without a map
    (`eff` None: the mechanism has none), the output error and its own figures alone.
    `heads`: the head count of exact attention where the layer has its own (the backbone's;
    the output error then compares the two on the same features)."""
    q, k, v = layer.qkv_heads(x)
    if heads is not None and heads != layer.num_heads:
        ref = [split_heads(t, heads) for t in (q, k, v)]
        exact_out = split_heads(softmax_attention(*ref, ref[0].shape[-1] ** -0.5), layer.num_heads)
    else:
        exact_out = softmax_attention(q, k, v, layer.scale)
    if eff is None or exact is None:
        return LayerFidelity(
            layer=index,
            rel_output_error=relative_error(layer.attend(q, k, v), exact_out),
            **layer.diagnostics(q, k, v),
        )
    skip = layer.skip(v)
    split: dict[str, float] = {}
    if skip is not None:
        split = {
            "attention_error": relative_error(eff @ v, exact_out),
            "skip_rel_norm": float(skip.norm() / exact_out.norm()),
        }
    tv: dict[str, float] = {}
    if type(layer).map_row_stochastic and eff.shape == exact.shape:  # the same heads
        dist = total_variation(eff, exact)
        tv = {"tv_mean": float(dist.mean()), "tv_max": float(dist.max())}
    return LayerFidelity(
        layer=index,
        rel_output_error=relative_error(layer.attend(q, k, v), exact_out),
        row_sum_max_dev=float((eff.sum(dim=-1) - 1).abs().max()),
        min_weight=min(0.0, float(eff.min())),
        **split,
        **tv,
        **layer.diagnostics(q, k, v),
    )


@torch.no_grad()
def analyze_model(
    model: ViT,
    images: Tensor,
    labels: Tensor,
    *,
    classes: tuple[str, ...] | None = None,
    heads: int | None = None,
) -> dict[str, Any]:
    """Fidelity per layer on `images` and maps of the first MAP_IMAGES of them, against exact
    softmax attention over `heads` heads (the backbone's; default: each layer's own), so that
    a mechanism with its own head count is measured against the attention it replaces.

    Returns the fields of an `AnalyzeRecord` that depend on the model and the images; the
    mechanism's own figures (`Attention.diagnostics`, `model_diagnostics`) where it has any.
    """
    model.eval()
    n, h = model.seq_len, model.attention_layers()[0].num_heads
    fit = max(1, MAP_FLOATS // (h * n * n))
    count = min(len(images), max(MAP_IMAGES, fit))
    images, labels = images[:count], labels[:count]
    inputs, logits = attention_inputs(model, images)
    shown = min(MAP_IMAGES, len(images))
    attention = model.attention_layers()
    # after a block merges tokens they are no longer the patch grid: no maps to draw
    has_map = type(attention[0]).has_map and not model.merge_r
    layers: list[LayerFidelity] = []
    maps_eff, maps_exact = [], []
    for i, (layer, x) in enumerate(zip(attention, inputs, strict=True)):
        eff = layer.attention_map(x.float()) if has_map else None
        exact = layer.exact_map(x.float(), heads) if has_map else None
        layers.append(layer_fidelity(layer, x.float(), eff, exact, index=i, heads=heads))
        if has_map:
            maps_eff.append(eff[:shown])
            maps_exact.append(exact[:shown])
    diagnostics = type(attention[0]).model_diagnostics(attention, inputs)
    preds = logits.argmax(dim=-1)
    return {
        "n_images": len(images),
        "map_row_stochastic": type(attention[0]).map_row_stochastic if has_map else None,
        "has_map": has_map,
        "grid": list(model.grid),
        "layers": layers,
        **diagnostics,
        "images": shown_images(images[:shown]),
        "labels": labels[:shown].tolist(),
        "predictions": preds[:shown].tolist(),
        "classes": list(classes) if classes else None,
        **_map_fields(maps_eff, maps_exact, model.grid),
    }


def _map_fields(
    maps_eff: list[Tensor], maps_exact: list[Tensor], grid: tuple[int, int]
) -> dict[str, Any]:
    """The record's CLS maps and rollouts from the layers' maps (None without maps)."""
    if not maps_eff:
        return dict.fromkeys(("cls_maps", "cls_maps_exact", "rollout", "rollout_exact"))
    roll, roll_exact = rollout(maps_eff), rollout(maps_exact)
    return {
        "cls_maps": [_rounded(cls_grid(m, grid)) for m in maps_eff],
        "cls_maps_exact": [_rounded(cls_grid(m, grid)) for m in maps_exact],
        "rollout": _rounded(roll[:, 0, 1:].reshape(-1, *grid)),
        "rollout_exact": _rounded(roll_exact[:, 0, 1:].reshape(-1, *grid)),
    }


def analyze_run(
    run: TrainedRun, state: dict[str, Tensor], *, device: torch.device, env: Env, run_id: str
) -> AnalyzeRecord:
    """The trained run and its weights (`runs.load_state`) analysed on its test split.

    Raises:
        effbench.data.DataError: when the test split cannot be read.
    """
    from effbench.data import eval_loader

    spec, entry = run.spec, run.entry
    bb = spec.backbone
    model = build_model(bb, entry.attention, merge_r=entry.merge_r(bb))
    model.load_state_dict(state)
    model = model.to(device)
    loader = eval_loader(spec, device=device)
    images, labels = test_batch(loader, FIDELITY_IMAGES)
    fields = analyze_model(model, images, labels, classes=loader.classes, heads=bb.heads)
    return AnalyzeRecord(
        **record_base(spec, entry, env=env, run_id=run_id),
        run_dir=str(run.directory),
        weights=str(Path(run.weights).name),
        dataset=spec.train.dataset,
        image_size=bb.image_size,
        seq_len=model.seq_len,
        **fields,
    )
