"""Hybrid: dilated (atrous) local attention on the 2-D patch grid plus a global linear-attention
branch, mixed per head by a learned gate; the CLS token attends globally with exact softmax.

O(N * (w^2 + d) * d) time and memory for a w x w window: neighbourhoods are gathered, never
masked out of a dense N x N matrix.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from effbench.attention import register
from effbench.attention.base import Attention, matmul_flops, softmax_attention, softmax_weights
from effbench.attention.configs import HybridConfig
from effbench.attention.performer import (
    linear_attention,
    linear_attention_flops,
    linear_weights,
)


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

    def _local_logits(self, qp: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """Logits of patch queries over their window + CLS, pad slots at -inf.

        Returns:
            logits (B, H, P, W+1) and the pad-extended key table's gathered indices.
        """
        kt = F.pad(k, (0, 0, 0, 1))  # (B, H, N+1, d): last row is the pad slot
        kn = kt[:, :, self.idx]  # (B, H, P, W+1, d)
        logits = (qp.unsqueeze(-2) @ kn.transpose(-2, -1)).squeeze(-2) * self.scale
        return logits.masked_fill(~self.valid, float("-inf")), kt

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        self._check(q.shape[-2])
        qc, qp = q[:, :, :1], q[:, :, 1:]  # CLS query (B, H, 1, d), patch queries (B, H, P, d)
        out_cls = softmax_attention(qc, k, v, self.scale)
        logits, _ = self._local_logits(qp, k)
        attn = torch.softmax(logits, dim=-1)  # (B, H, P, W+1)
        vn = F.pad(v, (0, 0, 0, 1))[:, :, self.idx]  # (B, H, P, W+1, d)
        local = (attn.unsqueeze(-2) @ vn).squeeze(-2)  # (B, H, P, d)
        glob = linear_attention(self.phi(qp), self.phi(k), v)  # (B, H, P, d)
        g = torch.sigmoid(self.gate).view(1, -1, 1, 1).to(local.dtype)
        return torch.cat([out_cls, g * local + (1 - g) * glob], dim=2)

    def weights(self, q: Tensor, k: Tensor) -> Tensor:
        self._check(q.shape[-2])
        B, H, N, d = q.shape
        qc, qp = q[:, :, :1], q[:, :, 1:]
        logits, _ = self._local_logits(qp, k)
        attn = torch.softmax(logits, dim=-1)  # (B, H, P, W+1)
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
