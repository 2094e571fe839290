"""Window attention: softmax within non-overlapping M x M windows of the patch grid, the
windows shifted by M // 2 in odd-numbered blocks, plus a global CLS token. After "Swin
Transformer: Hierarchical Vision Transformer using Shifted Windows" (Liu et al., ICCV 2021).

O(N * M^2 * d) time and memory: one `scaled_dot_product_attention` call over the B * nW
windows (each M^2 patch queries against its M^2 patches + CLS), never an N x N matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from effbench.attention.base import MAP_ROW_CHUNK, Attention, matmul_flops
from effbench.attention.grid import grid_shape
from effbench.attention.registry import register
from effbench.config.attention import WindowConfig


@dataclass(frozen=True)
class WindowPlan:
    """How a rows x cols patch grid is cut into windows.

    Each axis's window side is M clamped to the grid's side (Swin's rule when the window
    covers the resolution); an axis is shifted by M // 2 only where M is shorter than it.
    The grid is zero-padded at the end of each axis to whole windows, then rolled by -shift.
    """

    rows: int
    cols: int
    win_rows: int
    win_cols: int
    shift_rows: int
    shift_cols: int

    @property
    def padded_rows(self) -> int:
        return -(-self.rows // self.win_rows) * self.win_rows

    @property
    def padded_cols(self) -> int:
        return -(-self.cols // self.win_cols) * self.win_cols

    @property
    def windows(self) -> int:
        """nW, windows per sample (padded windows included)."""
        return (self.padded_rows // self.win_rows) * (self.padded_cols // self.win_cols)

    @property
    def area(self) -> int:
        """T, cells per window."""
        return self.win_rows * self.win_cols

    @property
    def padded(self) -> bool:
        return (self.padded_rows, self.padded_cols) != (self.rows, self.cols)

    @property
    def shifted(self) -> bool:
        return bool(self.shift_rows or self.shift_cols)


def window_plan(rows: int, cols: int, window: int, *, shifted: bool) -> WindowPlan:
    """The windows of a rows x cols grid for window side `window`, shifted or not."""
    win_rows, win_cols = min(window, rows), min(window, cols)
    shift_rows = window // 2 if shifted and window < rows else 0
    shift_cols = window // 2 if shifted and window < cols else 0
    return WindowPlan(rows, cols, win_rows, win_cols, shift_rows, shift_cols)


def partition(t: Tensor, plan: WindowPlan) -> Tensor:
    """(B, H, rows, cols, d) grid -> (B * nW, H, T, d) windows: zero-padded to whole
    windows, rolled by -shift, windows and the cells within each in row-major order."""
    B, H, rows, cols, d = t.shape
    pr, pc = plan.padded_rows, plan.padded_cols
    if plan.padded:
        t = F.pad(t, (0, 0, 0, pc - cols, 0, pr - rows))
    if plan.shifted:
        t = torch.roll(t, (-plan.shift_rows, -plan.shift_cols), dims=(2, 3))
    wr, wc = plan.win_rows, plan.win_cols
    t = t.reshape(B, H, pr // wr, wr, pc // wc, wc, d).permute(0, 2, 4, 1, 3, 5, 6)
    return t.reshape(B * plan.windows, H, plan.area, d)


def merge(o: Tensor, plan: WindowPlan) -> Tensor:
    """Inverse of `partition`: (B * nW, H, T, d) -> (B, H, rows, cols, d), the padding
    cells dropped."""
    _, H, _, d = o.shape
    pr, pc, wr, wc = plan.padded_rows, plan.padded_cols, plan.win_rows, plan.win_cols
    o = o.reshape(-1, pr // wr, pc // wc, H, wr, wc, d).permute(0, 3, 1, 4, 2, 5, 6)
    o = o.reshape(-1, H, pr, pc, d)
    if plan.shifted:
        o = torch.roll(o, (plan.shift_rows, plan.shift_cols), dims=(2, 3))
    return o[:, :, : plan.rows, : plan.cols] if plan.padded else o


def region_labels(plan: WindowPlan) -> Tensor:
    """(padded_rows, padded_cols) long labels of the partitioned (padded, rolled) grid:
    Swin's shift regions, 3 per shifted axis (cells before the last window, the last
    window's cells from the grid's end, those wrapped round from its start), and -1 on
    padding cells. Two cells of a window may attend to each other iff their labels agree."""

    def axis(length: int, padded: int, win: int, shift: int) -> tuple[Tensor, Tensor]:
        label = torch.zeros(padded, dtype=torch.long)
        if shift:
            label[padded - win : padded - shift] = 1
            label[padded - shift :] = 2
        real = torch.roll(torch.arange(padded) < length, -shift)
        return label, real

    lr, real_r = axis(plan.rows, plan.padded_rows, plan.win_rows, plan.shift_rows)
    lc, real_c = axis(plan.cols, plan.padded_cols, plan.win_cols, plan.shift_cols)
    labels = lr[:, None] * 3 + lc[None, :]
    return labels.masked_fill(~(real_r[:, None] & real_c[None, :]), -1)


def window_mask(plan: WindowPlan, *, cls: bool) -> Tensor | None:
    """(nW, T, T + cls) bool, True where a window's query may attend to its key: same shift
    region, padding only with padding (whose queries are discarded), and the CLS key (last
    column, when `cls`) always. None where every window is whole and unshifted."""
    if not (plan.padded or plan.shifted):
        return None
    wr, wc = plan.win_rows, plan.win_cols
    labels = region_labels(plan).view(plan.padded_rows // wr, wr, plan.padded_cols // wc, wc)
    labels = labels.permute(0, 2, 1, 3).reshape(plan.windows, plan.area)
    mask = labels[:, :, None] == labels[:, None, :]
    if cls:
        mask = F.pad(mask, (0, 1), value=True)
    return mask


def window_groups(plan: WindowPlan) -> Tensor:
    """(rows * cols,) long: the group of cells each patch attends to, in grid coordinates.
    Along a shifted axis the windows are displaced by `shift`: [0, shift), [shift,
    shift + M), ..., the remainder (what the cyclic roll and Swin's region mask amount to).
    """
    r = (torch.arange(plan.rows) + plan.win_rows - plan.shift_rows) // plan.win_rows
    c = (torch.arange(plan.cols) + plan.win_cols - plan.shift_cols) // plan.win_cols
    return (r[:, None] * (plan.cols + 1) + c[None, :]).reshape(-1)


def window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    plan: WindowPlan,
    *,
    scale: float,
    mask: Tensor | None,
    cls_k: Tensor | None = None,
    cls_v: Tensor | None = None,
) -> Tensor:
    """Softmax attention within windows: q, k, v (B, H, rows, cols, d) grids -> (B, H, rows,
    cols, d). `cls_k`, `cls_v` (B, H, 1, d) are appended as the last key and value of every
    window; `mask` is `window_mask(plan, cls=cls_k is not None)`."""
    B = q.shape[0]
    qw, kw, vw = (partition(t, plan) for t in (q, k, v))  # (B * nW, H, T, d)
    assert (cls_k is None) == (cls_v is None), "give both cls_k and cls_v, or neither"
    if cls_k is not None and cls_v is not None:
        kw = torch.cat([kw, _per_window(cls_k, plan.windows)], dim=2)
        vw = torch.cat([vw, _per_window(cls_v, plan.windows)], dim=2)
    if mask is not None:
        nw, t, keys = mask.shape
        mask = mask.expand(B, nw, t, keys).reshape(B * nw, 1, t, keys)
    out = F.scaled_dot_product_attention(qw, kw, vw, attn_mask=mask, scale=scale)
    return merge(out, plan)


def _per_window(t: Tensor, windows: int) -> Tensor:
    """(B, H, 1, d) -> (B * nW, H, 1, d), the same row for every window of a sample."""
    B, H, _, d = t.shape
    return t.unsqueeze(1).expand(B, windows, H, 1, d).reshape(B * windows, H, 1, d)


@register("window")
class WindowAttention(Attention):
    """Patch queries: softmax over the patches of their own window + CLS; the CLS query:
    exact softmax over all tokens.

    With `shift`, odd-numbered blocks (`block_index % 2 == 1`) roll the grid by -(M // 2)
    along each axis longer than M before partitioning, and back after; Swin's region mask
    keeps cells that only share a window through the roll apart. A grid that M does not
    divide is zero-padded to whole windows first (as Swin's detection code does) and the
    padding is masked out of the keys. A window covering the whole grid is exact softmax
    attention.

    No parameters of its own beyond the shared projections: a checkpoint evaluates at any
    resolution with the layer built for that grid.
    """

    def __init__(self, cfg: WindowConfig, *, dim: int, num_heads: int, seq_len: int) -> None:
        super().__init__(cfg, dim=dim, num_heads=num_heads, seq_len=seq_len)
        self.rows, self.cols = grid_shape(seq_len - 1)
        self.plans = {
            shifted: window_plan(self.rows, self.cols, cfg.window, shifted=shifted and cfg.shift)
            for shifted in (False, True)
        }
        # (nW, T, T + 1) masks of the plain and the shifted windows (None: nothing to mask).
        self.register_buffer("mask", window_mask(self.plans[False], cls=True), persistent=False)
        self.register_buffer(
            "shifted_mask", window_mask(self.plans[True], cls=True), persistent=False
        )

    @property
    def shifted(self) -> bool:
        """Whether this layer's windows are shifted (its block is odd-numbered)."""
        return self.plans[self.block_index % 2 == 1].shifted

    def _check(self, n: int) -> None:
        assert n == self.seq_len, (
            f"window attention is built for a {self.rows}x{self.cols} grid ({self.seq_len} "
            f"tokens) but got {n} tokens; build the layer for this sequence length"
        )

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        B, H, N, d = q.shape
        self._check(N)
        odd = self.block_index % 2 == 1
        plan, mask = self.plans[odd], self.shifted_mask if odd else self.mask
        cls = F.scaled_dot_product_attention(q[:, :, :1], k, v, scale=self.scale)

        def grid(t: Tensor) -> Tensor:
            return t[:, :, 1:].reshape(B, H, self.rows, self.cols, d)

        patches = window_attention(
            grid(q),
            grid(k),
            grid(v),
            plan,
            scale=self.scale,
            mask=mask,
            cls_k=k[:, :, :1],
            cls_v=v[:, :, :1],
        )
        return torch.cat([cls, patches.reshape(B, H, N - 1, d)], dim=2)

    def weights(self, q: Tensor, k: Tensor) -> Tensor:
        B, H, N, d = q.shape
        self._check(N)
        groups = window_groups(self.plans[self.block_index % 2 == 1]).to(q.device)
        groups = F.pad(groups, (1, 0), value=-1)  # CLS: a group of its own
        dtype = torch.promote_types(q.dtype, torch.float32)
        rows = []
        for i0 in range(0, N, MAP_ROW_CHUNK):
            qc = q[:, :, i0 : i0 + MAP_ROW_CHUNK]
            g = groups[i0 : i0 + qc.shape[2]]
            allowed = (g[:, None] == groups[None, :]) | (g[:, None] < 0) | (groups[None, :] < 0)
            logits = (qc @ k.transpose(-2, -1)) * self.scale
            logits = logits.masked_fill(~allowed, float("-inf"))
            rows.append(torch.softmax(logits, dim=-1, dtype=dtype).to(q.dtype))
        return torch.cat(rows, dim=2)

    def attend_flops(self, n: int) -> int:
        h, d = self.num_heads, self.head_dim
        plan = window_plan(*grid_shape(n - 1), self.cfg.window, shifted=False)
        cls = 2 * matmul_flops(h, 1, d, n)
        cells = plan.windows * plan.area  # padding cells included: they run
        return cls + 2 * matmul_flops(h, cells, d, plan.area + 1)
