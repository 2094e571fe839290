"""The hybrid kind's local attention: each patch query attends to a dilated `window` x
`window` neighbourhood of patches centred on it (cells that fall off the grid are left out)
plus CLS; the CLS query attends to every token. Three backends run it, all the same maths:

- `slices` (the default off CUDA): `local_attention`, a custom op that reads each window
  offset as a shifted view of the zero-padded key and value grids, so nothing is gathered
  and no N x N matrix is formed. O(N * window^2 * d). It has its own backward and its own
  FLOP formula (fvcore and FlopCounterMode count it like the matrix products it replaces).
- `flex` (the default on CUDA): `flex_local`, flex attention with a block mask built once
  per grid and cached; forward and backward on CUDA, inference only on the CPU.
- `gather`: `gather_local`, index_select of each query's window + CLS keys and values, the
  plain reference the others are tested against.

Which one runs, the flex machinery and the gathered path live in `effbench.attention.local`.
The custom op is registered as `effbench::local_attention` on import; ONNX export and the
FLOP counters name it so.

After neighbourhood attention (Hassani et al. 2023) with dilation (Hassani & Shi 2022).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from effbench.attention.base import matmul_flops
from effbench.attention.local import compiled_flex, gather_attention, grid_block_mask

# Bytes of one chunk's logits and products in the slices forward (inference): a few grid
# rows at a time keep them in cache whatever N is.
SLICE_CHUNK_BYTES = 8 * 2**20


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


@functools.lru_cache(maxsize=16)
def local_block_mask(rows: int, cols: int, window: int, dilation: int, device: str) -> Any:
    """The block mask of the hybrid's pattern: patch queries see their dilated window.
    Built once per grid and device."""
    reach = window // 2 * dilation

    def sees(qr: Tensor, qc: Tensor, kr: Tensor, kc: Tensor) -> Tensor:
        dr, dc = kr - qr, kc - qc
        near = (dr.abs() <= reach) & (dc.abs() <= reach)
        return near & (dr % dilation == 0) & (dc % dilation == 0)

    return grid_block_mask(sees, rows, cols, device)


def flex_local(
    q: Tensor, k: Tensor, v: Tensor, rows: int, cols: int, window: int, dilation: int,
    scale: float,
) -> Tensor:  # fmt: skip
    """Every query's local attention through flex attention, (B, H, 1 + rows*cols, d): the
    CLS row is exact softmax attention over all tokens."""
    mask = local_block_mask(rows, cols, window, dilation, str(q.device))
    return compiled_flex()(q, k, v, block_mask=mask, scale=scale)
