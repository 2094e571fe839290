"""Hydra attention (Bolya et al. 2022, "Hydra Attention: Efficient Attention with Many Heads",
ECCV Workshops): as many heads as features, each head a linear attention of one feature under
a cosine-similarity kernel, phi(x) = x / ||x|| over each token's whole feature vector:

    out = phi(Q) * sum_t (phi(K)_t * V_t)        (element-wise over the C features)

O(N * C) time and memory, nothing of size N x N, no softmax and no normaliser. Its true form
has one head per feature (`heads` unset: the model's attention splits its C features into C
heads of one); with fewer heads (`heads = H`) each head is the linear attention
phi(Q)_h (phi(K)_h^T V_h) of its d = C / H features, the multi-head form the paper compares.

Its map is honest and per head: head h applies phi(Q)_h phi(K)_h^T to V_h, a signed
(B, H, N, N) map that is rank one per feature in the true form; its rows need not sum to 1.
Computed in float32 under autocast (the normalisation squares every feature).

FLOPs: the sum over tokens, phi(K)^T V, is a matrix product and counted as one; with one
feature per head the rest is element-wise, and is the mechanism's main cost beside it: the
norms of Q and K (a multiply-add per feature), the scaling by 1 / norm and the product of
phi(Q) with that sum (a multiply per feature). `elementwise_flops` counts them, the FLOP
counters cannot see them, and the three-way check compares the counters with the rest.
"""

from __future__ import annotations

import torch
from torch import Tensor

from effbench.attention.base import Attention, matmul_flops
from effbench.attention.registry import register
from effbench.config.attention import HydraConfig

# Below this norm a token's features are taken as zero (its output is then zero).
EPS = 1e-12


def cosine_features(x: Tensor) -> Tensor:
    """x / ||x|| over each token's whole feature vector (every head's features), in float32
    or wider: (B, H, N, d) -> (B, H, N, d)."""
    y = x.to(torch.promote_types(x.dtype, torch.float32))
    norm = y.square().sum(dim=(1, 3), keepdim=True).sqrt().clamp_min(EPS)
    return y / norm


def hydra_attention(q: Tensor, k: Tensor, v: Tensor, size: Tensor | None = None) -> Tensor:
    """phi(Q)_h (phi(K)_h^T V_h) per head, in float32, returned in v's dtype: (B, H, N, d)
    each -> (B, H, N, d). With d = 1 the readout is the element-wise product of the paper.
    `size` (B, N): each key's token count over merged tokens, its weight in the sum."""
    with torch.autocast(device_type=q.device.type, enabled=False):
        phi_q, phi_k = cosine_features(q), cosine_features(k)
        if size is not None:
            phi_k = phi_k * size[:, None, :, None].to(phi_k.dtype)
        context = torch.einsum("bhnd,bhne->bhde", phi_k, v.to(phi_k.dtype))  # (B, H, d, d)
        out = phi_q * context if phi_q.shape[-1] == 1 else phi_q @ context
        return out.to(v.dtype)


@register("hydra")
class HydraAttention(Attention):
    """Hydra attention: one head per feature by default, cosine-similarity kernel."""

    # phi(Q) phi(K)^T: cosine similarities of the normalised features, signed, and no
    # normaliser makes its rows sum to 1.
    map_row_stochastic = False
    map_row_sum_tol = None
    map_nonnegative = False
    cfg: HydraConfig

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return hydra_attention(q, k, v)

    def attend_sized(self, q: Tensor, k: Tensor, v: Tensor, log_size: Tensor) -> Tensor:
        # a sum over keys: a key of size s is s copies of itself
        return hydra_attention(q, k, v, log_size.exp())

    def weights(self, q: Tensor, k: Tensor) -> Tensor:
        with torch.autocast(device_type=q.device.type, enabled=False):
            return cosine_features(q) @ cosine_features(k).transpose(-2, -1)

    def attend_flops(self, n: int) -> int:
        # phi(K)^T V per head, and phi(Q) times it where that is a matrix product (d > 1).
        h, d = self.num_heads, self.head_dim
        readout = matmul_flops(h, n, d, d) if d > 1 else 0
        return matmul_flops(h, d, n, d) + readout

    def elementwise_flops(self, n: int) -> int:
        # Norms of Q and K: a multiply-add per feature (2 FLOPs each); scaling both by
        # 1 / norm: a multiply per feature; with one feature per head, phi(Q) * context: a
        # multiply per feature.
        c = self.dim
        return 2 * (2 * n * c) + 2 * (n * c) + (n * c if self.head_dim == 1 else 0)
