"""The token layout on a patch grid, [CLS, row-major gh x gw patches]: the grid a number of
patches is laid out on (`grid_shape`), and resizing a table indexed by those tokens to
another grid (position embeddings, sequence projections)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def grid_shape(patches: int) -> tuple[int, int]:
    """The most square (rows, cols) grid holding exactly `patches` cells."""
    rows = max(r for r in range(1, math.isqrt(patches) + 1) if patches % r == 0)
    return rows, patches // rows


def resize_token_grid(
    table: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]
) -> Tensor:
    """Bicubic resize of a (1, 1 + gh*gw, C) token table to another grid; the CLS entry is
    kept. Returns `table` itself when the grids are equal."""
    if old_grid == new_grid:
        return table
    cls, grid = table[:, :1], table[:, 1:]
    C = table.shape[-1]
    grid = grid.reshape(1, *old_grid, C).permute(0, 3, 1, 2)  # (1, C, gh, gw)
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], C)
    return torch.cat([cls, grid], dim=1)
