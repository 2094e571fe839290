"""Linformer: keys and values projected along the sequence to k rows (Wang et al. 2020,
"Linformer: Self-Attention with Linear Complexity").

O(N * k) time and memory; the projections are sized to the sequence length N.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from effbench.attention import register
from effbench.attention.base import Attention, matmul_flops
from effbench.attention.configs import LinformerConfig


def project_sequence(e: Tensor, x: Tensor) -> Tensor:
    """Project along the sequence: e (k, N), x (B, H, N, d) -> (B, H, k, d)."""
    B, H, N, d = x.shape
    assert e.shape[1] == N, (
        f"Linformer projection is sized for {e.shape[1]} tokens but got {N}; "
        "build the layer for this sequence length"
    )
    # One (k, N) @ (N, B*H*d) product instead of B*H small ones.
    xs = x.permute(2, 0, 1, 3).reshape(N, B * H * d)
    return (e @ xs).view(-1, B, H, d).permute(1, 2, 0, 3)


def stochastic_rows(f: Tensor) -> Tensor:
    """|F| with rows normalised to sum to 1: how a projected key's mass maps back to tokens."""
    a = f.abs()
    return a / a.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)


@register("linformer")
class LinformerAttention(Attention):
    """softmax(Q (E K)^T / sqrt(d)) (F V), with learned E, F of shape (k, N).

    `attention_map` maps each projected key's probability mass back over the tokens in
    proportion to |F|: row-stochastic, and exactly softmax attention when E = F = I.
    """

    def __init__(self, cfg: LinformerConfig, *, dim: int, num_heads: int, seq_len: int) -> None:
        super().__init__(cfg, dim=dim, num_heads=num_heads, seq_len=seq_len)
        std = (2.0 / (seq_len + cfg.k)) ** 0.5
        self.e = nn.Parameter(torch.randn(cfg.k, seq_len) * std)
        self.f = self.e if cfg.share_kv else nn.Parameter(torch.randn(cfg.k, seq_len) * std)

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        kp = project_sequence(self.e, k)  # (B, H, k, d)
        vp = project_sequence(self.f, v)
        attn = torch.softmax((q @ kp.transpose(-2, -1)) * self.scale, dim=-1)  # (B, H, N, k)
        return attn @ vp

    def weights(self, q: Tensor, k: Tensor) -> Tensor:
        kp = project_sequence(self.e.float(), k)
        attn = torch.softmax((q @ kp.transpose(-2, -1)) * self.scale, dim=-1)
        return attn @ stochastic_rows(self.f.float())

    def attend_flops(self, n: int) -> int:
        h, d, k = self.num_heads, self.head_dim, self.cfg.k
        return 2 * matmul_flops(h, k, n, d) + 2 * matmul_flops(h, n, d, k)
