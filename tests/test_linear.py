"""The exponential and linear-attention helpers that performer, hybrid and relu_linear share:
each path (eager, traced by torch.compile, with and without autograd) against the plain
formula."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.testing import assert_close

from effbench.attention.base import LOG2E, exp_scale, exp_scaled
from effbench.attention.hybrid import elu_features
from effbench.attention.linear import linear_readout
from effbench.attention.performer import SOFTMAX_EPS, positive_features


def traced(fn: Callable[..., Any]) -> Callable[..., Any]:
    """fn under torch.compile's tracing, run by the eager backend: no C++ compiler needed, and
    torch.compiler.is_compiling() is True inside, as under inductor."""
    torch._dynamo.reset()
    return torch.compile(fn, backend="eager", fullgraph=True)


def exp_of(x: Tensor) -> Tensor:
    return exp_scaled(x * exp_scale())


def test_exp_scaled_is_exp_in_both_modes() -> None:
    x = torch.linspace(-20, 5, 10_001)
    exact = torch.exp(x.double())
    assert exp_scale() == pytest.approx(LOG2E)
    assert_close(exp_of(x).double(), exact, rtol=2e-6, atol=0)
    assert_close(traced(exp_of)(x).double(), exact, rtol=2e-6, atol=0)
    assert traced(lambda t: t * exp_scale())(torch.ones(())).item() == 1.0  # exp, not exp2


def test_exp_scaled_in_place_writes_into_its_input() -> None:
    x = torch.linspace(-3, 3, 7)
    z = x * exp_scale()
    out = exp_scaled(z, inplace=True)
    assert out.data_ptr() == z.data_ptr()
    assert_close(out, torch.exp(x), rtol=2e-6, atol=0)


def reference_readout(phi_q: Tensor, context: Tensor, ksum: Tensor, eps: float) -> Tensor:
    return (phi_q @ context) / (phi_q @ ksum + eps)


@pytest.mark.parametrize("eps", [0.0, 1e-3])
def test_readout_paths_agree_with_the_formula(eps: float) -> None:
    g = torch.Generator().manual_seed(0)
    phi_q = torch.rand(2, 3, 17, 8, generator=g) + 0.1
    context = torch.randn(2, 3, 8, 5, generator=g)
    ksum = torch.rand(2, 3, 8, 1, generator=g) + 1.0
    want = reference_readout(phi_q, context, ksum, eps)
    with torch.no_grad():
        assert_close(linear_readout(phi_q, context, ksum, eps=eps), want)
        compiled = traced(lambda a, b, c: linear_readout(a, b, c, eps=eps))
        assert_close(compiled(phi_q, context, ksum), want)
    # With autograd: the same values and the formula's gradients.
    leaves = [t.clone().requires_grad_(True) for t in (phi_q, context, ksum)]
    linear_readout(*leaves, eps=eps).square().sum().backward()
    ref = [t.clone().requires_grad_(True) for t in (phi_q, context, ksum)]
    reference_readout(*ref, eps).square().sum().backward()
    for got, exp in zip(leaves, ref, strict=True):
        assert_close(got.grad, exp.grad)


@pytest.mark.parametrize("is_query", [True, False])
def test_positive_features_are_the_favor_formula(is_query: bool) -> None:
    g = torch.Generator().manual_seed(1)
    d, m = 8, 16
    scale = d**-0.25
    x = torch.randn(2, 2, 33, d, generator=g) * 2
    ws_t = torch.randn(d, m, generator=g) * scale
    proj = x.double() @ ws_t.double()
    stab = proj.amax(dim=-1 if is_query else (-2, -1), keepdim=True)
    sq = x.double().square().sum(-1, keepdim=True) * scale**2 / 2
    want = torch.exp(proj - sq - stab) + SOFTMAX_EPS
    with torch.no_grad():
        got = positive_features(x, ws_t, is_query=is_query, scale=scale)
    assert_close(got.double(), want, rtol=1e-5, atol=1e-7)
    xg = x.clone().requires_grad_(True)
    assert_close(positive_features(xg, ws_t, is_query=is_query, scale=scale), got)


def test_elu_features_are_elu_plus_one_with_its_gradients() -> None:
    x = torch.linspace(-12, 6, 501, dtype=torch.float64)
    with torch.no_grad():
        assert_close(elu_features(x.float()).double(), F.elu(x) + 1, rtol=2e-6, atol=1e-7)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    elu_features(a).sum().backward()
    (F.elu(b) + 1).sum().backward()
    assert_close(a.grad, b.grad)
