"""Hybrid: dilated (atrous) local attention on the 2-D patch grid plus a global linear-attention
branch, mixed per head by a learned gate; the CLS token attends globally with exact softmax.
After dilated neighbourhood attention (Hassani & Shi 2022, "Dilated Neighborhood Attention
Transformer") and linear attention (Katharopoulos et al. 2020).

O(N * (w^2 + d) * d) time and memory for a w x w window: the local branch runs through
`effbench.attention.dilated` (shifted views of the key and value grids, or flex attention on
CUDA), never a dense N x N matrix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from effbench.attention.base import (
    Attention,
    exp_scale,
    exp_scaled,
    matmul_flops,
    needs_grad,
    softmax_attention,
    softmax_weights,
)
from effbench.attention.dilated import (
    flex_local,
    gather_local,
    local_attention,
    local_attention_flops,
    neighbourhoods,
)
from effbench.attention.grid import grid_shape
from effbench.attention.linear import (
    linear_attention_flops,
    linear_context,
    linear_readout,
    linear_weights,
)
from effbench.attention.local import dense_rows, gathered_weights, resolve_backend
from effbench.attention.registry import register
from effbench.config.attention import HybridConfig


def elu_features(x: Tensor) -> Tensor:
    """elu(x) + 1, written as exp(min(x, 0)) + max(x, 0): the same values and gradients, and
    on the CPU far faster than F.elu, whose expm1 does not vectorise (docs/mechanisms.md);
    the exp as `exp_scaled`, the faster exponential in each mode."""
    neg = x.clamp(max=0)
    if not needs_grad(x):
        return exp_scaled(neg.mul_(exp_scale()), inplace=True).add_(x.clamp(min=0))
    return exp_scaled(neg * exp_scale()) + x.clamp(min=0)


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
        self.register_buffer("idx", idx, persistent=False)  # for `weights`
        self.register_buffer("valid", valid, persistent=False)
        self.gate = nn.Parameter(torch.zeros(num_heads))
        self.phi = elu_features if cfg.feature_map == "elu" else relu_features

    def _check(self, n: int) -> None:
        assert n == self.seq_len, (
            f"hybrid attention is built for a {self.rows}x{self.cols} grid ({self.seq_len} "
            f"tokens) but got {n} tokens; build the layer for this sequence length"
        )

    def local_backend(self, device: torch.device, *, grad: bool) -> str:
        """The local-attention backend `attend` uses on this device (see
        `effbench.attention.local.resolve_backend`)."""
        return resolve_backend(self.cfg.local_backend, device, grad=grad)

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        self._check(q.shape[-2])
        grad = needs_grad(q, k, v)
        backend = self.local_backend(q.device, grad=grad)
        grid = (self.rows, self.cols, self.cfg.window, self.cfg.dilation, self.scale)
        if backend == "flex":
            both = flex_local(q, k, v, *grid)  # the CLS row is exact global attention
            cls, local = both[:, :, :1], both[:, :, 1:]
        else:
            cls = softmax_attention(q[:, :, :1], k, v, self.scale)  # CLS: exact, global
            if backend == "gather":
                local = gather_local(q, k, v, *grid)
            else:
                local = local_attention(q, k, v, *grid)[0]
        # Global branch: phi(K)^T V and phi(K)^T 1 once, read by every patch query.
        glob = linear_readout(self.phi(q[:, :, 1:]), *linear_context(self.phi(k), v))
        g = torch.sigmoid(self.gate).view(1, -1, 1, 1).to(q.dtype)
        if grad:
            return torch.cat([cls, torch.lerp(glob, local.to(glob.dtype), g).to(cls.dtype)], 2)
        out = torch.empty_like(q)
        out[:, :, :1] = cls
        torch.lerp(glob, local.to(glob.dtype), g, out=out[:, :, 1:])
        return out

    def weights(self, q: Tensor, k: Tensor) -> Tensor:
        self._check(q.shape[-2])
        qc, qp = q[:, :, :1], q[:, :, 1:]
        attn = gathered_weights(qp, F.pad(k, (0, 0, 0, 1)), self.idx, self.valid, self.scale)
        local = dense_rows(attn, self.idx, q.shape[-2])  # (B, H, P, N)
        g = torch.sigmoid(self.gate.float()).view(1, -1, 1, 1)
        patches = g * local + (1 - g) * linear_weights(self.phi(qp), self.phi(k))
        return torch.cat([softmax_weights(qc, k, self.scale), patches], dim=2)

    def attend_flops(self, n: int) -> int:
        h, d, p = self.num_heads, self.head_dim, n - 1
        cls = 2 * matmul_flops(h, 1, d, n)
        local = local_attention_flops(h, p, self.cfg.window, d)
        glob = linear_attention_flops(h, p, d, d, keys=n)
        return cls + local + glob
