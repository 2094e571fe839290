"""The Attention contract shared by every mechanism, its capability hooks (`adapt_state`,
`diagnostics`, `model_diagnostics`), and the exact softmax maths they are measured against.

Every mechanism owns the same fused Q/K/V projection (W_qkv) and output projection (W_o) and
differs only in `attend`, the step between them. FLOPs are counted as 2 per multiply-add of
matrix products (linear layers, attention products, convolutions), which is also what fvcore
and FlopCounterMode count (`attend_flops`). Element-wise work such as softmax or exp is not
counted, except where it is the mechanism's main cost (Hydra's per-feature products):
`elementwise_flops` counts that work, 2 per multiply-add and 1 per multiply, it is part of
`flops()`, and the counters, which cannot see it, are checked against the rest.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

# Row chunk of `attention_map`'s intermediates: keeps them near the size of the map itself.
MAP_ROW_CHUNK = 1024
LOG2E = math.log2(math.e)


def softmax_weights(q: Tensor, k: Tensor, scale: float) -> Tensor:
    """Exact weights softmax(q k^T * scale): (B, H, N, d), (B, H, M, d) -> (B, H, N, M)."""
    return torch.softmax((q @ k.transpose(-2, -1)) * scale, dim=-1)


def softmax_attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """Exact softmax attention with the weights materialised: -> (B, H, N, d)."""
    return softmax_weights(q, k, scale) @ v


def exp_scale() -> float:
    """The factor an exponent is multiplied by before `exp_scaled` (fold it into a product
    formed anyway). Eager: log2 e, for exp2, which torch runs much faster than its exp on the
    CPU (softmax has a fast exp of its own) and which agrees with it to 1e-6 relative for
    exponents in [-20, 5]. Under torch.compile: 1, for exp, whose generated code is the
    faster there. The timings behind both choices: docs/commands.md ("exp as exp2")."""
    return 1.0 if torch.compiler.is_compiling() else LOG2E


def exp_scaled(z: Tensor, *, inplace: bool = False) -> Tensor:
    """e^x for an exponent z = x * `exp_scale()`; in place on z when `inplace`."""
    if torch.compiler.is_compiling():
        return z.exp_() if inplace else torch.exp(z)
    return z.exp2_() if inplace else torch.exp2(z)


def contiguous_keys(k: Tensor) -> Tensor:
    """K as a contiguous tensor, for a product that reads it transposed (X K^T with few rows
    in X: Nystrom's landmarks, agent tokens): from the strided view `qkv_heads` returns, such
    a product is slower on the CPU than the copy and the product together (timings:
    docs/commands.md, "A contiguous K for Nystrom")."""
    return k.contiguous()


def split_heads(t: Tensor, heads: int) -> Tensor:
    """(B, H, N, d) features regrouped into `heads` heads, (B, heads, N, H * d / heads), with
    feature h * d + j in the same place: exact attention over another head count (the
    backbone's) from a layer that splits its features its own way (hydra's one per head)."""
    B, H, N, d = t.shape
    return t.transpose(1, 2).reshape(B, N, heads, H * d // heads).transpose(1, 2)


def needs_grad(*tensors: Tensor) -> bool:
    """Whether autograd records ops on these tensors. When it does not (inference, no_grad),
    mechanisms may work in place or in chunks; the results are the same either way."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def relative_error(approx: Tensor, exact: Tensor) -> float:
    """||approx - exact||_F / ||exact||_F over the whole tensor."""
    return float((approx - exact).norm() / exact.norm().clamp_min(1e-12))


def matmul_flops(*dims: int) -> int:
    """FLOPs of a matrix product with these sizes (batch..., n, k, m): 2 per multiply-add."""
    return 2 * math.prod(dims)


class Attention(nn.Module, metaclass=abc.ABCMeta):
    """Base class: (B, N, C) -> (B, N, C) with a shared W_qkv and W_o.

    A mechanism defines `attend`, `weights` and `attend_flops` (abstract here, so that
    `register` refuses a class that lacks one when it is defined).

    Args:
        cfg: the mechanism's frozen config.
        dim: embedding width C.
        num_heads: heads H; C must divide by H.
        seq_len: the token count N the layer is built for (CLS included).
    """

    kind: ClassVar[str]
    # Every mechanism's map is what `attend` applies to V (weights(q, k) @ v + skip(v) ==
    # attend(q, k, v)); only some of those maps are distributions over the keys.
    # True where every row of the map is non-negative and sums to 1 (within the tolerance):
    # then total-variation distance to exact attention means something.
    map_row_stochastic: ClassVar[bool] = True
    # How closely the map's rows sum to 1 (iterative pseudo-inverses widen it); None where
    # they need not sum to 1 at all.
    map_row_sum_tol: ClassVar[float | None] = 1e-4
    # False where the map may hold negative weights by construction.
    map_nonnegative: ClassVar[bool] = True
    # False for a mechanism with no (B, H, N, N) map of what it applies to V (its `weights`
    # then raises NotImplementedError): `analyze` records its output fidelity without maps,
    # and the report says "no map" for it.
    has_map: ClassVar[bool] = True

    def __init__(self, cfg: Any, *, dim: int, num_heads: int, seq_len: int) -> None:
        super().__init__()
        assert dim % num_heads == 0, f"dim {dim} must be divisible by num_heads {num_heads}"
        assert seq_len >= 2, f"seq_len must be >= 2 (CLS + one patch), got {seq_len}"
        self.cfg = cfg
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.seq_len = seq_len
        self.scale = self.head_dim**-0.5
        # The layer's block in its model (the ViT sets it; 0 for a layer on its own): kinds
        # that alternate from block to block (window's shifted windows) read it.
        self.block_index = 0
        self.qkv = nn.Linear(dim, 3 * dim, bias=cfg.qkv_bias)
        self.proj = nn.Linear(dim, dim)

    # -- the shared projections ---------------------------------------------------------
    def qkv_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, N, C) -> q, k, v each (B, H, N, d)."""
        B, N, C = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim)
        # unbind along the q/k/v axis of the Linear's own layout: its backward stacks the
        # three gradients straight into that layout, one copy, no zero-filled index gradients.
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
        return q, k, v

    def merge_heads(self, o: Tensor) -> Tensor:
        """(B, H, N, d) -> output projection -> (B, N, C)."""
        B, H, N, d = o.shape
        return self.proj(o.transpose(1, 2).reshape(B, N, H * d))

    def projection_state(self) -> dict[str, Tensor]:
        """W_qkv and W_o in the fused layout shared by every mechanism."""
        return {k: v for k, v in self.state_dict().items() if k.split(".")[0] in ("qkv", "proj")}

    def load_projection_state(self, state: dict[str, Tensor]) -> None:
        """Copy W_qkv and W_o (fused layout) from another mechanism."""
        own = self.projection_state()
        missing = set(own) - set(state)
        assert not missing, f"projection state lacks {sorted(missing)}"
        self.load_state_dict({**self.state_dict(), **{k: state[k] for k in own}})

    # -- the contract -------------------------------------------------------------------
    def forward(
        self, x: Tensor, log_size: Tensor | None = None, *, keys: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """(B, N, C) -> (B, N, C). Over merged tokens (token merging), `log_size` (B, N) is
        each token's log size for proportional attention (`attend_sized`); `keys` returns
        the keys (B, H, N, d) too, which the merging matches tokens on."""
        q, k, v = self.qkv_heads(x)
        o = self.attend(q, k, v) if log_size is None else self.attend_sized(q, k, v, log_size)
        out = self.merge_heads(o)
        return (out, k) if keys else out

    @abc.abstractmethod
    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """The mechanism itself: q, k, v (B, H, N, d) -> (B, H, N, d)."""

    def attend_sized(self, q: Tensor, k: Tensor, v: Tensor, log_size: Tensor) -> Tensor:
        """`attend` over merged tokens with proportional attention: key t counts as the
        exp(log_size[:, t]) tokens it holds, as if it were repeated that often. Only kinds
        whose config says `token_sizes` have it."""
        raise NotImplementedError(f"{self.kind} does not attend over merged tokens")

    @abc.abstractmethod
    def weights(self, q: Tensor, k: Tensor) -> Tensor:
        """Effective (B, H, N, N) weights that `attend` applies to v."""

    def skip(self, v: Tensor) -> Tensor | None:
        """The part of `attend`'s output that bypasses the map (a residual on V), or None:
        attend(q, k, v) == weights(q, k) @ v + skip(v)."""
        return None

    @torch.no_grad()
    def attention_map(self, x: Tensor) -> Tensor:
        """The weights `attend` applies to V, (B, H, N, N) in float32: row-stochastic only
        where `map_row_stochastic` says so."""
        q, k, _ = self.qkv_heads(x)
        return self.weights(q.float(), k.float())

    @torch.no_grad()
    def exact_map(self, x: Tensor, heads: int | None = None) -> Tensor:
        """Exact softmax weights from this layer's own Q and K, row-chunked, split into
        `heads` heads (default: the layer's own): (B, heads, N, N)."""
        q, k, _ = self.qkv_heads(x)
        if heads is not None and heads != self.num_heads:
            q, k = split_heads(q, heads), split_heads(k, heads)
        q, k = q.float(), k.float()
        scale = q.shape[-1] ** -0.5
        return torch.cat(
            [softmax_weights(qc, k, scale) for qc in q.split(MAP_ROW_CHUNK, dim=2)], dim=2
        )

    def flops(self, seq_len: int | None = None) -> int:
        """Analytic forward FLOPs per sample (2 per multiply-add), projections included, and
        the element-wise work a mechanism counts (`elementwise_flops`)."""
        n = seq_len or self.seq_len
        return self.projection_flops(n) + self.attend_flops(n) + self.elementwise_flops(n)

    def elementwise_flops(self, n: int) -> int:
        """FLOPs of element-wise work that is the mechanism's main cost, per sample for n
        tokens (2 per multiply-add, 1 per multiply); FLOP counters do not see it. Default:
        none, as for every kind whose main cost is matrix products."""
        return 0

    def projection_flops(self, n: int) -> int:
        """FLOPs of W_qkv and W_o per sample for n tokens."""
        return matmul_flops(n, self.dim, 4 * self.dim)

    @abc.abstractmethod
    def attend_flops(self, n: int) -> int:
        """Analytic FLOPs of `attend` per sample for n tokens."""

    # -- capability hooks ---------------------------------------------------------------
    def adapt_state(
        self, state: dict[str, Tensor], *, trained_grid: tuple[int, int], grid: tuple[int, int]
    ) -> dict[str, Tensor]:
        """This layer's own weights (keys relative to the layer), trained on a
        `trained_grid` patch grid, made to fit this layer, built for `grid`. Default: kept
        as they are (the shared projections do not depend on the token count)."""
        return dict(state)

    def diagnostics(self, q: Tensor, k: Tensor, v: Tensor) -> dict[str, Any]:
        """Mechanism-specific fidelity figures of this layer on its own float32 q, k, v
        (B, H, N, d): extra fields of its `results.LayerFidelity`. Default: none."""
        return {}

    @classmethod
    def model_diagnostics(
        cls, layers: Sequence[Attention], inputs: Sequence[Tensor]
    ) -> dict[str, Any]:
        """Mechanism-specific figures over a model's attention layers of this kind, each
        beside its (B, N, C) input: extra fields of the `results.AnalyzeRecord`. Default:
        none."""
        return {}

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.cfg.model_dump().items() if k != "kind")
        shape = f"dim={self.dim}, heads={self.num_heads}, seq_len={self.seq_len}"
        return f"kind={self.kind}, {shape}, {opts}"


class ExactAttention(Attention):
    """Exact softmax attention with the (N, N) weights materialised: O(N^2) time and memory."""

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return softmax_attention(q, k, v, self.scale)

    def attend_sized(self, q: Tensor, k: Tensor, v: Tensor, log_size: Tensor) -> Tensor:
        # softmax(q k^T * scale + log s): a key of size s weighs as s copies of itself
        logits = (q @ k.transpose(-2, -1)) * self.scale + log_size[:, None, None, :]
        return torch.softmax(logits, dim=-1) @ v

    def weights(self, q: Tensor, k: Tensor) -> Tensor:
        return softmax_weights(q, k, self.scale)

    def attend_flops(self, n: int) -> int:
        return 2 * matmul_flops(self.num_heads, n, self.head_dim, n)
