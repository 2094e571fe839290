"""Hybrid: dilated (atrous) local attention on the 2-D patch grid plus a global linear-attention
branch, mixed per head by a learned gate; the CLS token attends globally with exact softmax.
After dilated neighbourhood attention (Hassani & Shi 2022, "Dilated Neighborhood Attention
Transformer") and linear attention (Katharopoulos et al. 2020).

O(N * (w^2 + d) * d) time and memory for a w x w window: neighbourhoods are gathered, never
masked out of a dense N x N matrix.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from effbench.attention.base import (
    Attention,
    matmul_flops,
    needs_grad,
    softmax_attention,
    softmax_weights,
)
from effbench.attention.linear import (
    linear_attention_flops,
    linear_context,
    linear_readout,
    linear_weights,
)
from effbench.attention.registry import register
from effbench.config.attention import HybridConfig

# Bytes of gathered keys and values per query chunk in inference (see `chunk_rows`).
LOCAL_CHUNK_BYTES = 4 * 2**20


def grid_shape(patches: int) -> tuple[int, int]:
    """The most square (rows, cols) grid holding exactly `patches` cells."""
    rows = max(r for r in range(1, math.isqrt(patches) + 1) if patches % r == 0)
    return rows, patches // rows


def neighbourhoods(rows: int, cols: int, window: int, dilation: int) -> tuple[Tensor, Tensor]:
    """Key indices for each patch query, into tokens [CLS, patches..., pad].

    Returns:
        idx: (P, window^2 + 1) long; column j < window^2 is a dilated window cell
            (index P + 1, the pad slot, where the cell falls off the grid); the last is CLS (0).
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


def elu_features(x: Tensor) -> Tensor:
    return F.elu(x) + 1


def relu_features(x: Tensor) -> Tensor:
    return F.relu(x) + 1e-3


@register("hybrid")
class HybridAttention(Attention):
    """Patch queries: g * local(window + CLS) + (1 - g) * global linear, g = sigmoid(gate[h]).

    The CLS query uses exact softmax over all tokens.
    """

    def __init__(self, cfg: HybridConfig, *, dim: int, num_heads: int, seq_len: int) -> None:
        super().__init__(cfg, dim=dim, num_heads=num_heads, seq_len=seq_len)
        self.rows, self.cols = grid_shape(seq_len - 1)
        idx, valid = neighbourhoods(self.rows, self.cols, cfg.window, cfg.dilation)
        self.register_buffer("idx", idx, persistent=False)
        self.register_buffer("valid", valid, persistent=False)
        self.gate = nn.Parameter(torch.zeros(num_heads))
        self.phi = elu_features if cfg.feature_map == "elu" else relu_features

    def _check(self, n: int) -> None:
        assert n == self.seq_len, (
            f"hybrid attention is built for a {self.rows}x{self.cols} grid ({self.seq_len} "
            f"tokens) but got {n} tokens; build the layer for this sequence length"
        )

    def _local_logits(self, qp: Tensor, kn: Tensor, valid: Tensor) -> Tensor:
        """Logits of patch queries (B, H, c, d) over their gathered window + CLS keys
        (B, H, c, W+1, d): (B, H, c, W+1), with off-grid pad slots at -inf."""
        logits = (qp.unsqueeze(-2) @ kn.transpose(-2, -1)).squeeze(-2) * self.scale
        return logits.masked_fill(~valid, float("-inf"))

    def _gather(self, table: Tensor, rows: slice) -> Tensor:
        """Window + CLS entries of a pad-extended (B, H, N+1, e) table for the patch queries
        in `rows`: (B, H, c, W+1, e). One index_select of contiguous rows."""
        idx = self.idx[rows]
        B, H, _, e = table.shape
        return table.index_select(2, idx.reshape(-1)).view(B, H, *idx.shape, e)

    def chunk_rows(self, batch: int, itemsize: int) -> int:
        """Patch queries per chunk in inference: the gathered keys and values of one chunk
        take about LOCAL_CHUNK_BYTES, so they stay in cache whatever N is."""
        per_query = 2 * batch * self.num_heads * self.idx.shape[1] * self.head_dim * itemsize
        return max(1, LOCAL_CHUNK_BYTES // per_query)

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        self._check(q.shape[-2])
        B, H, N, d = q.shape
        P = N - 1
        out = q.new_empty(B, H, N, d)
        out[:, :, :1] = softmax_attention(q[:, :, :1], k, v, self.scale)  # CLS: exact, global
        # Global branch: phi(K)^T V and phi(K)^T 1 once; each query chunk then reads them.
        context, ksum = linear_context(self.phi(k), v)  # (B, H, d, d), (B, H, d, 1)
        g = torch.sigmoid(self.gate).view(1, -1, 1, 1).to(q.dtype)
        # Local branch: contiguous key and value tables with a zero pad row last, so that
        # the gathered windows feed the matrix products without another copy.
        kt, vt = F.pad(k, (0, 0, 0, 1)), F.pad(v, (0, 0, 0, 1))  # (B, H, N+1, d)
        # Under autograd one chunk: every chunk's gather would otherwise back-propagate into
        # a full-size zero gradient. Without it, chunks bound the temporaries.
        rows = P if needs_grad(q, k, v) else self.chunk_rows(B, q.element_size())
        for p0 in range(0, P, rows):
            sl = slice(p0, min(P, p0 + rows))
            qp = q[:, :, 1 + sl.start : 1 + sl.stop]  # (B, H, c, d)
            kn, vn = self._gather(kt, sl), self._gather(vt, sl)  # (B, H, c, W+1, d)
            attn = torch.softmax(self._local_logits(qp, kn, self.valid[sl]), dim=-1)
            local = (attn.unsqueeze(-2) @ vn).squeeze(-2)  # (B, H, c, d)
            glob = linear_readout(self.phi(qp), context, ksum)  # (B, H, c, d)
            out[:, :, 1 + sl.start : 1 + sl.stop] = torch.lerp(glob, local, g)
        return out

    def weights(self, q: Tensor, k: Tensor) -> Tensor:
        self._check(q.shape[-2])
        B, H, N, d = q.shape
        qc, qp = q[:, :, :1], q[:, :, 1:]
        kn = self._gather(F.pad(k, (0, 0, 0, 1)), slice(None))
        attn = torch.softmax(self._local_logits(qp, kn, self.valid), dim=-1)  # (B, H, P, W+1)
        local = q.new_zeros(B, H, N - 1, N + 1)
        local.scatter_add_(-1, self.idx.expand(B, H, -1, -1), attn)
        g = torch.sigmoid(self.gate.float()).view(1, -1, 1, 1)
        patches = g * local[..., :N] + (1 - g) * linear_weights(self.phi(qp), self.phi(k))
        return torch.cat([softmax_weights(qc, k, self.scale), patches], dim=2)

    def attend_flops(self, n: int) -> int:
        h, d, p = self.num_heads, self.head_dim, n - 1
        w = self.cfg.window**2 + 1
        cls = 2 * matmul_flops(h, 1, d, n)
        local = 2 * matmul_flops(h, p, d, w)
        glob = linear_attention_flops(h, p, d, d, keys=n)
        return cls + local + glob
