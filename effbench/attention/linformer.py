"""Linformer: keys and values projected along the sequence to k rows (Wang et al. 2020,
"Linformer: Self-Attention with Linear Complexity").

O(N * k) time and memory; the projections are sized to the sequence length N (and resized
with the patch grid by `adapt_state`). The forward
projects the layer's input along the sequence before the key/value projections, E (X W_k) =
(E X) W_k, which gives the same keys and values without computing them for all N tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from effbench.attention.base import Attention, matmul_flops
from effbench.attention.grid import resize_token_grid
from effbench.attention.registry import register
from effbench.config.attention import LinformerConfig


def project_rows(e: Tensor, x: Tensor) -> Tensor:
    """Project along the sequence: e (k, N), x (B, N, C) -> (B, k, C).

    A bmm with E broadcast over the batch reads X in place; E @ X would transpose X first.
    """
    B, N, C = x.shape
    assert e.shape[1] == N, (
        f"Linformer projection is sized for {e.shape[1]} tokens but got {N}; "
        "build the layer for this sequence length"
    )
    return torch.bmm(e.expand(B, -1, -1), x)


def project_sequence(e: Tensor, x: Tensor) -> Tensor:
    """`project_rows` for heads: e (k, N), x (B, H, N, d) -> (B, H, k, d).

    The heads of q, k and v are views of one (B, N, 3, H, d) buffer, so the (B, N, H*d)
    layout that `project_rows` takes is a view of them, not a copy.
    """
    B, H, N, d = x.shape
    xs = x.transpose(1, 2).reshape(B, N, H * d)
    return project_rows(e, xs).view(B, -1, H, d).transpose(1, 2)  # (B, H, k, d)


def resize_sequence_projection(
    e: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]
) -> Tensor:
    """A Linformer projection (k, 1 + gh*gw) for another patch grid.

    The CLS column is kept; the patch columns are resized bicubically as k maps over the
    grid, like the position embedding, and scaled by old/new patch count so that each
    projected row (a weighted sum over the tokens) keeps its magnitude.
    """
    if old_grid == new_grid:
        return e
    resized = resize_token_grid(e.t()[None], old_grid, new_grid)[0].t()  # (k, 1 + gh'*gw')
    ratio = (old_grid[0] * old_grid[1]) / (new_grid[0] * new_grid[1])
    return torch.cat([resized[:, :1], resized[:, 1:] * ratio], dim=1)


@register("linformer")
class LinformerAttention(Attention):
    """softmax(Q (E K)^T / sqrt(d)) (F V), with learned E, F of shape (k, N).

    Its map, softmax(Q (E K)^T / sqrt(d)) F, is what it applies to V: signed (F is), with
    rows that do not sum to 1, so not a distribution over the tokens; it is exactly softmax
    attention when E = F = I.
    """

    map_row_stochastic = False
    map_row_sum_tol = None
    map_nonnegative = False

    def __init__(self, cfg: LinformerConfig, *, dim: int, num_heads: int, seq_len: int) -> None:
        super().__init__(cfg, dim=dim, num_heads=num_heads, seq_len=seq_len)
        std = (2.0 / (seq_len + cfg.k)) ** 0.5
        self.e = nn.Parameter(torch.randn(cfg.k, seq_len) * std)
        self.f = self.e if cfg.share_kv else nn.Parameter(torch.randn(cfg.k, seq_len) * std)

    def forward(self, x: Tensor) -> Tensor:
        """merge_heads(attend(*qkv_heads(x))), evaluated as (E X) W_k rather than E (X W_k).

        Only the queries are projected for all N tokens; keys and values are projected for
        the k rows of E X and F X (plus E 1 b^T for the bias), saving 2 N C^2 multiply-adds.
        """
        B, N, C = x.shape
        H, d = self.num_heads, self.head_dim
        w_q, w_k, w_v = self.qkv.weight.chunk(3)
        b_q, b_k, b_v = self.qkv.bias.chunk(3) if self.qkv.bias is not None else (None,) * 3
        q = F.linear(x, w_q, b_q).view(B, N, H, d).transpose(1, 2)  # (B, H, N, d)
        ex = project_rows(self.e, x)  # (B, k, C)
        fx = ex if self.f is self.e else project_rows(self.f, x)
        kp, vp = F.linear(ex, w_k), F.linear(fx, w_v)  # (B, k, C)
        if b_k is not None:
            kp = kp + self.e.sum(dim=1, keepdim=True) * b_k  # E (1 b_k^T) = (E 1) b_k^T
            vp = vp + self.f.sum(dim=1, keepdim=True) * b_v
        kp = (kp * self.scale).view(B, -1, H, d).transpose(1, 2)  # (B, H, k, d)
        vp = vp.view(B, -1, H, d).transpose(1, 2)
        attn = torch.softmax(q @ kp.transpose(-2, -1), dim=-1)  # (B, H, N, k)
        return self.merge_heads(attn @ vp)

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        kp = project_sequence(self.e, k) * self.scale  # (B, H, k, d), scaled: k rows, not N
        vp = project_sequence(self.f, v)
        attn = torch.softmax(q @ kp.transpose(-2, -1), dim=-1)  # (B, H, N, k)
        return attn @ vp

    def weights(self, q: Tensor, k: Tensor) -> Tensor:
        kp = project_sequence(self.e.float(), k)
        attn = torch.softmax((q @ kp.transpose(-2, -1)) * self.scale, dim=-1)
        return attn @ self.f.float()

    def adapt_state(
        self, state: dict[str, Tensor], *, trained_grid: tuple[int, int], grid: tuple[int, int]
    ) -> dict[str, Tensor]:
        """E and F resized to the new grid (`resize_sequence_projection`); the rest kept."""
        out = dict(state)
        for p in ("e", "f"):
            out[p] = resize_sequence_projection(state[p], trained_grid, grid)
        return out

    def projection_flops(self, n: int) -> int:
        """W_q and W_o for n tokens; W_k and W_v for the k projected rows only."""
        return matmul_flops(n, self.dim, 2 * self.dim) + matmul_flops(
            self.cfg.k, self.dim, 2 * self.dim
        )

    def attend_flops(self, n: int) -> int:
        """E X (and F X unless shared), then Q K_p^T and P V_p."""
        h, d, k = self.num_heads, self.head_dim, self.cfg.k
        seq = (1 if self.cfg.share_kv else 2) * matmul_flops(k, n, self.dim)
        return seq + 2 * matmul_flops(h, n, d, k)
