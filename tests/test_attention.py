"""The attention registry and contract, FLOP counts and exact limits, for every registered
mechanism, and the configs' small test options (`tiny()`, `tiny_variants()`).

Contract and FLOP tests are parametrised over the registry and each config's `tiny()` and
`tiny_variants()`, so a newly registered kind is tested as soon as it is registered.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
from agree import assert_agree
from torch import Tensor, nn
from torch.testing import assert_close
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from effbench.attention import attention_class, available, build_attention, register
from effbench.attention.base import Attention, softmax_attention, softmax_weights
from effbench.attention.nystrom import segment_means
from effbench.attention.performer import orthogonal_features
from effbench.attention.sdpa import SdpaAttention
from effbench.config.attention import CONFIGS, KINDS
from effbench.measure import FlopCountError, count_flops
from effbench.measure.dispatch import backend_from_ops, dispatched_ops

# N = CLS + a 5x5 patch grid; 26 tokens are not a multiple of nystrom's tiny 4 landmarks.
B, DIM, HEADS, N = 2, 32, 2, 26
# The fewest tokens a test builds a layer for (CLS + a 4x4 grid): every tiny() must fit.
FEWEST = 17
# The plain exact mechanism the others are compared with, weights shared.
REF = "fused"

# Small but valid options per kind, from each config's own `tiny()`.
SMALL: dict[str, Any] = {kind: cls.tiny() for kind, cls in CONFIGS.items()}

# Further options run through the contract and FLOP tests: (kind, overrides of SMALL[kind]).
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    (kind, opts) for kind, cls in CONFIGS.items() for opts in cls.tiny_variants()
]


def case_id(kind: str, opts: dict[str, Any]) -> str:
    return "-".join([kind, *(f"{k}={v}" for k, v in opts.items())])


CASES = [pytest.param(kind, {}, id=kind) for kind in available()] + [
    pytest.param(kind, opts, id=case_id(kind, opts))
    for kind, opts in VARIANTS
    if kind in available()
]


def config(kind: str, **overrides: Any) -> Any:
    """SMALL[kind] with `overrides`, validated again by its own pydantic class."""
    base = SMALL[kind]
    return type(base).model_validate({**base.model_dump(), **overrides})


def build(kind: str, *, seq_len: int = N, **overrides: Any) -> Attention:
    """A small layer of `kind` for `seq_len` tokens."""
    cfg = config(kind, **overrides)
    heads = cfg.head_count(dim=DIM, backbone_heads=HEADS)  # hydra: one per feature
    return build_attention(cfg, dim=DIM, num_heads=heads, seq_len=seq_len)


def shared(kind: str, ref: Attention, **overrides: Any) -> Attention:
    """A layer of `kind` holding `ref`'s W_qkv and W_o."""
    m = build(kind, seq_len=ref.seq_len, **overrides)
    m.load_projection_state(ref.projection_state())
    return m


# ---------------------------------------------------------------------------- registry


def test_small_options_cover_the_registry() -> None:
    assert available(), "no attention kind is registered"
    missing = set(available()) - set(SMALL)
    assert not missing, f"add small options for {sorted(missing)} to SMALL"
    for kind, cfg in SMALL.items():
        assert cfg.kind == kind


def test_every_config_has_a_registered_mechanism() -> None:
    # The registry finds the mechanism modules itself: no import list to forget.
    assert available() == KINDS
    for kind in KINDS:
        cls = attention_class(kind)
        assert issubclass(cls, Attention) and cls.kind == kind
        assert cls.__module__.startswith("effbench.attention.")


def test_registry_refuses_unknown_and_duplicate_kinds() -> None:
    with pytest.raises(ValueError, match="unknown attention kind 'nope'; choose one of"):
        attention_class("nope")
    whole = {"attend": None, "weights": None, "attend_flops": None}
    with pytest.raises(AssertionError, match="registered twice"):
        register(KINDS[0])(type("Again", (Attention,), whole))
    with pytest.raises(AssertionError, match="has no config"):
        register("nope")(type("Nope", (Attention,), whole))


def test_a_mechanism_without_its_flops_fails_when_its_class_is_defined() -> None:
    with pytest.raises(TypeError, match=r"'sdpa' \(NoFlops\) must define attend_flops$"):

        @register("sdpa")
        class NoFlops(Attention):
            def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
                return v

            def weights(self, q: Tensor, k: Tensor) -> Tensor:
                return q @ k.transpose(-2, -1)


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_options_are_valid_and_small(kind: str) -> None:
    cls = CONFIGS[kind]
    tiny = cls.tiny()
    assert type(tiny) is cls and tiny.kind == kind
    assert cls.model_validate(tiny.model_dump()) == tiny
    assert all(v <= FEWEST for v in tiny.token_limits().values()), tiny.token_limits()
    for opts in cls.tiny_variants():
        variant = cls.model_validate({**tiny.model_dump(), **opts})
        assert variant != tiny, f"{kind}: variant {opts} changes nothing"
        assert all(v <= FEWEST for v in variant.token_limits().values())


# ---------------------------------------------------------------------------- contract


@pytest.mark.parametrize(("kind", "opts"), CASES)
def test_forward_shape_and_finite_gradients(kind: str, opts: dict[str, Any]) -> None:
    m = build(kind, **opts).train()
    x = torch.randn(B, N, DIM, requires_grad=True)
    out = m(x)
    assert out.shape == (B, N, DIM)
    assert out.isfinite().all()
    # A random cotangent, so that no gradient can cancel by the symmetry of a plain sum.
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad is not None and x.grad.isfinite().all() and x.grad.abs().sum() > 0
    # Every parameter has a gradient path (projections, Linformer's E/F, Nystrom's conv,
    # the hybrid gate), so none is exempt.
    for name, p in m.named_parameters():
        assert p.grad is not None, f"{kind}: {name} gets no gradient"
        assert p.grad.isfinite().all(), f"{kind}: {name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{kind}: {name} has an all-zero gradient"


@pytest.mark.parametrize(("kind", "opts"), CASES)
def test_forward_is_attend_between_the_shared_projections(kind: str, opts: dict[str, Any]) -> None:
    # A mechanism may evaluate its forward in a cheaper order (Linformer projects X along the
    # sequence before W_k and W_v), but it must compute exactly W_o(attend(W_qkv x)).
    m = build(kind, **opts).eval()
    x = torch.randn(B, N, DIM, dtype=torch.float64)
    m = m.double()
    with torch.no_grad():
        assert_close(m(x), m.merge_heads(m.attend(*m.qkv_heads(x))), atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("kind", available())
def test_bfloat16_autocast_and_weights(kind: str) -> None:
    # Training uses bf16 autocast; `profile --dtype bfloat16` casts the layer itself. Both
    # must run, stay finite and keep the output in the compute dtype.
    m = build(kind).train()
    x = torch.randn(B, N, DIM, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
    assert out.dtype == torch.bfloat16 and out.isfinite().all()
    out.float().sum().backward()
    assert x.grad is not None and x.grad.isfinite().all()
    m = m.eval().to(torch.bfloat16)
    with torch.inference_mode():
        out = m(x.detach().to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.isfinite().all()


@pytest.mark.parametrize("kind", available())
def test_gradients_match_finite_differences(kind: str) -> None:
    # Catches a gradient path cut by a stray detach/no_grad/in-place op, which the finiteness
    # checks above cannot see. float64, and fast_mode (random directions) to stay quick.
    n = 17
    m = build(kind, seq_len=n).double().eval()
    x = torch.randn(1, n, DIM, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,), fast_mode=True)


@pytest.mark.parametrize(("kind", "opts"), CASES)
def test_attention_map_rows_are_what_the_class_says(kind: str, opts: dict[str, Any]) -> None:
    m = build(kind, **opts).eval()
    amap = m.attention_map(torch.randn(B, N, DIM))
    assert amap.shape == (B, m.num_heads, N, N)
    assert amap.dtype == torch.float32
    assert amap.isfinite().all()
    row_err = (amap.sum(dim=-1) - 1).abs().max().item()
    tol = type(m).map_row_sum_tol
    if tol is not None:
        assert row_err <= tol, f"{kind}: rows sum to 1 +- {row_err:.2e}"
    if type(m).map_nonnegative:
        assert amap.min() >= 0
    # a distribution over the keys (TV distance applies) only if both hold
    if type(m).map_row_stochastic:
        assert type(m).map_nonnegative and tol is not None, kind


# The contract: every mechanism's map is what it applies to V; a skip on V (Nystrom's conv)
# is the only part of the output outside the map.
@pytest.mark.parametrize(("kind", "opts"), CASES)
def test_map_is_what_attend_applies(kind: str, opts: dict[str, Any]) -> None:
    m = build(kind, **opts).eval()
    with torch.no_grad():
        q, k, v = m.qkv_heads(torch.randn(B, N, DIM))
        skip = m.skip(v)
        applied = m.weights(q, k) @ v + (0 if skip is None else skip)
        assert_close(applied, m.attend(q, k, v), atol=1e-5, rtol=1e-4)


def test_linformer_map_is_signed_and_its_rows_do_not_sum_to_one() -> None:
    # What Linformer applies, softmax(Q (E K)^T) F, is no distribution: a stand-in map that
    # normalised |F| would pass the row-stochastic checks and fail here.
    m = build("linformer").eval()
    with torch.no_grad():
        amap = m.attention_map(torch.randn(B, N, DIM))
    assert amap.min() < 0
    assert (amap.sum(dim=-1) - 1).abs().max() > 0.05
    assert not type(m).map_row_stochastic


def test_nystrom_generalised_inverse_residual_on_a_constructed_kernel() -> None:
    from effbench.attention.nystrom import ginv_residual, iterative_pinv, pinv_residual

    a = torch.softmax(torch.randn(2, 3, 8, 8) * 3, dim=-1)
    exact = torch.linalg.pinv(a)
    assert ginv_residual(a, exact) < 1e-4 and pinv_residual(a, exact) < 1e-3
    assert ginv_residual(a, torch.zeros_like(a)) == pytest.approx(1.0)  # Z = 0: A Z A = 0
    z = iterative_pinv(a, 6)
    assert ginv_residual(a, z) < pinv_residual(a, z) + 1e-6  # AZA = A asks less than AZ = I
    # A singular kernel (two landmarks whose rows coincide): no Z makes A Z = I, but the
    # pseudo-inverse is still a generalised inverse. A = [[.5, .5], [.5, .5]] is a projection,
    # A^+ = A, and ||A A - I|| / ||I|| = ||A - I|| / sqrt(2) = 1 / sqrt(2).
    a = torch.full((1, 2, 2), 0.5, dtype=torch.float64)
    z = iterative_pinv(a, 30)
    assert_close(z, a)
    assert pinv_residual(a, z) == pytest.approx(2**-0.5)
    assert ginv_residual(a, z) == pytest.approx(0.0, abs=1e-12)
    assert ginv_residual(a, torch.eye(2, dtype=torch.float64)[None]) == pytest.approx(0.0)


@pytest.mark.parametrize("kind", available())
def test_projection_state_round_trip(kind: str) -> None:
    ref = build(REF)
    m = shared(kind, ref)
    state, own = ref.projection_state(), m.projection_state()
    assert own.keys() == state.keys()
    for name, tensor in state.items():
        assert torch.equal(own[name], tensor), name
    x = torch.randn(B, N, DIM)
    with torch.no_grad():
        for mine, theirs in zip(m.qkv_heads(x), ref.qkv_heads(x), strict=True):
            # the same features, split into this kind's heads (hydra: one per feature)
            assert_close(mine.transpose(1, 2).flatten(2), theirs.transpose(1, 2).flatten(2))


# ---------------------------------------------------------------------------- FLOPs


@pytest.mark.parametrize(("kind", "opts"), CASES)
def test_analytic_flops_equal_counted(kind: str, opts: dict[str, Any]) -> None:
    m = build(kind, **opts)
    # the counters see all but the element-wise work a mechanism counts (Hydra's)
    counted = m.flops(N) - m.elementwise_flops(N)
    counts = count_flops(m, torch.randn(B, N, DIM), analytic=counted)
    assert counts.analytic == counts.fvcore == counts.flop_counter, counts
    parts = m.projection_flops(N) + m.attend_flops(N) + m.elementwise_flops(N)
    assert m.flops() == m.flops(N) == parts
    assert m.attend_flops(N) > 0
    assert counts.fvcore > m.projection_flops(N), f"{kind}: the attention itself counted as 0"


class _Bmm(nn.Module):
    """x x^T with an op that both counters know."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.bmm(x, x.transpose(1, 2))


class _Addbmm(nn.Module):
    """x[0] + sum_b x_b x_b^T through aten::addbmm, which fvcore has no handle for."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.addbmm(x[0], x, x.transpose(1, 2))


class _Mv(nn.Module):
    """A matrix-vector product (aten::mv), which fvcore has no handle for."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.mv(x[0], x[0, 0])


class _EllipsisEinsum(nn.Module):
    """An einsum with '...', which effbench's einsum handle refuses to guess at."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("...ij,...kj->...ik", x, x)


class _Baddbmm(nn.Module):
    """x + x x^T through aten::baddbmm (the Nystrom pseudo-inverse uses it)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.baddbmm(x, x, x.transpose(1, 2), beta=2, alpha=-1)


@pytest.mark.parametrize("module", [_Bmm(), _Baddbmm()], ids=["bmm", "baddbmm"])
def test_counted_op_is_counted(module: nn.Module) -> None:
    n = 8
    counts = count_flops(module, torch.randn(B, n, n), analytic=2 * n**3)
    assert counts.analytic == counts.fvcore == counts.flop_counter


@pytest.mark.parametrize(
    ("module", "op"),
    [(_Addbmm(), "addbmm"), (_Mv(), "aten::mv"), (_EllipsisEinsum(), "einsum")],
    ids=["addbmm", "mv", "einsum"],
)
def test_uncounted_op_raises(module: nn.Module, op: str) -> None:
    with pytest.raises(FlopCountError, match=op):
        count_flops(module, torch.randn(B, 8, 8), analytic=0)


# ---------------------------------------------------------------------------- exact limits


def exact_cases() -> list[Any]:
    """Every exact kind but REF, with its variants (qkv_bias is a test parameter)."""
    cases = {}
    for kind, opts in [(k, {}) for k in available()] + VARIANTS:
        opts = {k: v for k, v in opts.items() if k != "qkv_bias"}
        if CONFIGS[kind].exact and kind != REF and kind in available():
            cases[case_id(kind, opts)] = pytest.param(kind, opts, id=case_id(kind, opts))
    return list(cases.values())


@pytest.mark.parametrize("qkv_bias", [True, False])
@pytest.mark.parametrize(("kind", "opts"), exact_cases())
def test_exact_kinds_agree(kind: str, opts: dict[str, Any], qkv_bias: bool) -> None:
    ref = build(REF, qkv_bias=qkv_bias)
    m = shared(kind, ref, qkv_bias=qkv_bias, **opts)
    x = torch.randn(B, N, DIM)
    xr, xm = x.clone().requires_grad_(), x.clone().requires_grad_()
    assert_agree(m(xm), ref(xr), [xm], [xr], atol=1e-5)
    assert_close(m.attention_map(x), ref.attention_map(x), atol=1e-6, rtol=0)
    assert_close(ref.attention_map(x), ref.exact_map(x))


def test_nystrom_with_all_landmarks_is_exact() -> None:
    # With landmarks == N the segment means are Q and K themselves, so F = A = B =
    # softmax(Q K^T / sqrt(d)) and F pinv(A) B = A once Newton-Schulz has converged. A random
    # softmax matrix of this size has a condition number of 1e3-1e6 (measured over seeds),
    # which in float32 amplifies rounding to ~1e-3; in float64 the identity holds to ~1e-12,
    # so the check runs in float64 on unit-scale inputs and can be tight.
    n = 17
    ref = build(REF, seq_len=n).double()
    m = shared("nystrom", ref, landmarks=n, conv_kernel=0, pinv_iterations=50).double()
    x = torch.randn(B, n, DIM, dtype=torch.float64)
    with torch.no_grad():
        q, k, _ = ref.qkv_heads(x)
        exact = softmax_weights(q, k, ref.scale)
        # 50 iterations converge for any condition number far below 1/eps(float64).
        assert torch.linalg.cond(exact).max() < 1e8
        assert_close(m.weights(q, k), exact, atol=1e-9, rtol=0)
        assert_close(m(x), ref(x), atol=1e-9, rtol=0)


@pytest.mark.parametrize("share_kv", [False, True])
def test_linformer_identity_projections_are_exact(share_kv: bool) -> None:
    n = 17
    ref = build(REF, seq_len=n)
    m = shared("linformer", ref, k=n, share_kv=share_kv)
    assert (m.f is m.e) == share_kv
    with torch.no_grad():
        m.e.copy_(torch.eye(n))
        m.f.copy_(torch.eye(n))
    x = torch.randn(B, n, DIM)
    with torch.no_grad():
        assert_close(m(x), ref(x), atol=1e-5, rtol=0)
    assert_close(m.attention_map(x), ref.attention_map(x), atol=1e-6, rtol=0)


def test_performer_error_falls_with_features() -> None:
    n, redraws = 33, 8
    ref = build(REF, seq_len=n)
    with torch.no_grad():
        q, k, v = ref.qkv_heads(torch.randn(B, n, DIM))
        exact = softmax_attention(q, k, v, ref.scale)
        errors = []
        for features in (8, 32, 128, 512):
            m = build("performer", seq_len=n, features=features, kernel="softmax").eval()
            rel = []
            for _ in range(redraws):  # average over draws of the random features
                m.redraw()
                rel.append(((m.attend(q, k, v) - exact).norm() / exact.norm()).item())
            errors.append(sum(rel) / redraws)
    assert all(a > b for a, b in itertools.pairwise(errors)), errors
    # Roughly 1/sqrt(m): 64x the features should cut the error well below half (~0.25 seen).
    assert errors[-1] < 0.5 * errors[0], errors


def test_orthogonal_features_are_gaussian_rows() -> None:
    # FAVOR+ is unbiased only if every row is marginally N(0, I): orthogonal directions within
    # a block, each uniform on the sphere, times an independent chi-distributed norm.
    d, blocks = 16, 512
    assert orthogonal_features(40, d).shape == (40, d)
    w = orthogonal_features(blocks * d, d).view(blocks, d, d)
    u = w / w.norm(dim=-1, keepdim=True)
    assert_close(u @ u.transpose(-2, -1), torch.eye(d).expand(blocks, d, d), atol=1e-5, rtol=0)
    # Mean of each row position over blocks: 0 with standard error 1/sqrt(512) = 0.044.
    assert w.mean(dim=0).abs().max() < 0.25
    # Second moment of each coordinate: 1 with standard error sqrt(2/8192) = 0.016.
    assert ((w**2).mean(dim=(0, 1)) - 1).abs().max() < 0.1


def test_performer_without_redraw_is_deterministic() -> None:
    m = build("performer", redraw_interval=0)
    x = torch.randn(B, N, DIM)
    features = m.features.clone()
    with torch.no_grad():
        m.eval()
        assert torch.equal(m(x), m(x))
        m.train()
        m(x)
        m(x)
    assert torch.equal(m.features, features)


@pytest.mark.parametrize("interval", [1, 3])
def test_performer_redraws_on_schedule(interval: int) -> None:
    m = build("performer", redraw_interval=interval).train()
    x = torch.randn(B, N, DIM)
    changed = []
    with torch.no_grad():
        for _ in range(2 * interval):
            before = m.features.clone()
            m(x)
            changed.append(not torch.equal(m.features, before))
        assert changed == [(i + 1) % interval == 0 for i in range(2 * interval)]
        m.eval()
        before = m.features.clone()
        m(x)
        assert torch.equal(m.features, before), "features redrawn in eval mode"


@pytest.mark.parametrize(("n", "m"), [(17, 5), (26, 8), (33, 32), (23, 1), (24, 6), (20, 20)])
def test_segment_means_match_explicit_loop(n: int, m: int) -> None:
    x = torch.randn(B, HEADS, n, 4)
    segments = torch.tensor_split(x, m, dim=-2)  # the first n % m segments hold one more
    assert len(segments) == m and all(s.shape[-2] in (n // m, n // m + 1) for s in segments)
    expected = torch.stack([s.mean(dim=-2) for s in segments], dim=-2)
    out = segment_means(x, m)
    assert out.shape == (B, HEADS, m, 4)
    assert_close(out, expected)


def test_nystrom_uses_exactly_the_configured_landmarks() -> None:
    m = build("nystrom", landmarks=8)
    with torch.no_grad():
        q, k, _ = m.qkv_heads(torch.randn(B, N, DIM))
        f, z, b = m._factors(q, k)
    assert f.shape == (B, HEADS, N, 8)
    assert z.shape == (B, HEADS, 8, 8)
    assert b.shape == (B, HEADS, 8, N)


# ---------------------------------------------------------------------------- hybrid


class _ShapeRecorder(TorchDispatchMode):
    """Records the shape of every tensor that an aten op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.shapes += [tuple(t.shape) for t in tree_leaves(out) if isinstance(t, Tensor)]
        return out


def dense_intermediates(m: Attention, x: Tensor) -> list[tuple[int, ...]]:
    """Shapes produced by m(x) with two or more dims at least the patch count."""
    rec = _ShapeRecorder()
    with torch.no_grad(), rec:
        m(x)
    p = x.shape[1] - 1
    return [s for s in rec.shapes if sum(d >= p for d in s) >= 2]


def test_hybrid_work_is_linear_in_tokens() -> None:
    attend = {}
    for side in (8, 16):
        n = 1 + side * side
        m = build("hybrid", seq_len=n)
        assert m.idx.shape == (side * side, m.cfg.window**2 + 1)
        x = torch.randn(1, n, DIM)
        counts = count_flops(m, x, analytic=m.flops(n))
        attend[side] = counts.fvcore - m.projection_flops(n)
        assert attend[side] == m.attend_flops(n)
    # 257 / 65 = 3.95x the tokens: linear work grows ~4x, dense attention would grow ~16x.
    assert 3.5 < attend[16] / attend[8] < 4.5


def test_hybrid_never_materialises_dense_attention() -> None:
    n = 1 + 16 * 16
    assert n - 1 > 4 * DIM  # so that no projection width passes for a token count
    x = torch.randn(1, n, DIM)
    assert not dense_intermediates(build("hybrid", seq_len=n), x)
    assert dense_intermediates(build(REF, seq_len=n), x)  # the check does catch dense


@pytest.mark.parametrize(("window", "dilation"), [(3, 2), (3, 1), (5, 3)])
def test_hybrid_neighbourhoods_are_dilated_windows(window: int, dilation: int) -> None:
    side = 8
    m = build("hybrid", seq_len=1 + side * side, window=window, dilation=dilation)
    with torch.no_grad():
        m.gate.fill_(50.0)  # sigmoid(50) == 1 in float32: the local branch alone
    amap = m.attention_map(torch.randn(B, 1 + side * side, DIM))
    offsets = [(i - window // 2) * dilation for i in range(window)]
    for p in range(side * side):
        r, c = divmod(p, side)
        cells = {
            1 + (r + dr) * side + (c + dc)
            for dr in offsets
            for dc in offsets
            if 0 <= r + dr < side and 0 <= c + dc < side
        }
        keys = cells | {0}  # every patch also attends to CLS
        assert set(m.idx[p][m.valid[p]].tolist()) == keys
        assert (m.idx[p][~m.valid[p]] == side * side + 1).all()
        outside = [j for j in range(1 + side * side) if j not in keys]
        assert (amap[:, :, 1 + p, outside] == 0).all()


def test_hybrid_cls_row_is_exact() -> None:
    ref = build(REF)
    m = shared("hybrid", ref)
    x = torch.randn(B, N, DIM)
    assert_close(m.attention_map(x)[:, :, 0], m.exact_map(x)[:, :, 0])
    with torch.no_grad():
        assert_close(m(x)[:, 0], ref(x)[:, 0], atol=1e-5, rtol=0)


def test_hybrid_whole_grid_window_is_exact() -> None:
    # A 7x7 window on a 4x4 grid covers every patch; with the gate saturated the global
    # branch drops out and every patch row is exact softmax over all tokens.
    n = 17
    ref = build(REF, seq_len=n)
    m = shared("hybrid", ref, window=7, dilation=1)
    with torch.no_grad():
        m.gate.fill_(50.0)
    x = torch.randn(B, n, DIM)
    with torch.no_grad():
        assert_close(m(x), ref(x), atol=1e-5, rtol=0)
    assert_close(m.attention_map(x), ref.attention_map(x), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------- sdpa


@pytest.mark.parametrize(
    ("backend", "expected"), [("math", {"math"}), ("auto", {"flash_cpu", "math"})]
)
def test_sdpa_backend_used_on_cpu(backend: str, expected: set[str]) -> None:
    m = build("sdpa", backend=backend)
    assert isinstance(m, SdpaAttention)
    # the backend the aten operators show, as the profile grid reads it
    with torch.no_grad():
        q, k, v = m.qkv_heads(torch.randn(B, N, DIM))
    used = backend_from_ops(dispatched_ops(lambda: m.attend(q, k, v)))
    assert isinstance(used, str)
    assert used in expected


# ---------------------------------------------------------------------------- hooks


@pytest.mark.parametrize("kind", available())
def test_adapt_state_fits_the_layer_on_another_grid(kind: str) -> None:
    # Weights trained on a 4x4 grid, adapted by the mechanism's own hook, load into the
    # same mechanism built for a 6x6 grid; on the same grid they are kept as they are.
    small, big = build(kind, seq_len=1 + 4 * 4), build(kind, seq_len=1 + 6 * 6)
    state = small.state_dict()
    same = small.adapt_state(state, trained_grid=(4, 4), grid=(4, 4))
    assert same.keys() == state.keys()
    assert all(torch.equal(same[k], state[k]) for k in state)
    adapted = big.adapt_state(state, trained_grid=(4, 4), grid=(6, 6))
    big.load_state_dict(adapted)
    shared_state = small.projection_state()
    for name, tensor in big.projection_state().items():
        assert torch.equal(tensor, shared_state[name]), f"{kind}: {name} changed"


def test_nystrom_diagnostics_measure_the_pseudo_inverse() -> None:
    residual, general = {}, {}
    with torch.no_grad():
        q, k, v = build(REF).qkv_heads(torch.randn(B, N, DIM))
        for iterations in (1, 6, 30):
            m = build("nystrom", pinv_iterations=iterations)
            found = m.diagnostics(q, k, v)
            residual[iterations], general[iterations] = (
                found["pinv_residual"],
                found["ginv_residual"],
            )
    assert set(found) == {"pinv_residual", "ginv_residual"}
    assert residual[1] > residual[6] > residual[30] >= 0, residual
    assert residual[30] < 1e-2, residual  # converged, up to float32 rounding
    assert general[1] > general[30] and general[30] < 1e-2, general


def test_performer_model_diagnostics_curve() -> None:
    from effbench.attention.performer import CURVE_FEATURES

    layers = [build("performer", seq_len=FEWEST) for _ in range(2)]
    inputs = [torch.randn(B, FEWEST, DIM) for _ in layers]
    with torch.no_grad():
        (name,) = type(layers[0]).model_diagnostics(layers, inputs)
        curve = type(layers[0]).model_diagnostics(layers, inputs)[name]
        again = type(layers[0]).model_diagnostics(layers, inputs)[name]
    assert name == "performer_curve"
    assert [c["features"] for c in curve] == list(CURVE_FEATURES)
    assert curve == again  # fresh features from a fixed seed
    assert curve[-1]["rel_error"] < curve[0]["rel_error"]


@pytest.mark.parametrize("kind", available())
def test_diagnostics_name_record_fields(kind: str) -> None:
    from effbench.results import AnalyzeRecord, LayerFidelity

    m = build(kind, seq_len=FEWEST).eval()
    x = torch.randn(B, FEWEST, DIM)
    with torch.no_grad():
        own = m.diagnostics(*m.qkv_heads(x))
        whole = type(m).model_diagnostics([m], [x])
    assert set(own) <= set(LayerFidelity.model_fields) - {"layer"}, own
    assert set(whole) <= set(AnalyzeRecord.model_fields), whole


def test_performer_chunked_inference_equals_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without autograd the queries' features are taken in chunks; with it, in one pass.
    from effbench.attention import performer

    m = build("performer").eval()
    x = torch.randn(B, N, DIM)
    monkeypatch.setattr(performer, "QUERY_CHUNK", 3)
    with torch.no_grad():
        chunked = m(x)
    one_pass = m(x.clone().requires_grad_())
    assert_close(chunked, one_pass.detach(), atol=1e-6, rtol=0)
