"""EfficientViT's ReLU linear attention (`effbench.attention.relu_linear`): against the explicit
quadratic formula, dead (all-negative) query rows, bfloat16 autocast, no dense intermediate,
FLOPs linear in tokens, and timm's EfficientViT `LiteMLA` core on the same q, k, v."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_attention import dense_intermediates
from torch import Tensor
from torch.testing import assert_close

from effbench.attention import build_attention
from effbench.attention.linear import linear_attention
from effbench.attention.relu_linear import ReluLinearAttention, relu_linear_attention
from effbench.config.attention import ReluLinearConfig
from effbench.measure import count_flops

B, DIM, HEADS, N = 2, 32, 2, 26
D = DIM // HEADS


def build(*, seq_len: int = N, **opts: float) -> ReluLinearAttention:
    layer = build_attention(ReluLinearConfig(**opts), dim=DIM, num_heads=HEADS, seq_len=seq_len)
    assert isinstance(layer, ReluLinearAttention)
    return layer


def qkv(*, dtype: torch.dtype = torch.float64, n: int = N, seed: int = 0) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, HEADS, n, D, generator=g, dtype=dtype) for _ in range(3)]


def quadratic(q: Tensor, k: Tensor, v: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """The explicit map ReLU(Q) ReLU(K)^T / (row sum + eps) and its output, (N, N) formed."""
    a = q.relu() @ k.relu().transpose(-2, -1)
    w = a / (a.sum(dim=-1, keepdim=True) + eps)
    return w, w @ v


@pytest.mark.parametrize("eps", [1e-6, 1e-2, 1.0])
@pytest.mark.parametrize("grad", [False, True], ids=["inference", "autograd"])
def test_matches_the_quadratic_formula(eps: float, grad: bool) -> None:
    m = build(eps=eps).double()
    q, k, v = (t.requires_grad_(grad) for t in qkv())
    w_ref, out_ref = quadratic(q.detach(), k.detach(), v.detach(), eps)
    with torch.set_grad_enabled(grad):
        out = m.attend(q, k, v)
        w = m.weights(q, k)
    assert out.dtype == w.dtype == torch.float64
    assert_close(out.detach(), out_ref, atol=1e-10, rtol=0)
    assert_close(w.detach(), w_ref, atol=1e-10, rtol=0)
    # eps enters the normaliser exactly once: rows sum to s / (s + eps) for a row sum s.
    s = (q.detach().relu() @ k.detach().relu().transpose(-2, -1)).sum(dim=-1)
    assert_close(w.detach().sum(dim=-1), s / (s + eps), atol=1e-12, rtol=0)


def test_inference_leaves_its_inputs_alone_and_equals_autograd() -> None:
    # Without autograd the readout divides in place; q and k must not be rectified in place.
    q, k, v = qkv(dtype=torch.float32)
    before = [t.clone() for t in (q, k, v)]
    with torch.no_grad():
        fast = relu_linear_attention(q, k, v, eps=1e-6)
    for t, b in zip((q, k, v), before, strict=True):
        assert torch.equal(t, b)
    slow = relu_linear_attention(q.requires_grad_(), k, v, eps=1e-6)
    assert torch.equal(fast, slow.detach())


def test_map_rows_sum_just_under_one_unless_the_query_is_dead() -> None:
    m = build().eval()
    q, k, _ = qkv()  # float64: float32 rounding of a row sum could pass 1
    q[:, :, 3] = -q[:, :, 3].abs()  # a dead query in every head
    rows = m.weights(q, k).sum(dim=-1)
    assert (rows <= 1).all()
    assert (rows[:, :, 3] == 0).all()
    live = torch.cat([rows[:, :, :3], rows[:, :, 4:]], dim=2)
    assert (1 - live).max() < 1e-5  # s >> eps = 1e-6 for these rows
    assert not ReluLinearAttention.map_row_stochastic
    assert ReluLinearAttention.map_row_sum_tol is None and ReluLinearAttention.map_nonnegative


@pytest.mark.parametrize("autocast", [False, True])
def test_dead_query_rows_give_zero_output_and_finite_gradients(autocast: bool) -> None:
    q, k, v = qkv(dtype=torch.float32)
    dead = [0, 5, N - 1]  # CLS among them
    q[:, :, dead] = -q[:, :, dead].abs() - 0.1
    k[:, 1] = -k[:, 1].abs()  # and in head 1 every key is dead too: 0 / eps everywhere
    dtype = torch.bfloat16 if autocast else torch.float32
    q, k, v = (t.to(dtype).requires_grad_() for t in (q, k, v))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = relu_linear_attention(q, k, v, eps=1e-6)
    assert out.dtype == dtype and out.isfinite().all()
    assert (out[:, :, dead] == 0).all()
    assert (out[:, 1] == 0).all()
    _, ref = quadratic(q.detach().double(), k.detach().double(), v.detach().double(), 1e-6)
    tol = 1e-2 if autocast else 1e-5
    assert_close(out.detach().double(), ref, atol=tol, rtol=0)
    (out.float() * torch.randn_like(out.float())).sum().backward()
    for t in (q, k, v):
        assert t.grad is not None and t.grad.isfinite().all()
    assert (q.grad[:, :, dead] == 0).all()  # ReLU passes no gradient to a dead query
    assert q.grad[:, 0].abs().sum() > 0 and v.grad[:, 0].abs().sum() > 0


def test_bfloat16_autocast_accumulates_in_float32() -> None:
    # The layer under autocast: bf16 projections, the attention itself in float32.
    m = build().train()
    x = torch.randn(B, N, DIM)
    with torch.no_grad():
        ref = m(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(x)
    assert out.dtype == torch.bfloat16 and out.isfinite().all()
    assert_close(out.float(), ref, atol=1e-2, rtol=0)
    # attend on bf16 inputs is float32 attention on their exact values, rounded once.
    q, k, v = (t.bfloat16() for t in qkv(dtype=torch.float32))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = m.attend(q, k, v)
    relu = [t.float().relu() for t in (q, k)]
    wide = linear_attention(*relu, v.float(), eps=m.cfg.eps)  # float32, no autocast
    assert low.dtype == torch.bfloat16
    assert torch.equal(low, wide.bfloat16())


def test_never_materialises_dense_attention() -> None:
    n = 1 + 16 * 16
    assert n - 1 > 4 * DIM  # so that no projection width passes for a token count
    assert not dense_intermediates(build(seq_len=n), torch.randn(1, n, DIM))


def test_flops_are_counted_and_linear_in_tokens() -> None:
    attend = {}
    for side in (8, 16):
        n = 1 + side * side
        m = build(seq_len=n)
        counts = count_flops(m, torch.randn(1, n, DIM), analytic=m.flops(n))
        assert counts.analytic == counts.fvcore == counts.flop_counter, counts
        attend[n] = counts.fvcore - m.projection_flops(n)
        # ReLU(K)^T V and ReLU(Q) (ReLU(K)^T V): h n d^2 multiply-adds each; the normaliser
        # ReLU(Q) (ReLU(K)^T 1): h n d.
        assert attend[n] == 2 * HEADS * n * (2 * D * D + D)
    assert attend[257] / attend[65] == pytest.approx(257 / 65)


def test_cls_is_an_ordinary_token() -> None:
    # Permuting the tokens permutes the output: no position, CLS included, is special.
    m = build().double().eval()
    q, k, v = qkv()
    perm = torch.randperm(N)
    with torch.no_grad():
        out = m.attend(q, k, v)
        moved = m.attend(q[:, :, perm], k[:, :, perm], v[:, :, perm])
    assert_close(moved, out[:, :, perm], atol=1e-12, rtol=0)


def test_matches_timm_efficientvit_lite_mla_core() -> None:
    # timm's EfficientViT (MIT) LiteMLA: `_attn(q, k, v)` takes ReLU(q), ReLU(k) and v padded
    # with a column of ones, and returns (q kv)[..., :-1] / ((q kv)[..., -1:] + eps) in float32:
    # the same eps placement (added to ReLU(Q) ReLU(K)^T 1). timm's default eps is 1e-5; set
    # it to ours.
    efficientvit = pytest.importorskip("timm.models.efficientvit_mit")
    eps = ReluLinearConfig().eps
    lite = efficientvit.LiteMLA(DIM, DIM, dim=D, eps=eps)
    q, k, v = qkv(dtype=torch.float32, seed=1)
    q[:, :, 2] = -q[:, :, 2].abs()  # a dead query: 0 / eps in both
    with torch.no_grad():
        theirs = lite._attn(F.relu(q), F.relu(k), F.pad(v, (0, 1), value=1.0))
        ours = build().attend(q, k, v)
    assert (ours[:, :, 2] == 0).all() and (theirs[:, :, 2] == 0).all()
    assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
