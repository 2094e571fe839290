"""Neighbourhood attention: each patch query attends to the k x k patches around it, the
window clamped at the grid's borders (it slides inward, so corner queries keep k^2 patches),
dilated by delta, plus the CLS key; the CLS query attends to every token with exact softmax.
After "Neighborhood Attention Transformer" (Hassani et al., CVPR 2023) and "Dilated
Neighborhood Attention Transformer" (Hassani & Shi 2022), with NATTEN's window semantics.

O(N * k^2 * d) time and memory, never a dense N x N matrix: off CUDA, tiles of 16 x 16 patch
queries each attend to the keys their neighbourhoods cover together in one masked SDPA call
(`effbench.attention.clamped.tiled_attention`: matrix products at the fused kernel's speed,
about (16 + k - 1)^2 keys a query instead of k^2); on CUDA one flex attention call with the
clamped block mask; `gather` gathers every query's k^2 + 1 keys and values by index
(`gather_attention`), the reference the others are tested against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from effbench.attention.base import (
    MAP_ROW_CHUNK,
    Attention,
    matmul_flops,
    needs_grad,
    softmax_attention,
    softmax_weights,
)
from effbench.attention.clamped import NEIGHBOURHOOD_TILE as TILE
from effbench.attention.clamped import (
    TileTables,
    clamped_neighbourhoods,
    clamped_taps,
    flex_clamped,
    tile_tables,
    tiled_attention,
    tiled_attention_flops,
)
from effbench.attention.grid import grid_shape
from effbench.attention.local import (
    dense_rows,
    gather_attention,
    gather_attention_flops,
    gathered_weights,
    resolve_backend,
)
from effbench.attention.registry import register
from effbench.config.attention import NeighborhoodConfig


@register("neighborhood")
class NeighborhoodAttention(Attention):
    """Patch queries: softmax over their clamped, dilated k x k neighbourhood + CLS; the CLS
    query: exact softmax over all tokens.

    Dilation delta splits the grid into delta x delta interleaved sub-grids (cells with equal
    row mod delta and col mod delta); a query's neighbourhood is the clamped k x k window of
    its own sub-grid, so it sees k^2 patches delta cells apart. Along an axis where a
    sub-grid is shorter than k, k is clamped to that sub-grid's length: the neighbourhood
    covers the whole sub-grid along it (NATTEN itself refuses k * delta > the axis length).
    Hence k >= the grid's sides with delta = 1 is exact softmax attention.

    The layer has no parameters of its own beyond the shared projections: a checkpoint
    evaluates at any resolution with the layer built for that grid.
    """

    def __init__(self, cfg: NeighborhoodConfig, *, dim: int, num_heads: int, seq_len: int) -> None:
        super().__init__(cfg, dim=dim, num_heads=num_heads, seq_len=seq_len)
        self.rows, self.cols = grid_shape(seq_len - 1)
        idx, valid = clamped_neighbourhoods(self.rows, self.cols, cfg.kernel, cfg.dilation)
        self.register_buffer("idx", idx, persistent=False)  # (P, taps), CLS last
        self.register_buffer("valid", valid, persistent=False)
        # Pad slots exist only where a sub-grid is shorter than the kernel.
        self.padded = not bool(valid.all())
        tables = tile_tables(self.rows, self.cols, cfg.kernel, cfg.dilation, TILE)
        for name in ("queries", "keys", "mask", "order"):
            self.register_buffer(f"tile_{name}", getattr(tables, name), persistent=False)

    def _check(self, n: int) -> None:
        assert n == self.seq_len, (
            f"neighborhood attention is built for a {self.rows}x{self.cols} grid "
            f"({self.seq_len} tokens) but got {n} tokens; build the layer for this sequence "
            "length"
        )

    def local_backend(self, device: torch.device, *, grad: bool) -> str:
        """The backend `attend` uses on this device: `flex` or `gather` (see
        `effbench.attention.local.resolve_backend`)."""
        return resolve_backend(self.cfg.local_backend, device, grad=grad, portable="tiles")

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        self._check(q.shape[-2])
        backend = self.local_backend(q.device, grad=needs_grad(q, k, v))
        if backend == "flex":
            grid = (self.rows, self.cols, self.cfg.kernel, self.cfg.dilation)
            return flex_clamped(q, k, v, *grid, self.scale)  # the CLS row is global, exact
        cls = softmax_attention(q[:, :, :1], k, v, self.scale)  # (B, H, 1, d)
        if backend == "tiles":
            local = tiled_attention(q, k, v, self._tables(), self.scale)  # (B, H, P, d)
        else:
            valid = self.valid if self.padded else None
            local = gather_attention(q, k, v, self.idx, valid, self.scale)
        return torch.cat([cls, local.to(cls.dtype)], dim=2)

    def weights(self, q: Tensor, k: Tensor) -> Tensor:
        self._check(q.shape[-2])
        B, H, N, d = q.shape
        kt = F.pad(k, (0, 0, 0, 1))  # the pad slot: index N
        valid = self.valid if self.padded else None
        rows = [softmax_weights(q[:, :, :1], k, self.scale)]
        for p0 in range(0, N - 1, MAP_ROW_CHUNK):
            idx = self.idx[p0 : p0 + MAP_ROW_CHUNK]
            mask = None if valid is None else valid[p0 : p0 + MAP_ROW_CHUNK]
            qc = q[:, :, 1 + p0 : 1 + p0 + idx.shape[0]]
            attn = gathered_weights(qc, kt, idx, mask, self.scale)  # (B, H, c, taps)
            rows.append(dense_rows(attn, idx, N).to(q.dtype))
        return torch.cat(rows, dim=2)

    def _tables(self) -> TileTables:
        """The tile tables on this layer's device (buffers, so that they move with it)."""
        return TileTables(self.tile_queries, self.tile_keys, self.tile_mask, self.tile_order)

    def attend_flops(self, n: int) -> int:
        """What runs where FLOPs are counted: the gathered windows with `gather`, else the
        tiles (flex attention's kernel is not counted; its maths is the same)."""
        h, d, p = self.num_heads, self.head_dim, n - 1
        cls = 2 * matmul_flops(h, 1, d, n)
        grid = (*grid_shape(p), self.cfg.kernel, self.cfg.dilation)
        if self.cfg.local_backend == "gather":
            return cls + gather_attention_flops(h, p, clamped_taps(*grid), d)
        tables = self._tables() if n == self.seq_len else tile_tables(*grid, TILE)
        return cls + tiled_attention_flops(h, tables, d)
