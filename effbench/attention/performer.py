"""Performer / FAVOR+: softmax attention approximated with positive orthogonal random
features (Choromanski et al. 2021, "Rethinking Attention with Performers").

O(N * m * d) time and O(N * m) memory for m features. Computed in float32 under autocast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from effbench.attention.base import (
    Attention,
    exp_scale,
    exp_scaled,
    matmul_flops,
    needs_grad,
    relative_error,
    softmax_attention,
)
from effbench.attention.linear import (
    linear_attention,
    linear_attention_flops,
    linear_context,
    linear_readout,
    linear_weights,
)
from effbench.attention.registry import register
from effbench.config.attention import PerformerConfig

SOFTMAX_EPS = 1e-4
RELU_EPS = 1e-3
# Feature counts of the error curve that `effbench analyze` records (`model_diagnostics`).
CURVE_FEATURES = (16, 32, 64, 128, 256)
# Query rows per chunk in inference: their features and readout stay in cache.
QUERY_CHUNK = 1024


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


def positive_features(x: Tensor, ws_t: Tensor, *, is_query: bool, scale: float) -> Tensor:
    """FAVOR+ features phi(x) = exp(w.(s x) - |s x|^2 / 2 - c) + eps: (B, H, N, d) -> (B, H, N, m).

    `ws_t` is the projection already scaled and transposed, (s w)^T of shape (d, m): the scale
    s (d^-1/4, for temperature 1/sqrt(d)) goes into w and into the squared norm instead of
    into a pass over x. The paper's 1/sqrt(m) factor and the stabiliser c cancel in the
    normalisation of `linear_attention`, so the factor is left out; c is each query row's own
    maximum or, for keys, one maximum per (batch, head), shared by all rows. The exponent is
    formed times `exp_scale()` for `exp_scaled`, the faster exponential in each mode.
    """
    base = exp_scale()
    proj = x @ (ws_t * base)  # (B, H, N, m)
    sq = x.square().sum(dim=-1, keepdim=True) * (scale * scale / 2 * base)  # (B, H, N, 1)
    # The stabiliser only guards exp against overflow and cancels in the normalisation, so no
    # gradient flows through it (which also spares autograd the max's sparse backward).
    dims = -1 if is_query else (-2, -1)
    stab = proj.detach().amax(dim=dims, keepdim=True)
    shift = sq + stab  # (B, H, N, 1): one broadcast subtraction over the features
    if not needs_grad(x, ws_t):
        return exp_scaled(proj.sub_(shift), inplace=True).add_(SOFTMAX_EPS)
    return exp_scaled(proj - shift) + SOFTMAX_EPS


def relu_features(x: Tensor, ws_t: Tensor) -> Tensor:
    """Generalised-kernel features relu(x (s w)^T) + eps, `ws_t` = (s w)^T of shape (d, m)."""
    proj = x @ ws_t
    if not needs_grad(x, ws_t):
        return proj.relu_().add_(RELU_EPS)
    return torch.relu(proj) + RELU_EPS


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

    def _features(self, x: Tensor, *, is_query: bool) -> Tensor:
        """phi(x) in float32 (or wider) with the temperature exactly 1/sqrt(d)."""
        dtype = torch.promote_types(x.dtype, torch.float32)  # upcast half; keep float64
        s = self.head_dim**-0.25  # d^-1/4 on each side gives q.k / sqrt(d)
        ws_t = (self.features.to(dtype) * s).T  # (d, m), shared by queries and keys
        x = x.to(dtype)
        if self.cfg.kernel == "relu":
            return relu_features(x, ws_t)
        return positive_features(x, ws_t, is_query=is_query, scale=s)

    def feature_maps(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """phi(q), phi(k) in float32 (or wider) with the temperature exactly 1/sqrt(d)."""
        return self._features(q, is_query=True), self._features(k, is_query=False)

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if self.training and self.cfg.redraw_interval:
            self.calls += 1
            if int(self.calls) >= self.cfg.redraw_interval:
                self.redraw()
        with torch.autocast(device_type=q.device.type, enabled=False):
            if needs_grad(q, k, v):
                phi_q, phi_k = self.feature_maps(q, k)
                return linear_attention(phi_q, phi_k, v.to(phi_q.dtype)).to(v.dtype)
            # Inference: each query's features depend on its own row only (its stabiliser
            # is the row's maximum), so query chunks read the key side's context while their
            # features are still in cache; the same values as one pass.
            phi_k = self._features(k, is_query=False)
            context, ksum = linear_context(phi_k, v.to(phi_k.dtype))
            out = torch.empty_like(q, dtype=phi_k.dtype)
            for r0 in range(0, q.shape[-2], QUERY_CHUNK):
                rows = slice(r0, r0 + QUERY_CHUNK)
                phi_q = self._features(q[:, :, rows], is_query=True)
                out[:, :, rows] = linear_readout(phi_q, context, ksum)
            return out.to(v.dtype)

    def weights(self, q: Tensor, k: Tensor) -> Tensor:
        return linear_weights(*self.feature_maps(q, k))

    def attend_flops(self, n: int) -> int:
        h, d, m = self.num_heads, self.head_dim, self.cfg.features
        return 2 * matmul_flops(h, n, d, m) + linear_attention_flops(h, n, m, d)

    @classmethod
    def model_diagnostics(
        cls, layers: Sequence[Attention], inputs: Sequence[Tensor]
    ) -> dict[str, Any]:
        """`performer_curve`: the mean relative output error against exact attention of a
        Performer with each of CURVE_FEATURES features, on the trained layers' own Q, K and V
        (fresh features, fixed seed)."""
        kernel = layers[0].cfg.kernel
        curve = []
        for m in CURVE_FEATURES:
            errors = []
            for layer, x in zip(layers, inputs, strict=True):
                torch.manual_seed(0)
                probe = cls(
                    PerformerConfig(features=m, kernel=kernel),
                    dim=layer.dim,
                    num_heads=layer.num_heads,
                    seq_len=layer.seq_len,
                ).to(x.device)
                q, k, v = (t.float() for t in layer.qkv_heads(x))
                exact = softmax_attention(q, k, v, layer.scale)
                errors.append(relative_error(probe.attend(q, k, v), exact))
            curve.append({"features": m, "rel_error": sum(errors) / len(errors)})
        return {"performer_curve": curve}
