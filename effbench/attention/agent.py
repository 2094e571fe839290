"""Agent attention: n agent tokens pooled from the patch queries first aggregate the values
(softmax over the keys), then broadcast them back to every query (softmax over the agents),
plus a depthwise convolution of V over the patch grid (Han et al. 2024, "Agent Attention: On
the Integration of Softmax and Linear Attention", ECCV).

O(N * n * d + N * k^2 * d) time and O(N * n) memory for n agents and a k x k convolution; the
largest intermediates are (N, n) weights, never an N x N matrix.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from effbench.attention.base import MAP_ROW_CHUNK, Attention, contiguous_keys, matmul_flops
from effbench.attention.grid import grid_shape
from effbench.attention.registry import register
from effbench.config.attention import AgentConfig


def patch_grid(t: Tensor, rows: int, cols: int) -> Tensor:
    """The patch tokens of a (B, H, N, d) tensor as a (B, H*d, rows, cols) image, heads merged
    into channels (channel h*d + j is head h's feature j; CLS, token 0, left out)."""
    B, H, N, d = t.shape
    assert rows * cols == N - 1, f"{N} tokens do not fill CLS + a {rows}x{cols} grid"
    grid = t[:, :, 1:].transpose(1, 2).reshape(B, rows, cols, H * d)  # (B, rows, cols, C)
    return grid.permute(0, 3, 1, 2)  # (B, C, rows, cols), channels-last in memory


def grid_tokens(image: Tensor, heads: int) -> Tensor:
    """A (B, H*d, r, c) image back to (B, H, r*c, d) tokens, row-major."""
    B, C, r, c = image.shape
    return image.permute(0, 2, 3, 1).reshape(B, r * c, heads, C // heads).transpose(1, 2)


def agent_tokens(q: Tensor, rows: int, cols: int, agents: int) -> Tensor:
    """The agents: adaptive average pool of the patch queries' rows x cols grid to a
    sqrt(n) x sqrt(n) grid, per head and feature; the CLS query is not pooled.
    (B, H, N, d) -> (B, H, n, d), agents row-major over their grid. Where the grid has fewer
    rows or columns than the agents' grid, the pool repeats cells (bins overlap)."""
    side = math.isqrt(agents)
    assert side * side == agents, f"agents must be a square, got {agents}"
    pooled = F.adaptive_avg_pool2d(patch_grid(q, rows, cols), (side, side))
    return grid_tokens(pooled, q.shape[1])


def agent_softmaxes(q: Tensor, k: Tensor, agents_scaled: Tensor) -> tuple[Tensor, Tensor]:
    """The two softmaxes of agent attention, given the agents A already times the scale s:
    broadcast softmax(Q A^T s) (B, H, N, n) and aggregation softmax(A K^T s) (B, H, n, N)."""
    broadcast = torch.softmax(q @ agents_scaled.transpose(-2, -1), dim=-1)
    aggregation = torch.softmax(agents_scaled @ contiguous_keys(k).transpose(-2, -1), dim=-1)
    return broadcast, aggregation


@register("agent")
class AgentAttention(Attention):
    """softmax(Q A^T s) (softmax(A K^T s) V) + DWC(V), A = pool(Q's patch grid), s = d^-1/2.

    CLS: it is not pooled into the agents (they come from the patch queries alone, as in the
    authors' DeiT code), it is a key and a value like any other token in the aggregation
    softmax(A K^T s) over all N keys, and its query reads the agents like any patch query;
    the depthwise convolution (zero-padded at the grid's border, with bias, heads merged into
    channels) is added to the patch outputs only, so the CLS output is the agent broadcast
    alone. The map, softmax(Q A^T s) softmax(A K^T s), is a product of two row-stochastic
    matrices and so row-stochastic; the convolution is `skip`.

    Left out: the paper's learned agent position biases (its DeiT code adds biases sized for
    a 14 x 14 grid and 7 x 7 agents to both softmaxes); without them nothing here depends on
    the grid, so the layer runs unchanged at any resolution (its grid is taken from the token
    count of each call).
    """

    def __init__(self, cfg: AgentConfig, *, dim: int, num_heads: int, seq_len: int) -> None:
        super().__init__(cfg, dim=dim, num_heads=num_heads, seq_len=seq_len)
        self.dwc: nn.Conv2d | None = None
        if cfg.dwc_kernel:
            kk = cfg.dwc_kernel
            self.dwc = nn.Conv2d(dim, dim, kk, padding=kk // 2, groups=dim)

    def _agents(self, q: Tensor) -> Tensor:
        """The agents times the scale (n rows scaled rather than N x n logits): (B, H, n, d)."""
        rows, cols = grid_shape(int(q.shape[-2]) - 1)
        return agent_tokens(q, rows, cols, self.cfg.agents) * self.scale

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        broadcast, aggregation = agent_softmaxes(q, k, self._agents(q))
        out = broadcast @ (aggregation @ v)  # (B, H, N, d)
        if self.dwc is not None:
            out[:, :, 1:] += self._dwc(v).to(out.dtype)
        return out

    def _dwc(self, v: Tensor) -> Tensor:
        """The depthwise convolution of V's patch grid: (B, H, N, d) -> (B, H, N - 1, d)."""
        assert self.dwc is not None
        rows, cols = grid_shape(int(v.shape[-2]) - 1)
        return grid_tokens(self.dwc(patch_grid(v, rows, cols)), self.num_heads)

    def skip(self, v: Tensor) -> Tensor | None:
        """The depthwise convolution of V over the patch grid, zero on the CLS row; None when
        `dwc_kernel` is 0."""
        return None if self.dwc is None else F.pad(self._dwc(v), (0, 0, 1, 0))

    def weights(self, q: Tensor, k: Tensor) -> Tensor:
        broadcast, aggregation = agent_softmaxes(q, k, self._agents(q))  # (B, H, N, n), (n, N)
        return torch.cat([b @ aggregation for b in broadcast.split(MAP_ROW_CHUNK, dim=2)], dim=2)

    def attend_flops(self, n: int) -> int:
        """A K^T, its weights times V, Q A^T, its weights times V_A; the convolution,
        2 * P * C * k^2 for P patches (its bias is element-wise); the pool counts zero."""
        h, d, a, kk = self.num_heads, self.head_dim, self.cfg.agents, self.cfg.dwc_kernel
        agents = matmul_flops(h, a, d, n) + matmul_flops(h, a, n, d)
        broadcast = matmul_flops(h, n, d, a) + matmul_flops(h, n, a, d)
        conv = 2 * (n - 1) * self.dim * kk * kk
        return agents + broadcast + conv
