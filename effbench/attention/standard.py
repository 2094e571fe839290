"""Standard softmax attention with separate Q, K and V projections (Vaswani et al. 2017).

O(N^2) time and memory: the (N, N) weights are materialised.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from effbench.attention.base import ExactAttention
from effbench.attention.registry import register
from effbench.config.attention import StandardConfig


@register("standard")
class StandardAttention(ExactAttention):
    """Three projections instead of one fused W_qkv; the same maths as `fused`."""

    def __init__(self, cfg: StandardConfig, *, dim: int, num_heads: int, seq_len: int) -> None:
        super().__init__(cfg, dim=dim, num_heads=num_heads, seq_len=seq_len)
        del self.qkv
        self.q = nn.Linear(dim, dim, bias=cfg.qkv_bias)
        self.k = nn.Linear(dim, dim, bias=cfg.qkv_bias)
        self.v = nn.Linear(dim, dim, bias=cfg.qkv_bias)

    def qkv_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, N, C = x.shape

        def heads(lin: nn.Linear) -> Tensor:  # (B, N, C) -> (B, H, N, d)
            return lin(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)

        return heads(self.q), heads(self.k), heads(self.v)

    def projection_state(self) -> dict[str, Tensor]:
        out = {
            "qkv.weight": torch.cat([self.q.weight, self.k.weight, self.v.weight]),
            "proj.weight": self.proj.weight,
            "proj.bias": self.proj.bias,
        }
        if self.cfg.qkv_bias:
            out["qkv.bias"] = torch.cat([self.q.bias, self.k.bias, self.v.bias])
        return {k: v.detach().clone() for k, v in out.items()}

    @torch.no_grad()
    def load_projection_state(self, state: dict[str, Tensor]) -> None:
        for i, lin in enumerate((self.q, self.k, self.v)):
            lin.weight.copy_(state["qkv.weight"].chunk(3)[i])
            if self.cfg.qkv_bias:
                lin.bias.copy_(state["qkv.bias"].chunk(3)[i])
        self.proj.weight.copy_(state["proj.weight"])
        self.proj.bias.copy_(state["proj.bias"])
