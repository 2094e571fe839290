"""Local attention on the 2-D patch grid, shared by the kinds that attend to neighbourhoods.

Tokens are [CLS, row-major rows x cols patches]. Each patch query attends to a dilated
`window` x `window` neighbourhood of patches centred on it (cells that fall off the grid are
left out) plus CLS; the CLS query attends to every token. Three ways run it, all the same
maths:

- `slices` (the default off CUDA): `local_attention`, a custom op that reads each window
  offset as a shifted view of the zero-padded key and value grids, so nothing is gathered
  and no N x N matrix is formed. O(N * window^2 * d). It has its own backward and its own
  FLOP formula (fvcore and FlopCounterMode count it like the matrix products it replaces).
- `flex` (the default on CUDA): `torch.nn.attention.flex_attention` with a block mask built
  once per grid and cached; forward and backward on CUDA, inference only on the CPU.
- `gather`: index_select of each query's window + CLS keys and values, the plain reference
  the others are tested against.

After neighbourhood attention (Hassani et al. 2023) with dilation (Hassani & Shi 2022).

The neighbourhood kind's clamped windows (NATTEN's: the window slides inward at the borders,
so every query keeps k x k cells) live at the end: their key indices
(`clamped_neighbourhoods`), the gathered path in query chunks (`gather_attention`) and a
flex attention block mask (`clamped_block_mask`).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from effbench.attention.base import matmul_flops, needs_grad

# Bytes of one chunk's logits and products in the slices forward (inference): a few grid
# rows at a time keep them in cache whatever N is.
SLICE_CHUNK_BYTES = 8 * 2**20

_reference_only = False


@contextlib.contextmanager
def reference_backend() -> Iterator[None]:
    """Run every local attention on its portable path (`slices`; `tiles` for the clamped
    neighbourhoods) inside this block: FLOP counters and JIT tracing cannot see into flex
    attention's compiled kernel."""
    global _reference_only
    before, _reference_only = _reference_only, True
    try:
        yield
    finally:
        _reference_only = before


def grid_shape(patches: int) -> tuple[int, int]:
    """The most square (rows, cols) grid holding exactly `patches` cells."""
    rows = max(r for r in range(1, math.isqrt(patches) + 1) if patches % r == 0)
    return rows, patches // rows


def neighbourhoods(rows: int, cols: int, window: int, dilation: int) -> tuple[Tensor, Tensor]:
    """Key indices for each patch query, into tokens [CLS, patches..., pad].

    Returns:
        idx: (P, window^2 + 1) long; column j < window^2 is a dilated window cell, row
            offset major (index P + 1, the pad slot, where the cell falls off the grid);
            the last is CLS (0).
        valid: (P, window^2 + 1) bool, False on pad slots.
    """
    half = window // 2
    offs = torch.arange(-half, half + 1) * dilation
    r = torch.arange(rows).view(rows, 1, 1, 1) + offs.view(1, 1, window, 1)
    c = torch.arange(cols).view(1, cols, 1, 1) + offs.view(1, 1, 1, window)
    r, c = torch.broadcast_tensors(r, c)  # (rows, cols, window, window)
    inside = (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
    p = rows * cols
    idx = torch.where(inside, 1 + r * cols + c, torch.full_like(r, p + 1)).reshape(p, -1)
    cls = torch.zeros(p, 1, dtype=torch.long)
    idx = torch.cat([idx, cls], dim=1)
    return idx, idx <= p


@functools.lru_cache(maxsize=64)
def _off_grid(rows: int, cols: int, window: int, dilation: int, device: str) -> Tensor:
    """(window^2, 1, 1, rows, cols) bool, True where an offset's cell falls off the grid."""
    _, valid = neighbourhoods(rows, cols, window, dilation)
    off = ~valid[:, :-1].T.reshape(window * window, 1, 1, rows, cols)
    return off.to(device)


def _offsets(window: int, dilation: int) -> list[tuple[int, int]]:
    """(row, col) start of each window offset in the padded grid, row offset major."""
    return [(i * dilation, j * dilation) for i in range(window) for j in range(window)]


def _padded(t: Tensor, rows: int, cols: int, pad: int) -> Tensor:
    """Patch tokens of a (B, H, N, d) tensor as a zero-padded (B, H, rows+2p, cols+2p, d)
    grid."""
    B, H, _, d = t.shape
    return F.pad(t[:, :, 1:].reshape(B, H, rows, cols, d), (0, 0, pad, pad, pad, pad))


def _chunk_rows(batch: int, heads: int, cols: int, d: int, taps: int, itemsize: int) -> int:
    per_row = batch * heads * cols * (taps + 2 * d) * itemsize
    return max(1, SLICE_CHUNK_BYTES // per_row)


@torch.library.custom_op("effbench::local_attention", mutates_args=())
def local_attention(
    q: Tensor, k: Tensor, v: Tensor, rows: int, cols: int, window: int, dilation: int,
    scale: float,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Patch queries of q, k, v (B, H, 1 + rows*cols, d) over their dilated window + CLS.

    Returns:
        out: (B, H, rows*cols, d), the local attention of every patch query.
        attn: (window^2 + 1, B, H, rows, cols) float, its softmax weights (CLS last), which
            the backward reads.
    """
    B, H, _, d = q.shape
    pad = window // 2 * dilation
    kp, vp = _padded(k, rows, cols, pad), _padded(v, rows, cols, pad)
    qg = q[:, :, 1:].reshape(B, H, rows, cols, d)
    kc, vc = k[:, :, :1].unsqueeze(2), v[:, :, :1].unsqueeze(2)  # (B, H, 1, 1, d)
    off = _off_grid(rows, cols, window, dilation, str(q.device))
    offsets = _offsets(window, dilation)
    taps = len(offsets) + 1
    attn = q.new_empty(taps, B, H, rows, cols)
    out = q.new_empty(B, H, rows, cols, d)
    step = _chunk_rows(B, H, cols, d, taps, q.element_size())
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        qc = qg[:, :, r0:r1] * scale
        logits = attn[:, :, :, r0:r1]
        for j, (a, b) in enumerate(offsets):
            torch.sum(qc * kp[:, :, r0 + a : r1 + a, b : b + cols], -1, out=logits[j])
        torch.sum(qc * kc, -1, out=logits[-1])
        logits[:-1].masked_fill_(off[:, :, :, r0:r1], float("-inf"))
        logits.copy_(torch.softmax(logits, dim=0))
        o = out[:, :, r0:r1]
        torch.mul(logits[-1].unsqueeze(-1), vc, out=o)
        for j, (a, b) in enumerate(offsets):
            o.addcmul_(logits[j].unsqueeze(-1), vp[:, :, r0 + a : r1 + a, b : b + cols])
    return out.view(B, H, rows * cols, d), attn


@local_attention.register_fake
def _fake(
    q: Tensor, k: Tensor, v: Tensor, rows: int, cols: int, window: int, dilation: int,
    scale: float,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    B, H, _, d = q.shape
    return q.new_empty(B, H, rows * cols, d), q.new_empty(window * window + 1, B, H, rows, cols)


def _setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    q, k, v, rows, cols, window, dilation, scale = inputs
    ctx.save_for_backward(q, k, v, output[1])
    ctx.grid = (rows, cols, window, dilation, scale)


def _backward(ctx: Any, grad_out: Tensor, grad_attn: Tensor | None) -> tuple[Any, ...]:
    q, k, v, attn = ctx.saved_tensors
    rows, cols, window, dilation, scale = ctx.grid
    B, H, _, d = q.shape
    pad = window // 2 * dilation
    offsets = _offsets(window, dilation)
    kp, vp = _padded(k, rows, cols, pad), _padded(v, rows, cols, pad)
    qg = q[:, :, 1:].reshape(B, H, rows, cols, d)
    kc, vc = k[:, :, :1].unsqueeze(2), v[:, :, :1].unsqueeze(2)
    go = grad_out.reshape(B, H, rows, cols, d)
    # out = sum_j attn_j v_j: gradients of the weights and of the values.
    g_attn = torch.empty_like(attn)
    g_vp = torch.zeros_like(vp)
    for j, (a, b) in enumerate(offsets):
        vj = vp[:, :, a : a + rows, b : b + cols]
        torch.sum(go * vj, -1, out=g_attn[j])
        g_vp[:, :, a : a + rows, b : b + cols].addcmul_(attn[j].unsqueeze(-1), go)
    torch.sum(go * vc, -1, out=g_attn[-1])
    g_vc = (attn[-1].unsqueeze(-1) * go).sum(dim=(2, 3)).unsqueeze(2)
    # softmax over the taps, then the scaled dot products with the keys.
    g_logits = attn * (g_attn - (attn * g_attn).sum(dim=0, keepdim=True))
    g_logits.mul_(scale)
    g_qg = g_logits[-1].unsqueeze(-1) * kc
    g_kp = torch.zeros_like(kp)
    for j, (a, b) in enumerate(offsets):
        gl = g_logits[j].unsqueeze(-1)
        g_qg.addcmul_(gl, kp[:, :, a : a + rows, b : b + cols])
        g_kp[:, :, a : a + rows, b : b + cols].addcmul_(gl, qg)
    g_kc = (g_logits[-1].unsqueeze(-1) * qg).sum(dim=(2, 3)).unsqueeze(2)

    def tokens(cls: Tensor, grid: Tensor, pad: int) -> Tensor:
        inner = grid[:, :, pad : pad + rows, pad : pad + cols]
        return torch.cat([cls, inner.reshape(B, H, rows * cols, d)], dim=2)

    g_q = tokens(torch.zeros_like(q[:, :, :1]), g_qg, 0)
    g_k, g_v = tokens(g_kc, g_kp, pad), tokens(g_vc, g_vp, pad)
    return g_q, g_k, g_v, None, None, None, None, None


local_attention.register_autograd(_backward, setup_context=_setup)


def local_attention_flops(heads: int, patches: int, window: int, d: int) -> int:
    """FLOPs of one sample's local attention: logits and weighted values of every patch
    query over window^2 cells + CLS, as matrix products (2 per multiply-add)."""
    return 2 * matmul_flops(heads, patches, d, window * window + 1)


def counted_flops(q_shape: Any, rows: int, cols: int, window: int) -> int:
    """FLOPs of one `local_attention` call for q of shape (B, H, N, d), as the FLOP
    counters see it."""
    B, H, _, d = q_shape
    return B * local_attention_flops(H, rows * cols, window, d)


def gather_local(
    q: Tensor, k: Tensor, v: Tensor, rows: int, cols: int, window: int, dilation: int,
    scale: float,
) -> Tensor:  # fmt: skip
    """The reference: each patch query's window + CLS keys and values gathered by index,
    (B, H, rows*cols, d)."""
    idx, valid = neighbourhoods(rows, cols, window, dilation)
    return gather_attention(q, k, v, idx.to(q.device), valid.to(q.device), scale)


# -- flex attention -----------------------------------------------------------------------


def flex_supported(device: torch.device, *, grad: bool) -> bool:
    """Whether the installed torch runs flex attention here: CUDA, or the CPU in inference."""
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and not grad


@functools.cache
def _compiled_flex() -> Callable[..., Tensor]:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _grid_block_mask(patch_sees: Callable[..., Tensor], rows: int, cols: int, device: str) -> Any:
    """Flex attention's block mask over [CLS, patches]: the CLS query and the CLS key are
    global; patch query (qr, qc) sees patch key (kr, kc) where `patch_sees(qr, qc, kr, kc)`."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        qp, kp = q_idx - 1, kv_idx - 1
        sees = patch_sees(qp // cols, qp % cols, kp // cols, kp % cols)
        return (q_idx == 0) | (kv_idx == 0) | sees

    n = rows * cols + 1
    return create_block_mask(mask_mod, None, None, n, n, device=device)


@functools.lru_cache(maxsize=16)
def local_block_mask(rows: int, cols: int, window: int, dilation: int, device: str) -> Any:
    """The block mask of the hybrid's pattern: patch queries see their dilated window.
    Built once per grid and device."""
    reach = window // 2 * dilation

    def sees(qr: Tensor, qc: Tensor, kr: Tensor, kc: Tensor) -> Tensor:
        dr, dc = kr - qr, kc - qc
        near = (dr.abs() <= reach) & (dc.abs() <= reach)
        return near & (dr % dilation == 0) & (dc % dilation == 0)

    return _grid_block_mask(sees, rows, cols, device)


def flex_local(
    q: Tensor, k: Tensor, v: Tensor, rows: int, cols: int, window: int, dilation: int,
    scale: float,
) -> Tensor:  # fmt: skip
    """Every query's local attention through flex attention, (B, H, 1 + rows*cols, d): the
    CLS row is exact softmax attention over all tokens."""
    mask = local_block_mask(rows, cols, window, dilation, str(q.device))
    return _compiled_flex()(q, k, v, block_mask=mask, scale=scale)


def resolve_backend(
    choice: str, device: torch.device, *, grad: bool, portable: str = "slices"
) -> str:
    """The backend that runs for a configured `choice` on this device: `auto` is flex where
    it runs forward and backward (CUDA), else `portable`; flex falls back to `portable`
    where it cannot run (the CPU with gradients). `portable` is the path that runs anywhere
    and that FLOP counters see into: `slices` for the hybrid's zero-padded windows, `tiles`
    for the clamped neighbourhoods."""
    if _reference_only and choice != "gather":
        return portable
    if choice == "auto":
        return "flex" if device.type == "cuda" and flex_supported(device, grad=grad) else portable
    if choice == "flex" and not flex_supported(device, grad=grad):
        return portable
    return choice


# -- clamped neighbourhoods (NATTEN) ------------------------------------------------------

# Bytes of one query chunk's gathered keys, values, logits and weights in `gather_attention`
# without autograd: a few hundred queries at a time keep them in cache whatever N is.
GATHER_CHUNK_BYTES = 8 * 2**20


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


def gathered_weights(
    q: Tensor, table: Tensor, idx: Tensor, valid: Tensor | None, scale: float
) -> Tensor:
    """Softmax weights (B, H, c, T) of queries q (B, H, c, d) over the keys `idx` (c, T)
    names in a pad-extended key table (B, H, N + 1, d); `valid` (c, T) masks pad slots (None:
    there are none). Zero on pad slots; computed in float32 at least (bfloat16 logits are
    normalised in float32)."""
    B, H, c, d = q.shape
    kn = table.index_select(2, idx.reshape(-1)).view(B, H, c, idx.shape[1], d)
    logits = ((q * scale).unsqueeze(-2) @ kn.transpose(-2, -1)).squeeze(-2)  # (B, H, c, T)
    if valid is not None:
        logits = logits.masked_fill(~valid, float("-inf"))
    return torch.softmax(logits, dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))


def dense_rows(attn: Tensor, idx: Tensor, n: int) -> Tensor:
    """Weights over gathered keys (B, H, c, T), keys `idx` (c, T) into [CLS, patches..., pad],
    as dense rows over the n tokens (B, H, c, n): repeated keys summed, the pad slot dropped."""
    B, H, c, _ = attn.shape
    dense = attn.new_zeros(B, H, c, n + 1)
    dense.scatter_add_(-1, idx.expand(B, H, -1, -1), attn)
    return dense[..., :n]


def _gathered_chunk(
    q: Tensor, kt: Tensor, vt: Tensor, idx: Tensor, valid: Tensor | None, scale: float
) -> Tensor:
    """(B, H, c, d) outputs of queries q over their gathered keys and values."""
    B, H, c, d = q.shape
    attn = gathered_weights(q, kt, idx, valid, scale)
    vn = vt.index_select(2, idx.reshape(-1)).view(B, H, c, idx.shape[1], d)
    return (attn.to(vn.dtype).unsqueeze(-2) @ vn).squeeze(-2)


def gather_attention(
    q: Tensor, k: Tensor, v: Tensor, idx: Tensor, valid: Tensor | None, scale: float
) -> Tensor:
    """Patch queries of q, k, v (B, H, 1 + P, d) over the T keys and values `idx` (P, T)
    names in [CLS, patches..., pad] (`valid` masks pad slots; None: there are none):
    (B, H, P, d). O(P * T * d).

    Both products are batched matrix products (T logits, then T weighted values per query),
    which fvcore and FlopCounterMode count: 2 * matmul_flops(H, P, d, T) per sample. Without
    autograd the queries go in chunks of about `GATHER_CHUNK_BYTES`, so that the gathered
    keys and values stay in cache; with it, in one pass.
    """
    B, H, _, d = q.shape
    kt, vt = F.pad(k, (0, 0, 0, 1)), F.pad(v, (0, 0, 0, 1))  # the pad slot: index N
    qp = q[:, :, 1:]
    p, taps = idx.shape
    per_query = B * H * taps * (2 * d + 2) * max(q.element_size(), 4)
    step = max(1, GATHER_CHUNK_BYTES // per_query)
    if needs_grad(q, k, v) or step >= p:
        return _gathered_chunk(qp, kt, vt, idx, valid, scale)
    chunks = [
        _gathered_chunk(
            qp[:, :, p0 : p0 + step],
            kt,
            vt,
            idx[p0 : p0 + step],
            None if valid is None else valid[p0 : p0 + step],
            scale,
        )
        for p0 in range(0, p, step)
    ]
    return torch.cat(chunks, dim=2)


def gather_attention_flops(heads: int, patches: int, taps: int, d: int) -> int:
    """FLOPs of one sample's `gather_attention`: logits and weighted values of every patch
    query over its `taps` keys (2 per multiply-add)."""
    return 2 * matmul_flops(heads, patches, d, taps)


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

    return _grid_block_mask(sees, rows, cols, device)


def flex_clamped(
    q: Tensor, k: Tensor, v: Tensor, rows: int, cols: int, kernel: int, dilation: int,
    scale: float,
) -> Tensor:  # fmt: skip
    """Every query's clamped-neighbourhood attention through flex attention,
    (B, H, 1 + rows*cols, d): the CLS row is exact softmax attention over all tokens."""
    mask = clamped_block_mask(rows, cols, kernel, dilation, str(q.device))
    return _compiled_flex()(q, k, v, block_mask=mask, scale=scale)


# -- clamped neighbourhoods in tiles: dense attention of a tile of queries over its keys ----

# Queries per tile side: a tile of 16 x 16 patch queries attends, as one masked SDPA call, to
# the keys its neighbourhoods cover together ((16 + k - 1)^2 for a k x k kernel). Of 8, 12
# and 16, 16 was the fastest on the CPU at 4,097 tokens with k = 7.
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
