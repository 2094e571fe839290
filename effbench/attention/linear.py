"""Linear attention maths shared by the kinds that use it (performer, hybrid's global branch,
relu_linear): phi(Q) (phi(K)^T V) / (phi(Q) phi(K)^T 1 + eps) as small pure functions
(Katharopoulos et al. 2020, "Transformers are RNNs: Fast Autoregressive Transformers with
Linear Attention").

O(N * m * d) time and O(N * m + m * d) memory for m features; nothing of size N x N is formed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from effbench.attention.base import matmul_flops, needs_grad


def linear_context(phi_k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """The key side of linear attention: phi(K)^T V (B, H, m, d) and phi(K)^T 1 (B, H, m, 1)."""
    return phi_k.transpose(-2, -1) @ v, phi_k.sum(dim=-2).unsqueeze(-1)


def linear_readout(phi_q: Tensor, context: Tensor, ksum: Tensor, *, eps: float = 0.0) -> Tensor:
    """The query side: phi(Q) context / (phi(Q) ksum + eps), (B, H, N, m) -> (B, H, N, d).
    With eps > 0 a query whose features are all zero reads a zero output, not 0 / 0.

    Eager, numerators and denominator come from one product with [context, ksum]
    (m x (d + 1)): a separate phi(Q) ksum is a batched matrix-vector product that reads phi(Q)
    again and costs more than the extra column. Compiled, the two products stay apart: inductor
    fuses phi(Q) ksum into the kernel that forms phi(Q), which the concatenation would prevent
    (timings: docs/commands.md, "One product for the linear readout").
    """
    if torch.compiler.is_compiling():
        out, den = phi_q @ context, phi_q @ ksum  # (B, H, N, d), (B, H, N, 1)
    else:
        d = context.shape[-1]
        both = phi_q @ torch.cat([context, ksum], dim=-1)  # (B, H, N, d + 1)
        out, den = both[..., :d], both[..., d:]
    if not needs_grad(phi_q, context, ksum):
        return out.div_(den.add_(eps) if eps else den)
    return out / (den + eps if eps else den)


def linear_attention(phi_q: Tensor, phi_k: Tensor, v: Tensor, *, eps: float = 0.0) -> Tensor:
    """phi(Q) (phi(K)^T V) / (phi(Q) (phi(K)^T 1) + eps): (B, H, N, m), (B, H, M, m),
    (B, H, M, d) -> (B, H, N, d). O(N m d) time; nothing of size N x N is formed.
    """
    return linear_readout(phi_q, *linear_context(phi_k, v), eps=eps)


def linear_attention_flops(h: int, n: int, m: int, d: int, *, keys: int | None = None) -> int:
    """Matrix-product FLOPs of `linear_attention` per sample: n queries, `keys` keys (default
    n), m features, head dim d, h heads (the key sum is element-wise and not counted)."""
    keys = n if keys is None else keys
    return matmul_flops(h, m, keys, d) + matmul_flops(h, n, m, 1) + matmul_flops(h, n, m, d)


def linear_weights(phi_q: Tensor, phi_k: Tensor, *, eps: float = 0.0) -> Tensor:
    """The effective weights of `linear_attention` with the same eps, row-normalised:
    (B, H, N, M). With eps > 0 the rows sum to s / (s + eps) < 1 for a row sum s."""
    w = phi_q @ phi_k.transpose(-2, -1)
    den = w.sum(dim=-1, keepdim=True)
    return w / (den + eps if eps else den)
