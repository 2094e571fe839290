"""Neighbourhood attention (`effbench.attention.neighborhood`) and its clamped windows in
`effbench.attention.clamped`: NATTEN's window semantics against a brute-force construction,
the exact limit, chunked inference, flex against the gathered path, bfloat16, no dense
intermediates, FLOPs, and the backend each device gets."""

from __future__ import annotations

import pytest
import torch
from agree import assert_agree
from torch.testing import assert_close

from effbench.attention import build_attention, clamped, local
from effbench.attention.base import Attention
from effbench.attention.clamped import (
    clamped_neighbourhoods,
    flex_clamped,
    tile_tables,
    tiled_attention,
)
from effbench.attention.local import flex_supported, gather_attention, resolve_backend
from effbench.attention.neighborhood import NeighborhoodAttention
from effbench.config.attention import FusedConfig, NeighborhoodConfig
from effbench.measure import count_flops

DIM, HEADS = 32, 4
CPU = torch.device("cpu")
# (rows, cols, kernel, dilation): square and oblong grids; with dilation 2, sub-grids of
# unequal lengths (5 -> 3 + 2), and sub-grids shorter than the kernel (clamped).
GRIDS = [
    (5, 5, 3, 1),
    (4, 6, 3, 1),
    (6, 9, 5, 1),
    (3, 7, 5, 1),  # kernel clamped to the 3 rows
    (6, 6, 3, 2),
    (5, 7, 3, 2),  # rows split 3 + 2, columns 4 + 3: one row sub-grid shorter than k
    (8, 10, 3, 2),
    (9, 9, 3, 3),
    (4, 5, 5, 2),  # every sub-grid shorter than the kernel along both axes
]


def layer(rows: int, cols: int, **opts: object) -> NeighborhoodAttention:
    m = build_attention(
        NeighborhoodConfig(**opts), dim=DIM, num_heads=HEADS, seq_len=1 + rows * cols
    )
    assert isinstance(m, NeighborhoodAttention) and (m.rows, m.cols) == (rows, cols)
    return m


def qkv(rows: int, cols: int, *, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(rows * 100 + cols)
    return [torch.randn(2, 3, 1 + rows * cols, 8, generator=g).to(dtype) for _ in range(3)]


# ---------------------------------------------------------------------------- windows


def natten_window_start(index: int, length: int, kernel: int, dilation: int) -> int:
    """NATTEN's `get_window_start` (its CPU and CUDA kernels), valid where
    kernel * dilation <= length."""
    half = kernel // 2
    if dilation <= 1:
        start = max(index - half, 0)
        return start + (index + half >= length) * (length - index - half - 1)
    if index - half * dilation < 0:
        return index % dilation
    if index + half * dilation >= length:
        phase = index % dilation
        a = length // dilation * dilation
        b = length - a
        if phase < b:
            return length - b + phase - 2 * half * dilation
        return a + phase - kernel * dilation
    return index - half * dilation


def brute_axis(index: int, length: int, kernel: int, dilation: int) -> list[int]:
    """Positions of a query's neighbourhood along one axis, by enumeration: its sub-grid,
    the kernel (clamped to the sub-grid's length) cells around it, slid inward at the ends;
    checked against NATTEN's own formula wherever NATTEN accepts the sizes."""
    sub = [x for x in range(length) if x % dilation == index % dilation]
    span = min(kernel, len(sub))
    i = sub.index(index)
    start = min(max(i - kernel // 2, 0), len(sub) - span)
    cells = sub[start : start + span]
    if kernel * dilation <= length:
        s = natten_window_start(index, length, kernel, dilation)
        assert cells == list(range(s, s + kernel * dilation, dilation)), (index, length)
    return cells


def brute_keys(rows: int, cols: int, kernel: int, dilation: int, p: int) -> set[int]:
    r, c = divmod(p, cols)
    return {
        1 + rr * cols + cc
        for rr in brute_axis(r, rows, kernel, dilation)
        for cc in brute_axis(c, cols, kernel, dilation)
    }


@pytest.mark.parametrize(("rows", "cols", "kernel", "dilation"), GRIDS)
def test_neighbourhoods_are_natten_windows(
    rows: int, cols: int, kernel: int, dilation: int
) -> None:
    m = layer(rows, cols, kernel=kernel, dilation=dilation)
    amap = m.attention_map(torch.randn(2, 1 + rows * cols, DIM))
    p_total = rows * cols
    fits = kernel * dilation <= min(rows, cols)
    assert not (fits and m.padded)  # pad slots only where a sub-grid is shorter than k
    for p in range(p_total):
        cells = brute_keys(rows, cols, kernel, dilation, p)
        if fits:  # NATTEN's own case: every query, corners included, keeps k^2 patches
            assert len(cells) == kernel * kernel
        keys = cells | {0}
        assert set(m.idx[p][m.valid[p]].tolist()) == keys
        assert (m.idx[p][~m.valid[p]] == p_total + 1).all()
        support = (amap[:, :, 1 + p] > 0).all(dim=(0, 1)).nonzero().flatten().tolist()
        assert set(support) == keys, p
        assert (amap[:, :, 1 + p] > 0).sum(-1).eq(len(keys)).all()
    assert (amap[:, :, 0] > 0).all()  # CLS attends everywhere


def test_corner_window_slides_inward() -> None:
    # 7x7 grid, k = 3: the corner query (0, 0) sees rows and columns 0..2 (no padding),
    # the query beside it (0, 1) the same window, (0, 6) columns 4..6.
    idx, valid = clamped_neighbourhoods(7, 7, 3, 1)
    assert valid.all() and idx.shape == (49, 10)
    assert idx[0, :-1].tolist() == [1, 2, 3, 8, 9, 10, 15, 16, 17]
    assert torch.equal(idx[1], idx[0])
    assert idx[6, :3].tolist() == [5, 6, 7]


# ---------------------------------------------------------------------------- exact limit


@pytest.mark.parametrize(("rows", "cols", "kernel"), [(5, 5, 5), (4, 4, 7), (3, 5, 5)])
def test_kernel_covering_the_grid_is_exact(rows: int, cols: int, kernel: int) -> None:
    n = 1 + rows * cols
    ref = build_attention(FusedConfig(), dim=DIM, num_heads=HEADS, seq_len=n)
    m = layer(rows, cols, kernel=kernel)
    m.load_projection_state(ref.projection_state())
    x = torch.randn(2, n, DIM)
    xr, xm = x.clone().requires_grad_(), x.clone().requires_grad_()
    assert_agree(m(xm), ref(xr), [xm], [xr], atol=1e-5)
    with torch.no_grad():
        assert_close(m(x), ref(x), atol=1e-5, rtol=0)
    assert_close(m.attention_map(x), ref.attention_map(x), atol=1e-6, rtol=0)


def test_cls_row_is_exact() -> None:
    rows = cols = 6
    n = 1 + rows * cols
    ref = build_attention(FusedConfig(), dim=DIM, num_heads=HEADS, seq_len=n)
    m = layer(rows, cols, kernel=3, dilation=2)
    m.load_projection_state(ref.projection_state())
    x = torch.randn(2, n, DIM)
    assert_close(m.attention_map(x)[:, :, 0], m.exact_map(x)[:, :, 0])
    with torch.no_grad():
        assert_close(m(x)[:, 0], ref(x)[:, 0], atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------- paths


@pytest.mark.parametrize(("rows", "cols", "kernel", "dilation"), [(8, 8, 3, 1), (5, 7, 3, 2)])
def test_chunked_inference_equals_one_pass(
    rows: int, cols: int, kernel: int, dilation: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = layer(rows, cols, kernel=kernel, dilation=dilation, local_backend="gather")
    x = torch.randn(2, 1 + rows * cols, DIM)
    one_pass = m(x.clone().requires_grad_()).detach()  # autograd: one pass
    monkeypatch.setattr(local, "GATHER_CHUNK_BYTES", 1)  # one query per chunk
    calls = []
    chunk = local._gathered_chunk

    def counting(*args: object) -> torch.Tensor:
        calls.append(1)
        return chunk(*args)

    monkeypatch.setattr(local, "_gathered_chunk", counting)
    with torch.no_grad():
        chunked = m(x)
    assert len(calls) == rows * cols
    assert_close(chunked, one_pass, atol=1e-6, rtol=0)


@pytest.mark.skipif(
    not flex_supported(CPU, grad=False), reason="this torch has no flex attention on the CPU"
)
@pytest.mark.parametrize(("rows", "cols", "kernel", "dilation"), [(5, 6, 3, 1), (5, 7, 3, 2)])
def test_flex_matches_the_gathered_path_in_cpu_inference(
    rows: int, cols: int, kernel: int, dilation: int
) -> None:
    q, k, v = qkv(rows, cols)
    scale = 8**-0.5
    idx, valid = clamped_neighbourhoods(rows, cols, kernel, dilation)
    with torch.inference_mode():
        both = flex_clamped(q, k, v, rows, cols, kernel, dilation, scale)
        local_ref = gather_attention(q, k, v, idx, valid, scale)
    assert_close(both[:, :, 1:], local_ref, atol=1e-4, rtol=0)
    exact = torch.softmax(q[:, :, :1] @ k.transpose(-2, -1) * scale, -1) @ v
    assert_close(both[:, :, :1], exact, atol=1e-4, rtol=0)  # CLS: global and exact


def test_gathered_path_in_bfloat16_stays_within_1e_2_of_float32() -> None:
    rows, cols, scale = 5, 7, 8**-0.5
    idx, valid = clamped_neighbourhoods(rows, cols, 3, 2)
    a = qkv(rows, cols)
    ref = gather_attention(*a, idx, valid, scale)
    out = gather_attention(*(t.bfloat16() for t in a), idx, valid, scale)
    assert out.dtype == torch.bfloat16
    assert_close(out.float(), ref, atol=1e-2, rtol=1e-2)
    # and the layer under autocast, against itself in float32
    m = layer(rows, cols, kernel=3, dilation=2)
    x = torch.randn(2, 1 + rows * cols, DIM)
    with torch.no_grad():
        full = m(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = m(x)
    assert half.dtype == torch.bfloat16
    assert ((half.float() - full).norm() / full.norm()).item() < 1e-2


def test_backend_choice_per_device_and_phase() -> None:
    cuda = torch.device("cuda")
    m = layer(4, 4, kernel=3)
    assert m.local_backend(CPU, grad=True) == "tiles"
    assert m.local_backend(CPU, grad=False) == "tiles"
    assert m.local_backend(cuda, grad=True) == "flex"
    pick = layer(4, 4, kernel=3, local_backend="flex").local_backend
    assert pick(CPU, grad=True) == "tiles"  # flex has no CPU backward
    assert layer(4, 4, kernel=3, local_backend="gather").local_backend(cuda, grad=True) == "gather"
    assert resolve_backend("flex", cuda, grad=True, portable="gather") == "flex"
    with local.reference_backend():  # what the FLOP counters see into
        assert m.local_backend(cuda, grad=False) == "tiles"
    assert resolve_backend("auto", CPU, grad=False) == "slices"  # the hybrid's default kept


def test_odd_kernel_required() -> None:
    with pytest.raises(ValueError, match="kernel must be odd"):
        NeighborhoodConfig(kernel=4)


# ---------------------------------------------------------------------------- cost


def dense_shapes(m: Attention, x: torch.Tensor) -> list[tuple[int, ...]]:
    """Shapes of every tensor an aten op returns in m(x) with two dims >= the patch count."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    shapes: list[tuple[int, ...]] = []

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            shapes.extend(tuple(t.shape) for t in tree_leaves(out) if isinstance(t, torch.Tensor))
            return out

    with Recorder():
        m(x)
    p = x.shape[1] - 1
    return [s for s in shapes if sum(d >= p for d in s) >= 2]


@pytest.mark.parametrize("grad", [False, True])
def test_never_materialises_dense_attention(grad: bool) -> None:
    n = 1 + 16 * 16
    assert n - 1 > 4 * DIM  # so that no projection width passes for a token count
    m = layer(16, 16, kernel=3, dilation=2)
    x = torch.randn(1, n, DIM, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        assert not dense_shapes(m, x)
    ref = build_attention(FusedConfig(), dim=DIM, num_heads=HEADS, seq_len=n)
    with torch.no_grad():
        assert dense_shapes(ref, x)  # the check does catch dense


@pytest.mark.parametrize(("rows", "cols", "kernel", "dilation"), GRIDS)
def test_analytic_flops_equal_counted(rows: int, cols: int, kernel: int, dilation: int) -> None:
    n = 1 + rows * cols
    for backend in ("tiles", "gather"):
        m = layer(rows, cols, kernel=kernel, dilation=dilation, local_backend=backend)
        counts = count_flops(m, torch.randn(2, n, DIM), analytic=m.flops(n))
        assert counts.analytic == counts.fvcore == counts.flop_counter, (backend, counts)
    taps = m.idx.shape[1]
    d = DIM // HEADS
    assert m.attend_flops(n) == 2 * 2 * HEADS * d * (n + (n - 1) * taps)  # gather: k^2 + 1


def test_work_is_linear_in_tokens() -> None:
    attend = {}
    for side in (8, 16):
        n = 1 + side * side
        m = layer(side, side, kernel=5, local_backend="gather")
        assert m.idx.shape == (side * side, 5 * 5 + 1)
        counts = count_flops(m, torch.randn(1, n, DIM), analytic=m.flops(n))
        attend[side] = counts.fvcore - m.projection_flops(n)
        assert attend[side] == m.attend_flops(n)
    # 257 / 65 = 3.95x the tokens: the neighbourhoods' work grows ~4x (the CLS row 16x,
    # but it is one row of many); dense attention would grow ~16x.
    assert 3.5 < attend[16] / attend[8] < 4.5


@pytest.mark.parametrize(("rows", "cols", "kernel", "dilation"), [*GRIDS, (40, 37, 7, 1)])
def test_tiles_match_the_gathered_reference_forward_and_backward(
    rows: int, cols: int, kernel: int, dilation: int
) -> None:
    tables = tile_tables(rows, cols, kernel, dilation)
    idx, valid = clamped_neighbourhoods(rows, cols, kernel, dilation)
    a = [t.double().requires_grad_() for t in qkv(rows, cols)]
    b = [t.detach().clone().requires_grad_() for t in a]
    out = tiled_attention(*a, tables, 8**-0.5)
    assert_agree(out, gather_attention(*b, idx, valid, 8**-0.5), a, b, atol=1e-10)


def test_tiles_do_linear_work_on_a_large_grid() -> None:
    work = {}
    for side in (64, 128):  # both with interior tiles, whose keys span 16 + 7 - 1 cells
        n = 1 + side * side
        m = layer(side, side, kernel=7)
        work[side] = m.attend_flops(n)
        if side == 64:
            with torch.no_grad():
                assert not dense_shapes(m, torch.randn(1, n, DIM))  # tiles, never N x N
    assert 3.9 < work[128] / work[64] < 4.1


def test_tiles_in_groups_under_inference_equal_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    tables = tile_tables(40, 37, 7, 1)
    q, k, v = qkv(40, 37)
    assert tables.queries.shape[0] > 2
    monkeypatch.setattr(clamped, "TILE_GROUP", 1)
    with torch.no_grad():
        grouped = tiled_attention(q, k, v, tables, 8**-0.5)
    monkeypatch.setattr(clamped, "TILE_GROUP", 10**6)
    with torch.no_grad():
        whole = tiled_attention(q, k, v, tables, 8**-0.5)
    assert_close(grouped, whole, atol=1e-6, rtol=0)
