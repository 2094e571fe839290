"""What PyTorch actually dispatched: the aten operators a call runs (one recorder) and the
scaled-dot-product-attention backend that they, or the CUDA kernel names, show."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# aten kernels behind F.scaled_dot_product_attention, and the backend each one means.
KERNEL_BACKENDS = {
    "_scaled_dot_product_flash_attention_for_cpu": "flash_cpu",
    "_scaled_dot_product_flash_attention": "flash",
    "_scaled_dot_product_efficient_attention": "efficient",
    "_scaled_dot_product_cudnn_attention": "cudnn",
    "_scaled_dot_product_fused_attention_overrideable": "overrideable",
}


# Substrings of CUDA kernel names and the SDPA backend each one means, checked in this order:
# cuDNN's fused kernels ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop...") also say
# "flash"; the memory-efficient kernels are CUTLASS FMHA ("fmha_cutlassF_...", templated on
# "PyTorchMemEffAttention::AttentionKernel"); FlashAttention's are "pytorch_flash::flash_fwd...".
KERNEL_NAME_BACKENDS = (
    ("cudnn", "cudnn"),
    ("fmha_cutlass", "efficient"),
    ("memeffattention", "efficient"),
    ("flash", "flash"),
)


def backend_from_kernels(kernel_names: list[str]) -> str | None:
    """The SDPA backend that the CUDA kernels which ran show: 'cudnn', 'efficient' or
    'flash'; None when no fused attention kernel ran (the math path, or no SDPA at all)."""
    lowered = [k.lower() for k in kernel_names]
    for marker, backend in KERNEL_NAME_BACKENDS:
        if any(marker in k for k in lowered):
            return backend
    return None


class OpRecorder(TorchDispatchMode):
    """A dispatch mode that notes the aten op names (without overload) that run, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


def backend_from_ops(op_names: list[str]) -> str:
    """The SDPA backend that a list of dispatched aten op names shows ('math' when none)."""
    for name in op_names:
        if name in KERNEL_BACKENDS:
            return KERNEL_BACKENDS[name]
    return "math"


def dispatched_ops(fn: Callable[[], Any]) -> list[str]:
    """The aten op names (without overload) that fn dispatches, in order, under no_grad.

    fn must not enter `torch.inference_mode` itself: under it, composite ops such as
    `scaled_dot_product_attention` reach the recorder whole, hiding the kernel they choose.
    """
    rec = OpRecorder()
    with torch.no_grad(), rec:
        fn()
    return rec.names


def sdpa_backend_fields(
    requested: str, *, device: torch.device, kernels: list[str], ops: list[str]
) -> dict[str, Any]:
    """The SDPA backend that ran, from the CUDA kernel names on a GPU (the aten operators
    otherwise), and whether it fell back to the math path though another was allowed."""
    if device.type == "cuda" and kernels:
        backend, source = backend_from_kernels(kernels) or "math", "CUDA kernel names"
    else:
        backend = backend_from_ops([o.removeprefix("aten::") for o in ops])
        source = "aten operators"
    return {
        "sdpa_backend": backend,
        "sdpa_backend_source": source,
        "sdpa_math_fallback": backend == "math" and requested != "math",
    }
