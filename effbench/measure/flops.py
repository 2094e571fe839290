"""FLOPs, 2 per multiply-add of matrix products: fvcore's and FlopCounterMode's counts (patched
where they miss ops, raising where an attention op would count as zero) beside the analytic
one, and parameter counts."""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from effbench.measure.dispatch import KERNEL_BACKENDS, OpRecorder

# Ops that do multiply-adds: fvcore must have a handle for each one it meets.
COMPUTE_OP_MARKERS = (
    "mm", "matmul", "einsum", "linear", "conv", "attention", "dot", "bilinear", "aten::mv",
    "aten::addmv", "aten::addr", "aten::outer", "aten::ger", "aten::inner", "aten::tensordot",
)  # fmt: skip


class FlopCountError(RuntimeError):
    """An op that does multiply-adds was met by a counter that cannot count it."""


def _shape(v: Any) -> list[int]:
    from fvcore.nn.jit_handles import get_shape

    s = get_shape(v)
    assert s is not None, "FLOP handle met an input without a known shape"
    return s


def _matmul_macs(a: list[int], b: list[int]) -> int:
    """Multiply-adds of torch.matmul with broadcasting, for any ranks."""
    a = [1, *a] if len(a) == 1 else a
    b = [*b, 1] if len(b) == 1 else b
    batch = torch.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))
    assert a[-1] == b[-2], f"matmul shapes {a} x {b} do not chain"
    return math.prod(batch) * a[-2] * a[-1] * b[-1]


def _matmul_handle(inputs: list[Any], outputs: list[Any]) -> int:
    return _matmul_macs(_shape(inputs[0]), _shape(inputs[1]))


def _einsum_handle(inputs: list[Any], outputs: list[Any]) -> int:
    """Exact multiply-adds of a two-operand einsum: the product of every index's size."""
    eq = inputs[0].toIValue().replace(" ", "")
    lhs = eq.split("->")[0].split(",")
    shapes = [_shape(v) for v in inputs[1].node().inputs()]
    if len(lhs) != 2 or "." in eq:
        raise FlopCountError(f"einsum {eq!r}: only two operands without '...' are counted")
    sizes: dict[str, int] = {}
    for letters, shape in zip(lhs, shapes, strict=True):
        sizes.update(zip(letters, shape, strict=True))
    return math.prod(sizes.values())


def _baddbmm_handle(inputs: list[Any], outputs: list[Any]) -> int:
    """aten::baddbmm(input, batch1, batch2): the batched product only (beta/alpha scalings
    and the addition are element-wise)."""
    b, n, k = _shape(inputs[1])
    assert _shape(inputs[2])[-2] == k, "baddbmm shapes do not chain"
    return b * n * k * _shape(inputs[2])[-1]


def _sdpa_handle(inputs: list[Any], outputs: list[Any]) -> int:
    """aten::scaled_dot_product_attention: Q K^T and P V."""
    q, k, v = (_shape(x) for x in inputs[:3])
    return math.prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1])


def _local_attention_handle(inputs: list[Any], outputs: list[Any]) -> int:
    """effbench::local_attention(q, k, v, rows, cols, window, ...): logits and weighted
    values of every patch query over its window + CLS."""
    from effbench.attention.dilated import counted_flops

    rows, cols, window = (inputs[i].toIValue() for i in (3, 4, 5))
    return counted_flops(_shape(inputs[0]), rows, cols, window) // 2


# Ops that fvcore counts by default although they are not matrix products.
_FVCORE_ELEMENTWISE = (
    "aten::batch_norm",
    "aten::group_norm",
    "aten::layer_norm",
    "aten::instance_norm",
    "aten::upsample_nearest2d",
    "aten::upsample_bilinear2d",
    "aten::adaptive_avg_pool2d",
    "aten::grid_sampler",
)


def _zero_handle(inputs: list[Any], outputs: list[Any]) -> int:
    return 0


def fvcore_flops(
    module: nn.Module, *inputs: torch.Tensor
) -> tuple[int, dict[str, int], dict[str, int]]:
    """fvcore's count (x2, so 2 per multiply-add), its split by op and by module name.

    Norms, pooling and upsampling handles are switched off so that the count holds matrix
    products only, like FlopCounterMode's and the analytic one.

    Raises:
        FlopCountError: when an op that does multiply-adds has no handle.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter; failures raise below
        return _fvcore_flops(module, inputs)


def _fvcore_flops(
    module: nn.Module, inputs: tuple[torch.Tensor, ...]
) -> tuple[int, dict[str, int], dict[str, int]]:
    from fvcore.nn import FlopCountAnalysis

    fca = FlopCountAnalysis(module, inputs)
    # set_op_handle(name, None) only marks an op ignored and leaves fvcore's own handle in
    # place, so the element-wise ops that fvcore counts by default get a zero handle instead.
    fca.set_op_handle(
        "aten::matmul", _matmul_handle,
        "aten::einsum", _einsum_handle,
        "aten::baddbmm", _baddbmm_handle,
        "aten::scaled_dot_product_attention", _sdpa_handle,
        "effbench::local_attention", _local_attention_handle,
        **{op: _zero_handle for op in _FVCORE_ELEMENTWISE},
    )  # fmt: skip
    fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    by_op = {k: 2 * int(v) for k, v in fca.by_operator().items() if v}
    missed = Counter(fca.unsupported_ops())
    uncounted = sorted(op for op in missed if any(m in op for m in COMPUTE_OP_MARKERS))
    if uncounted:
        raise FlopCountError(f"fvcore has no FLOP handle for {', '.join(uncounted)}")
    by_module = {k: 2 * int(v) for k, v in fca.by_module().items()}
    return sum(by_op.values()), by_op, by_module


def _cpu_flash_sdpa_flops(
    query, key, value, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def _local_attention_flops(
    q_shape, k_shape, v_shape, rows, cols, window, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    from effbench.attention.dilated import counted_flops

    return counted_flops(q_shape, rows, cols, window)


def _flop_counter_mapping() -> dict[Any, Any]:
    import effbench.attention.dilated  # noqa: F401  (registers effbench::local_attention)

    aten = torch.ops.aten
    out: dict[Any, Any] = {torch.ops.effbench.local_attention: _local_attention_flops}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        out[aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_flash_sdpa_flops
    return out


def flop_counter_flops(fn: Callable[[], Any]) -> tuple[int, dict[str, int], dict[str, int]]:
    """torch.utils.flop_counter.FlopCounterMode's count of fn (already 2 per multiply-add),
    its split by op and by module name (as `named_modules` gives it; the root is "").

    Raises:
        FlopCountError: when an SDPA kernel (`dispatch.KERNEL_BACKENDS`) ran that the counter
            has no formula for: the attention would otherwise silently count as zero.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=_flop_counter_mapping())
    seen = OpRecorder()
    with counter, seen:
        fn()
    known = {getattr(op, "__name__", str(op)).split(".")[0] for op in counter.flop_registry}
    missing = sorted(n for n in set(seen.names) if n in KERNEL_BACKENDS and n not in known)
    if missing:
        raise FlopCountError(f"FlopCounterMode has no formula for {', '.join(missing)}")
    counts = counter.get_flop_counts()
    by_op = {str(k): int(v) for k, v in counts.get("Global", {}).items()}
    # Module keys are "<root class>.<name>"; the root's own key is the bare class name.
    by_module = {
        k.partition(".")[2]: sum(int(v) for v in ops.values())
        for k, ops in counts.items()
        if k != "Global"
    }
    return int(counter.get_total_flops()), by_op, by_module


def rel_spread(*values: int) -> float:
    """(max - min) / max of some counts of the same thing; 0 when all are 0."""
    return (max(values) - min(values)) / max(max(values), 1)


@dataclass(frozen=True)
class FlopCounts:
    """Forward FLOPs per sample, 2 per multiply-add, from three sources, in all and for the
    attention layers alone."""

    analytic: int
    fvcore: int
    flop_counter: int
    by_op: dict[str, int]
    attention_analytic: int
    attention_fvcore: int
    attention_flop_counter: int

    def max_rel_diff(self) -> float:
        """The largest disagreement of the three counts, in all or in the attention."""
        return max(
            rel_spread(self.analytic, self.fvcore, self.flop_counter),
            rel_spread(self.attention_analytic, self.attention_fvcore, self.attention_flop_counter),
        )

    def mismatch(self) -> str:
        return (
            f"FLOP counts disagree by {self.max_rel_diff():.1%}: analytic {self.analytic:,}, "
            f"fvcore {self.fvcore:,}, FlopCounterMode {self.flop_counter:,} (attention: "
            f"{self.attention_analytic:,}, {self.attention_fvcore:,}, "
            f"{self.attention_flop_counter:,})"
        )


def attention_module_names(module: nn.Module) -> list[str]:
    """Names (as `named_modules` gives them) of the attention layers in `module`; [""] when
    `module` is one."""
    from effbench.attention.base import Attention

    names = [n for n, m in module.named_modules() if isinstance(m, Attention)]
    return [""] if "" in names else names


@torch.no_grad()
def count_flops(
    module: nn.Module, x: torch.Tensor, *, analytic: int, attention_analytic: int | None = None
) -> FlopCounts:
    """Count module(x)'s forward FLOPs both ways and return them per sample beside the
    analytic counts. `attention_analytic` is that of its attention layers; unset, it is all
    of `analytic` when the module is an attention layer, else 0."""
    from effbench.attention.local import reference_backend

    was_training = module.training
    module.eval()
    try:
        with reference_backend():
            fv, by_op, fv_modules = fvcore_flops(module, x)
            fc, _, fc_modules = flop_counter_flops(lambda: module(x))
    finally:
        module.train(was_training)
    names = attention_module_names(module)
    if attention_analytic is None:
        attention_analytic = analytic if names == [""] else 0
    b = x.shape[0]
    return FlopCounts(
        analytic=analytic,
        fvcore=fv // b,
        flop_counter=fc // b,
        by_op={k: v // b for k, v in by_op.items()},
        attention_analytic=attention_analytic,
        attention_fvcore=sum(fv_modules.get(n, 0) for n in names) // b,
        attention_flop_counter=sum(fc_modules.get(n, 0) for n in names) // b,
    )


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
