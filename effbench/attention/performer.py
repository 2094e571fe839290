"""Performer / FAVOR+: softmax attention approximated with positive orthogonal random
features (Choromanski et al. 2021, "Rethinking Attention with Performers").

O(N * m * d) time and O(N * m) memory for m features. Computed in float32 under autocast.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from effbench.attention import register
from effbench.attention.base import Attention, matmul_flops
from effbench.attention.configs import PerformerConfig

SOFTMAX_EPS = 1e-4
RELU_EPS = 1e-3


def orthogonal_features(m: int, d: int, *, device: torch.device | None = None) -> Tensor:
    """(m, d) Gaussian-like projection rows, orthogonal within each block of d rows.

    Each row is rescaled by the norm of an independent Gaussian d-vector, so that rows have
    the marginal distribution of Gaussian vectors (the estimator stays unbiased).
    """
    blocks = []
    for _ in range(math.ceil(m / d)):
        q, r = torch.linalg.qr(torch.randn(d, d, device=device))
        # A bare QR factor is not Haar: LAPACK's sign convention makes column j lean towards
        # -e_j. Flipping columns by the signs of R's diagonal makes it Haar (Mezzadri 2007).
        q = q * torch.where(r.diagonal() < 0, -1.0, 1.0)
        blocks.append(q.T)
    w = torch.cat(blocks)[:m]
    norms = torch.randn(m, d, device=device).norm(dim=1, keepdim=True)
    return w * norms


def positive_features(x: Tensor, w: Tensor, *, is_query: bool) -> Tensor:
    """FAVOR+ features phi(x) = exp(w x - |x|^2 / 2 - c) / sqrt(m), x pre-scaled by d^-1/4.

    The stabiliser c is each query row's own maximum (it cancels in that row's normalisation)
    or, for keys, one maximum per (batch, head) (it cancels across all rows).
    """
    proj = x @ w.T  # (B, H, N, m)
    sq = x.square().sum(dim=-1, keepdim=True) / 2
    if is_query:
        stab = proj.amax(dim=-1, keepdim=True)
    else:
        stab = proj.amax(dim=(-2, -1), keepdim=True)
    return (torch.exp(proj - sq - stab) + SOFTMAX_EPS) * w.shape[0] ** -0.5


def relu_features(x: Tensor, w: Tensor) -> Tensor:
    """Generalised-kernel features relu(w x) + eps."""
    return torch.relu(x @ w.T) + RELU_EPS


def linear_attention(phi_q: Tensor, phi_k: Tensor, v: Tensor) -> Tensor:
    """phi(Q) (phi(K)^T V) normalised by phi(Q) (phi(K)^T 1): (B, H, N, m) x3 -> (B, H, N, d)."""
    v1 = torch.cat([v, v.new_ones(v.shape[:-1]).unsqueeze(-1)], dim=-1)  # (B, H, N, d+1)
    out = phi_q @ (phi_k.transpose(-2, -1) @ v1)  # (B, H, N, d+1)
    return out[..., :-1] / out[..., -1:]


def linear_weights(phi_q: Tensor, phi_k: Tensor) -> Tensor:
    """The effective weights of `linear_attention`, row-normalised: (B, H, N, N)."""
    w = phi_q @ phi_k.transpose(-2, -1)
    return w / w.sum(dim=-1, keepdim=True)


@register("performer")
class PerformerAttention(Attention):
    """FAVOR+ with `features` random features, redrawn every `redraw_interval` training calls."""

    def __init__(self, cfg: PerformerConfig, *, dim: int, num_heads: int, seq_len: int) -> None:
        super().__init__(cfg, dim=dim, num_heads=num_heads, seq_len=seq_len)
        self.register_buffer("features", orthogonal_features(cfg.features, self.head_dim))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def redraw(self) -> None:
        self.features.copy_(orthogonal_features(*self.features.shape, device=self.features.device))
        self.calls.zero_()

    def feature_maps(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """phi(q), phi(k) in float32 (or wider) with the temperature exactly 1/sqrt(d)."""
        dtype = torch.promote_types(q.dtype, torch.float32)  # upcast half; keep float64
        w = self.features.to(dtype)
        s = self.head_dim**-0.25  # d^-1/4 on each side gives q.k / sqrt(d)
        q, k = q.to(dtype) * s, k.to(dtype) * s
        if self.cfg.kernel == "relu":
            return relu_features(q, w), relu_features(k, w)
        return positive_features(q, w, is_query=True), positive_features(k, w, is_query=False)

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if self.training and self.cfg.redraw_interval:
            self.calls += 1
            if int(self.calls) >= self.cfg.redraw_interval:
                self.redraw()
        with torch.autocast(device_type=q.device.type, enabled=False):
            phi_q, phi_k = self.feature_maps(q, k)
            return linear_attention(phi_q, phi_k, v.to(phi_q.dtype)).to(v.dtype)

    def weights(self, q: Tensor, k: Tensor) -> Tensor:
        return linear_weights(*self.feature_maps(q, k))

    def attend_flops(self, n: int) -> int:
        h, d, m = self.num_heads, self.head_dim, self.cfg.features
        return 2 * matmul_flops(h, n, d, m) + 2 * matmul_flops(h, m, n, d + 1)
