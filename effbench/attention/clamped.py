"""The neighbourhood kind's clamped windows, as NATTEN defines them: each patch query
attends to the k x k cells of its dilation sub-grid around it, the window slid inward at the
borders so that every query keeps k x k cells, plus CLS.

Their key indices (`clamped_neighbourhoods`), the flex attention block mask
(`clamped_block_mask`, `flex_clamped`) and the portable path that runs them as matrix
products: tiles of patch queries, each attending in one masked SDPA call to the keys its
neighbourhoods cover together (`tile_tables`, `tiled_attention`). The gathered reference
(`gather_attention`) and the choice of backend live in `effbench.attention.local`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from effbench.attention.base import matmul_flops, needs_grad
from effbench.attention.local import compiled_flex, grid_block_mask


def clamped_span(length: int, kernel: int, dilation: int) -> int:
    """Cells a clamped neighbourhood spans along an axis of `length` cells: `kernel`, or the
    longest sub-grid (ceil(length / dilation)) where that is shorter."""
    return min(kernel, -(-length // dilation))


def clamped_axis(length: int, kernel: int, dilation: int) -> tuple[Tensor, Tensor]:
    """Each position's clamped, dilated neighbourhood along one axis, as NATTEN defines it.

    Position x lies in the sub-grid of the positions congruent to it mod `dilation`, at
    sub-index x // dilation; its neighbourhood is the `kernel` consecutive sub-grid cells
    centred on it, slid inward at the sub-grid's ends so that it keeps `kernel` cells. A
    sub-grid shorter than `kernel` is covered whole (NATTEN refuses kernel * dilation >
    length; here the kernel is clamped to the sub-grid's length instead).

    Returns:
        pos: (length, S) long positions, S = `clamped_span`, in increasing order.
        valid: (length, S) bool, False past the end of a sub-grid shorter than S (its pos
            is then out of range).
    """
    span = clamped_span(length, kernel, dilation)
    x = torch.arange(length)
    phase, sub = x % dilation, x // dilation
    sub_len = (length - phase + dilation - 1) // dilation
    start = torch.minimum(sub - kernel // 2, sub_len - kernel).clamp(min=0)
    j = start.unsqueeze(1) + torch.arange(span)  # (length, S) sub-grid indices
    return phase.unsqueeze(1) + j * dilation, j < sub_len.unsqueeze(1)


def clamped_neighbourhoods(
    rows: int, cols: int, kernel: int, dilation: int
) -> tuple[Tensor, Tensor]:
    """Key indices of each patch query's clamped neighbourhood, into [CLS, patches..., pad]:
    the 2-D neighbourhood is the product of the row and column ones (`clamped_axis`).

    Returns:
        idx: (P, Sr * Sc + 1) long; column j < Sr * Sc is a neighbourhood cell, row major
            (index P + 1, the pad slot, where a short sub-grid leaves it empty); the last is
            CLS (0). Sr, Sc = `clamped_span` of the rows and the columns.
        valid: (P, Sr * Sc + 1) bool, False on pad slots (all True whenever
            kernel * dilation <= min(rows, cols), NATTEN's own condition).
    """
    rpos, rvalid = clamped_axis(rows, kernel, dilation)
    cpos, cvalid = clamped_axis(cols, kernel, dilation)
    sr, sc = rpos.shape[1], cpos.shape[1]
    p = rows * cols
    cells = 1 + rpos.view(rows, 1, sr, 1) * cols + cpos.view(1, cols, 1, sc)
    inside = rvalid.view(rows, 1, sr, 1) & cvalid.view(1, cols, 1, sc)
    idx = torch.where(inside, cells, torch.full_like(cells, p + 1)).reshape(p, sr * sc)
    idx = torch.cat([idx, torch.zeros(p, 1, dtype=torch.long)], dim=1)
    return idx, idx <= p


def clamped_taps(rows: int, cols: int, kernel: int, dilation: int) -> int:
    """Keys each patch query's row of `clamped_neighbourhoods` holds (CLS included)."""
    return clamped_span(rows, kernel, dilation) * clamped_span(cols, kernel, dilation) + 1


# -- flex attention -----------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def clamped_block_mask(rows: int, cols: int, kernel: int, dilation: int, device: str) -> Any:
    """The block mask of the clamped neighbourhoods: patch queries see their clamped,
    dilated neighbourhood (`clamped_axis`, per axis). Built once per grid and device."""

    def near(qi: Tensor, ki: Tensor, length: int) -> Tensor:
        phase = qi % dilation
        sub_len = (length - phase + dilation - 1) // dilation
        start = torch.clamp(torch.minimum(qi // dilation - kernel // 2, sub_len - kernel), min=0)
        j = ki // dilation
        return (ki % dilation == phase) & (j >= start) & (j < start + kernel)

    def sees(qr: Tensor, qc: Tensor, kr: Tensor, kc: Tensor) -> Tensor:
        return near(qr, kr, rows) & near(qc, kc, cols)

    return grid_block_mask(sees, rows, cols, device)


def flex_clamped(
    q: Tensor, k: Tensor, v: Tensor, rows: int, cols: int, kernel: int, dilation: int,
    scale: float,
) -> Tensor:  # fmt: skip
    """Every query's clamped-neighbourhood attention through flex attention,
    (B, H, 1 + rows*cols, d): the CLS row is exact softmax attention over all tokens."""
    mask = clamped_block_mask(rows, cols, kernel, dilation, str(q.device))
    return compiled_flex()(q, k, v, block_mask=mask, scale=scale)


# -- clamped neighbourhoods in tiles: dense attention of a tile of queries over its keys ----

# Queries per tile side: a tile of 16 x 16 patch queries attends, as one masked SDPA call, to
# the keys its neighbourhoods cover together ((16 + k - 1)^2 for a k x k kernel). Of the
# sides tried (8, 12, 16), 16 was the fastest on the CPU; the tiles' timings against the
# gathered path are in docs/results.md (records: docs/results/cpu-amd-epyc-2core/new-kinds/).
NEIGHBOURHOOD_TILE = 16
TILE_GROUP = 4  # tiles per SDPA call without autograd
_MASK_TILES = 16  # tiles per step when building the masks (bounds a (tiles, Q, taps, K) test)


@dataclass(frozen=True)
class TileTables:
    """Index tables of the tiled neighbourhood attention of one grid (`tile_tables`)."""

    queries: Tensor  # (T, Q) long, patch indices; P (an empty query) pads a short tile
    keys: Tensor  # (T, K) long, token indices [CLS, patches..., pad]; N pads a short tile
    mask: Tensor  # (T, Q, K) bool: the key lies in the query's neighbourhood (or is CLS)
    order: Tensor  # (P,) long: each patch query's place among the T * Q tiled queries


def tile_tables(
    rows: int, cols: int, kernel: int, dilation: int, tile: int = NEIGHBOURHOOD_TILE
) -> TileTables:
    """Tiles of up to tile x tile patch queries of one dilation sub-grid each, the keys
    their clamped neighbourhoods (`clamped_neighbourhoods`) cover together, plus CLS, and
    which key each query may see."""
    idx, valid = clamped_neighbourhoods(rows, cols, kernel, dilation)
    p = rows * cols
    tiles_q: list[list[int]] = []
    tiles_k: list[Tensor] = []
    for a in range(min(dilation, rows)):
        for b in range(min(dilation, cols)):
            rr, cc = range(a, rows, dilation), range(b, cols, dilation)
            for i0 in range(0, len(rr), tile):
                for j0 in range(0, len(cc), tile):
                    qs = [r * cols + c for r in rr[i0 : i0 + tile] for c in cc[j0 : j0 + tile]]
                    tiles_q.append(qs)
                    tiles_k.append(torch.unique(idx[qs][valid[qs]]))  # CLS (0) first
    n_q, n_k = max(map(len, tiles_q)), max(len(k) for k in tiles_k)
    queries = torch.full((len(tiles_q), n_q), p, dtype=torch.long)
    keys = torch.full((len(tiles_k), n_k), p + 1, dtype=torch.long)
    for t, (qs, ks) in enumerate(zip(tiles_q, tiles_k, strict=True)):
        queries[t, : len(qs)] = torch.tensor(qs)
        keys[t, : len(ks)] = ks
    # each query's keys, pad slots as -1, and an empty query that sees CLS alone
    seen = torch.cat([idx.masked_fill(~valid, -1), torch.full((1, idx.shape[1]), -1)])
    seen[p, -1] = 0
    steps = range(0, len(tiles_q), _MASK_TILES)
    mask = torch.cat(
        [_sees(seen, queries[i : i + _MASK_TILES], keys[i : i + _MASK_TILES]) for i in steps]
    )
    flat = queries.flatten()
    order = torch.empty(p, dtype=torch.long)
    real = flat < p
    order[flat[real]] = torch.arange(flat.numel())[real]
    return TileTables(queries, keys, mask, order)


def _sees(seen: Tensor, queries: Tensor, keys: Tensor) -> Tensor:
    """(T, Q, K) bool: whether each tile's query `seen`s each of its keys."""
    return (seen[queries].unsqueeze(-1) == keys[:, None, None]).any(dim=2)


def tiled_attention(q: Tensor, k: Tensor, v: Tensor, tables: TileTables, scale: float) -> Tensor:
    """Every patch query's clamped neighbourhood attention, tile by tile: the tiles' queries
    and keys gathered, one masked SDPA call per group of tiles (a fused kernel: matrix
    products, not per-query dot products), the outputs put back in patch order. (B, H, N, d)
    -> (B, H, P, d). Each tile computes its queries against all its keys, masked. Without
    autograd the tiles go TILE_GROUP at a time, so that their gathered keys stay in cache at
    any N; under autograd in one call (a group's gather would back-propagate into a
    full-size gradient)."""
    B, H, _, d = q.shape
    t, n_q = tables.queries.shape
    n_k = tables.keys.shape[1]
    qt = F.pad(q[:, :, 1:], (0, 0, 0, 1))  # (B, H, P + 1, d): the empty query last
    kt, vt = F.pad(k, (0, 0, 0, 1)), F.pad(v, (0, 0, 0, 1))  # (B, H, N + 1, d)
    group = t if needs_grad(q, k, v) else TILE_GROUP
    outs = []
    for t0 in range(0, t, group):
        rows = slice(t0, t0 + group)
        qi, ki, mask = tables.queries[rows], tables.keys[rows], tables.mask[rows]
        g = qi.shape[0]

        def tiles(x: Tensor, index: Tensor, size: int, g: int = g) -> Tensor:
            out = x.index_select(2, index.flatten()).view(B, H, g, size, d)
            return out.transpose(1, 2).reshape(B * g, H, size, d)

        out = F.scaled_dot_product_attention(
            tiles(qt, qi, n_q), tiles(kt, ki, n_k), tiles(vt, ki, n_k),
            attn_mask=mask.unsqueeze(1).repeat(B, 1, 1, 1), scale=scale,
        )  # fmt: skip
        outs.append(out.view(B, g, H, n_q, d).transpose(1, 2))
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return out.reshape(B, H, t * n_q, d).index_select(2, tables.order)


def tiled_attention_flops(heads: int, tables: TileTables, d: int) -> int:
    """FLOPs of `tiled_attention` per sample: every tile's queries against all its keys."""
    t, n_q = tables.queries.shape
    return 2 * matmul_flops(heads, t * n_q, d, tables.keys.shape[1])
