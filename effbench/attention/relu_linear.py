"""ReLU linear attention of EfficientViT: ReLU(Q) (ReLU(K)^T V) / (ReLU(Q) ReLU(K)^T 1 + eps)
(Cai et al. 2023, "EfficientViT: Lightweight Multi-Scale Attention for High-Resolution Dense
Prediction", ICCV).

O(N * d^2) time and O(N * d + d^2) memory per head; nothing of size N x N is formed. Computed
in float32 under autocast.

Every token, CLS included, is an ordinary query and key: EfficientViT has no CLS token, so
there is nothing of the paper's to follow and CLS gets no special path. The paper's
multi-scale aggregation (depthwise convolutions of Q, K and V over the grid, each scale a
further set of heads) is not implemented: it widens the input of W_o by one head set per
scale, and the contract shares W_o's width across every kind.
"""

from __future__ import annotations

import torch
from torch import Tensor

from effbench.attention.base import Attention, needs_grad
from effbench.attention.linear import linear_attention, linear_attention_flops, linear_weights
from effbench.attention.registry import register
from effbench.config.attention import ReluLinearConfig


def relu_features(x: Tensor) -> Tensor:
    """ReLU(x) in float32 (or wider: float64 stays float64): (B, H, N, d) -> (B, H, N, d).

    No scale: ReLU(c q) = c ReLU(q) for c > 0, so a temperature would cancel in the
    normalisation (up to eps), and EfficientViT has none.
    """
    y = x.to(torch.promote_types(x.dtype, torch.float32))
    if y is not x and not needs_grad(x):
        return y.relu_()  # a fresh upcast copy: rectify it in place
    return torch.relu(y)


def relu_linear_attention(q: Tensor, k: Tensor, v: Tensor, *, eps: float) -> Tensor:
    """ReLU(q) (ReLU(k)^T v) / (ReLU(q) ReLU(k)^T 1 + eps) in float32 (or wider), returned in
    v's dtype: (B, H, N, d) each -> (B, H, N, d).

    A query whose ReLU features are all zero (every entry <= 0), or one that meets only
    all-zero keys, reads 0 / eps = 0.
    """
    with torch.autocast(device_type=q.device.type, enabled=False):
        phi_q, phi_k = relu_features(q), relu_features(k)
        return linear_attention(phi_q, phi_k, v.to(phi_q.dtype), eps=eps).to(v.dtype)


@register("relu_linear")
class ReluLinearAttention(Attention):
    """EfficientViT's ReLU linear attention over all N tokens, eps in the normaliser."""

    # The map ReLU(Q) ReLU(K)^T / (row sum + eps) is non-negative, but its rows sum to
    # s / (s + eps) < 1 for a row sum s: close to 1 where s >> eps, yet exactly 0 for a query
    # whose ReLU features are all zero. So it is not a distribution over the keys, and there
    # is no tolerance that every row meets.
    map_row_stochastic = False
    map_row_sum_tol = None
    map_nonnegative = True
    cfg: ReluLinearConfig

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return relu_linear_attention(q, k, v, eps=self.cfg.eps)

    def weights(self, q: Tensor, k: Tensor) -> Tensor:
        with torch.autocast(device_type=q.device.type, enabled=False):
            return linear_weights(relu_features(q), relu_features(k), eps=self.cfg.eps)

    def attend_flops(self, n: int) -> int:
        # ReLU(K)^T V, ReLU(Q) (ReLU(K)^T 1) and ReLU(Q) (ReLU(K)^T V): d features per head.
        h, d = self.num_heads, self.head_dim
        return linear_attention_flops(h, n, d, d)
