"""The hybrid's dilated local attention (`effbench.attention.dilated`; its backend chosen in
`effbench.attention.local`): the shifted-view custom op and flex attention against the
gathered reference, forward and backward; its FLOP formula in both counters; the backend
each device gets, and the records that name it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from agree import assert_agree
from specs import TINY16_BACKBONE, run_cli
from torch.testing import assert_close

from effbench.attention import build_attention, dilated, local
from effbench.attention.dilated import flex_local, gather_local, local_attention
from effbench.attention.local import flex_supported, resolve_backend
from effbench.config.attention import HybridConfig
from effbench.measure import count_flops
from effbench.results import read_jsonl

# (rows, cols, window, dilation): square and oblong grids, windows wider than the grid.
GRIDS = [(4, 5, 3, 1), (6, 6, 3, 2), (2, 3, 5, 3), (8, 8, 7, 1), (1, 7, 3, 2)]
CPU = torch.device("cpu")


def qkv(rows: int, cols: int, *, dtype: torch.dtype = torch.float32, grad: bool = False):
    g = torch.Generator().manual_seed(rows * 100 + cols)
    shape = (2, 3, 1 + rows * cols, 8)
    return [torch.randn(shape, generator=g).to(dtype).requires_grad_(grad) for _ in range(3)]


@pytest.mark.parametrize(("rows", "cols", "window", "dilation"), GRIDS)
def test_slices_match_the_gathered_reference_forward_and_backward(
    rows: int, cols: int, window: int, dilation: int
) -> None:
    grid = (rows, cols, window, dilation, 8**-0.5)
    a, b = qkv(rows, cols, grad=True), qkv(rows, cols, grad=True)
    assert_agree(local_attention(*a, *grid)[0], gather_local(*b, *grid), a, b, atol=1e-4)


def test_slices_backward_passes_gradcheck() -> None:
    grid = (3, 4, 3, 2, 0.5)
    inputs = qkv(3, 4, dtype=torch.float64, grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v: local_attention(q, k, v, *grid)[0], inputs)


def test_slices_in_bfloat16_stay_within_1e_2_of_float32() -> None:
    grid = (6, 6, 3, 2, 8**-0.5)
    a = qkv(6, 6)
    ref = gather_local(*a, *grid)
    out = local_attention(*(t.bfloat16() for t in a), *grid)[0]
    assert out.dtype == torch.bfloat16
    assert_close(out.float(), ref, atol=1e-2, rtol=1e-2)


def test_chunked_inference_equals_one_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    grid = (8, 8, 3, 2, 8**-0.5)
    a = qkv(8, 8)
    monkeypatch.setattr(dilated, "SLICE_CHUNK_BYTES", 1)  # one grid row per chunk
    rows = dilated.local_attention(*a, *grid)[0]
    monkeypatch.setattr(dilated, "SLICE_CHUNK_BYTES", 2**40)
    assert_close(dilated.local_attention(*a, *grid)[0], rows, atol=1e-6, rtol=0)


def test_off_grid_cells_get_no_weight() -> None:
    q, k, v = qkv(4, 4)
    _, attn = local_attention(q, k, v, 4, 4, 3, 1, 0.5)  # (taps, B, H, rows, cols)
    assert attn[0, :, :, 0, :].eq(0).all()  # the row above the top row is off the grid
    assert attn[4].gt(0).all()  # the centre cell always counts
    assert_close(attn.sum(0), torch.ones_like(attn[0]))


@pytest.mark.skipif(
    not flex_supported(CPU, grad=False), reason="this torch has no flex attention on the CPU"
)
@pytest.mark.parametrize(("rows", "cols", "window", "dilation"), GRIDS[:3])
def test_flex_matches_the_gathered_reference_in_cpu_inference(
    rows: int, cols: int, window: int, dilation: int
) -> None:
    grid = (rows, cols, window, dilation, 8**-0.5)
    q, k, v = qkv(rows, cols)
    with torch.inference_mode():
        both = flex_local(q, k, v, *grid)
    assert_close(both[:, :, 1:], gather_local(q, k, v, *grid), atol=1e-4, rtol=0)
    exact = torch.softmax(q[:, :, :1] @ k.transpose(-2, -1) * 8**-0.5, -1) @ v
    assert_close(both[:, :, :1], exact, atol=1e-4, rtol=0)  # CLS: global and exact


def test_backend_choice_per_device_and_phase() -> None:
    cuda = torch.device("cuda")
    assert resolve_backend("auto", CPU, grad=True) == "slices"
    assert resolve_backend("auto", CPU, grad=False) == "slices"  # flex is slower on the CPU
    assert resolve_backend("auto", cuda, grad=True) == "flex"
    assert resolve_backend("gather", cuda, grad=True) == "gather"
    assert resolve_backend("flex", CPU, grad=True) == "slices"  # no CPU backward in flex
    with local.reference_backend():
        assert resolve_backend("auto", cuda, grad=False) == "slices"


@pytest.mark.parametrize("backend", ["slices", "gather"])
def test_the_hybrid_is_the_same_layer_on_every_backend(backend: str) -> None:
    n = 1 + 6 * 6
    torch.manual_seed(0)
    ref = build_attention(
        HybridConfig(window=3, dilation=2, local_backend="gather"), dim=32, num_heads=4, seq_len=n
    )
    m = build_attention(
        HybridConfig(window=3, dilation=2, local_backend=backend), dim=32, num_heads=4, seq_len=n
    )
    m.load_state_dict(ref.state_dict())
    with torch.no_grad():
        ref.gate.fill_(0.4)
        m.gate.fill_(0.4)
    x = torch.randn(2, n, 32, requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    assert_close(m(x), ref(xr), atol=1e-5, rtol=0)
    m(x).square().sum().backward()
    ref(xr).square().sum().backward()
    assert_close(x.grad, xr.grad, atol=1e-4, rtol=1e-4)
    with torch.inference_mode():  # the inference path writes in place
        assert_close(m(x), ref(x), atol=1e-5, rtol=0)


def test_both_counters_count_the_local_op_as_its_analytic_flops() -> None:
    n = 1 + 8 * 8
    m = build_attention(HybridConfig(window=5, dilation=1), dim=32, num_heads=4, seq_len=n)
    counts = count_flops(m, torch.randn(2, n, 32), analytic=m.flops(n))
    assert counts.analytic == counts.fvcore == counts.flop_counter
    heads, patches, taps, d = 4, n - 1, 5 * 5 + 1, 8
    assert counts.by_op["local_attention"] == 2 * 2 * heads * patches * taps * d


SPEC = (
    TINY16_BACKBONE
    + """
[[models]]
name = "hybrid"
attention = { kind = "hybrid", window = 3, dilation = 1 }

[profile]
seq_lens = [17]
batch_size = 2
device = "cpu"
repeats = 1
warmup = 0
min_run_time = 0.01
retries = 0
"""
)


@pytest.mark.parametrize("compiled", [False, True])
def test_profile_records_name_the_local_backend(tmp_path: Path, compiled: bool) -> None:
    spec = tmp_path / "bench.toml"
    spec.write_text(SPEC, encoding="utf-8")
    extra = ["--compile"] if compiled else []
    code, out = run_cli("profile", "-s", str(spec), *extra, "-o", str(tmp_path))
    assert code == 0, out
    (path,) = sorted(tmp_path.glob("profile-*.jsonl"))
    (rec,), bad = read_jsonl(path)
    assert not bad and rec["status"] == "ok" and rec["compiled"] is compiled
    assert rec["local_backend"] == {"fwd": "slices", "fwdbwd": "slices"}
    assert rec["fwd_ms"] > 0 and rec["fwdbwd_ms"] > 0
    assert rec["flops_analytic"] == rec["flops_fvcore"] == rec["flops_flop_counter"]
