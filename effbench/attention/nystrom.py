"""Nystromformer: softmax attention through m landmarks and an iterative pseudo-inverse
(Xiong et al. 2021, "Nystromformer: A Nystrom-Based Algorithm for Approximating Self-Attention").

O(N * m * d + m^3) time and O(N * m) memory for m landmarks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from effbench.attention.base import MAP_ROW_CHUNK, Attention, contiguous_keys, matmul_flops
from effbench.attention.registry import register
from effbench.config.attention import NystromConfig


def segment_means(x: Tensor, m: int) -> Tensor:
    """Means of m contiguous segments along dim -2: (..., N, d) -> (..., m, d).

    When N is not a multiple of m, the first N % m segments hold one token more; no
    padding enters any mean.
    """
    n = int(x.shape[-2])  # int() also under jit tracing, where shapes are tensors
    assert m <= n, f"{m} landmarks exceed {n} tokens"
    s, r = divmod(n, m)
    lead = x.shape[:-2]
    if not r:
        out = x.unflatten(-2, (m, s)).mean(dim=-2)
    else:
        # split, not slicing: its backward concatenates the two gradients, where each
        # slice's backward would zero-fill a gradient the size of x.
        longer, shorter = x.split([r * (s + 1), (m - r) * s], dim=-2)
        out = torch.cat(
            [
                longer.unflatten(-2, (r, s + 1)).mean(dim=-2),
                shorter.unflatten(-2, (m - r, s)).mean(dim=-2),
            ],
            dim=-2,
        )
    assert out.shape == (*lead, m, x.shape[-1])
    return out


def iterative_pinv(a: Tensor, iterations: int) -> Tensor:
    """Newton-Schulz pseudo-inverse of each (m, m) matrix in a (..., m, m) batch.

    Each matrix starts from its own A^T / (||A||_1 ||A||_inf), so that one badly scaled
    matrix in the batch does not slow the convergence of the others.
    """
    absa = a.abs()
    norm1 = absa.sum(dim=-2).amax(dim=-1)  # max column sum
    norminf = absa.sum(dim=-1).amax(dim=-1)  # max row sum
    z = a.transpose(-2, -1) / (norm1 * norminf)[..., None, None]
    # Z <- 1/4 Z (13 I - AZ (15 I - AZ (7 I - AZ))), each step one fused baddbmm:
    # beta * X + alpha * (X @ Y) with X @ (c I - Y) = c X - X Y.
    lead, m = a.shape[:-2], a.shape[-1]
    a, z = a.reshape(-1, m, m), z.reshape(-1, m, m)
    for _ in range(iterations):
        az = a @ z
        t = torch.baddbmm(az, az, az, beta=7, alpha=-1)
        t = torch.baddbmm(az, az, t, beta=15, alpha=-1)
        z = torch.baddbmm(z, z, t, beta=13 / 4, alpha=-1 / 4)
    z = z.view(*lead, m, m)
    return z


def pinv_residual(a: Tensor, z: Tensor) -> float:
    """||A Z - I||_F / ||I||_F for a (..., m, m) batch and its pseudo-inverses, as one norm
    over all the batch's matrices."""
    eye = torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)
    return float((a @ z - eye).norm() / eye.expand_as(a).norm())


def ginv_residual(a: Tensor, z: Tensor) -> float:
    """||A Z A - A||_F / ||A||_F over a (..., m, m) batch: 0 when Z is a generalised inverse of
    A (A Z A = A), as the Moore-Penrose pseudo-inverse is."""
    return float((a @ z @ a - a).norm() / a.norm())


@register("nystrom")
class NystromAttention(Attention):
    """F pinv(A) B V with F = softmax(Q K~^T), A = softmax(Q~ K~^T), B = softmax(Q~ K^T).

    With `conv_kernel` > 0, a depthwise convolution of V along the sequence is added to the
    output (the paper's skip); `attention_map` shows the attention part alone.
    """

    # F pinv(A) B may hold negative entries by construction: not a distribution. Its rows sum
    # to 1 as far as Z inverts A on the ones vector (F, A and B are row-stochastic), which
    # an iterative pseudo-inverse does only approximately.
    map_row_stochastic = False
    map_row_sum_tol = 1e-2
    map_nonnegative = False

    def __init__(self, cfg: NystromConfig, *, dim: int, num_heads: int, seq_len: int) -> None:
        super().__init__(cfg, dim=dim, num_heads=num_heads, seq_len=seq_len)
        self.conv: nn.Conv2d | None = None
        if cfg.conv_kernel:
            kk = cfg.conv_kernel
            self.conv = nn.Conv2d(
                num_heads, num_heads, (kk, 1), padding=(kk // 2, 0), groups=num_heads, bias=False
            )

    def kernels(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """F (B, H, N, m), A (B, H, m, m), B (B, H, m, N): the three softmax kernels."""
        m = self.cfg.landmarks
        k = contiguous_keys(k)  # read transposed by Q~ K^T
        ql, kl = segment_means(q, m), segment_means(k, m)  # (B, H, m, d)
        qls, kls = ql * self.scale, kl * self.scale  # scale m landmark rows, not N x m logits
        f = torch.softmax(q @ kls.transpose(-2, -1), dim=-1)
        a = torch.softmax(qls @ kl.transpose(-2, -1), dim=-1)
        b = torch.softmax(qls @ k.transpose(-2, -1), dim=-1)
        return f, a, b

    def _factors(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """F (B, H, N, m), pinv(A) (B, H, m, m), B (B, H, m, N)."""
        f, a, b = self.kernels(q, k)
        return f, iterative_pinv(a, self.cfg.pinv_iterations), b

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        f, z, b = self._factors(q, k)
        out = f @ (z @ (b @ v))
        skip = self.skip(v)
        return out if skip is None else out + skip

    def skip(self, v: Tensor) -> Tensor | None:
        """The depthwise convolution of V along the sequence, when `conv_kernel` is set."""
        return None if self.conv is None else self.conv(v)

    def weights(self, q: Tensor, k: Tensor) -> Tensor:
        f, z, b = self._factors(q, k)
        zb = z @ b  # (B, H, m, N)
        return torch.cat([fc @ zb for fc in f.split(MAP_ROW_CHUNK, dim=2)], dim=2)

    def diagnostics(self, q: Tensor, k: Tensor, v: Tensor) -> dict[str, Any]:
        """The iterative pseudo-inverse Z of the landmark kernel A, as one norm over batch and
        heads: `pinv_residual` ||A Z - I|| / ||I|| (how far Z is from inverting A: ~0.9 is
        usual with the paper's initialisation and 6 iterations, and harmless) and
        `ginv_residual` ||A Z A - A|| / ||A|| (how far it is from a generalised inverse, which
        is what F Z B ~ F A^+ B needs)."""
        _, a, _ = self.kernels(q, k)
        z = iterative_pinv(a, self.cfg.pinv_iterations)
        return {"pinv_residual": pinv_residual(a, z), "ginv_residual": ginv_residual(a, z)}

    def attend_flops(self, n: int) -> int:
        h, d, m, it = self.num_heads, self.head_dim, self.cfg.landmarks, self.cfg.pinv_iterations
        factors = matmul_flops(h, n, d, m) + matmul_flops(h, m, d, m) + matmul_flops(h, m, d, n)
        pinv = 4 * it * matmul_flops(h, m, m, m)
        apply = matmul_flops(h, m, n, d) + matmul_flops(h, m, m, d) + matmul_flops(h, n, m, d)
        conv = matmul_flops(h, n, d, self.cfg.conv_kernel)
        return factors + pinv + apply + conv
