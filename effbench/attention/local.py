"""What the local-attention kinds share: which backend runs, flex attention on the patch
grid, and the gathered path.

Tokens are [CLS, row-major rows x cols patches]; a patch query attends to a neighbourhood
of patches plus CLS, and the CLS query attends to every token. The hybrid's dilated windows
(`effbench.attention.dilated`) and the neighbourhood kind's clamped ones
(`effbench.attention.clamped`) each run through one of a few backends, and this module
holds the parts that do not depend on the window's shape:

- `resolve_backend` picks the backend for a configured choice and device, and
  `reference_backend` forces the portable path (`slices` or `tiles`), which FLOP counters
  and JIT tracing can see into;
- `flex_supported`, `compiled_flex` and `grid_block_mask` run
  `torch.nn.attention.flex_attention` with a block mask over [CLS, patches];
- `gather_attention` (with `gathered_weights` and `dense_rows`) gathers each query's keys
  and values by index: the plain reference the other paths are tested against, and the
  attention maps.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from effbench.attention.base import matmul_flops, needs_grad

_reference_only = False


@contextlib.contextmanager
def reference_backend() -> Iterator[None]:
    """Run every local attention on its portable path (`slices`; `tiles` for the clamped
    neighbourhoods) inside this block: FLOP counters and JIT tracing cannot see into flex
    attention's compiled kernel."""
    global _reference_only
    before, _reference_only = _reference_only, True
    try:
        yield
    finally:
        _reference_only = before


# -- which backend runs -------------------------------------------------------------------


def resolve_backend(
    choice: str, device: torch.device, *, grad: bool, portable: str = "slices"
) -> str:
    """The backend that runs for a configured `choice` on this device: `auto` is flex where
    it runs forward and backward (CUDA), else `portable`; flex falls back to `portable`
    where it cannot run (the CPU with gradients). `portable` is the path that runs anywhere
    and that FLOP counters see into: `slices` for the hybrid's zero-padded windows, `tiles`
    for the clamped neighbourhoods."""
    if _reference_only and choice != "gather":
        return portable
    if choice == "auto":
        return "flex" if device.type == "cuda" and flex_supported(device, grad=grad) else portable
    if choice == "flex" and not flex_supported(device, grad=grad):
        return portable
    return choice


# -- flex attention -----------------------------------------------------------------------


def flex_supported(device: torch.device, *, grad: bool) -> bool:
    """Whether the installed torch runs flex attention here: CUDA, or the CPU in inference."""
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and not grad


@functools.cache
def compiled_flex() -> Callable[..., Tensor]:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def grid_block_mask(patch_sees: Callable[..., Tensor], rows: int, cols: int, device: str) -> Any:
    """Flex attention's block mask over [CLS, patches]: the CLS query and the CLS key are
    global; patch query (qr, qc) sees patch key (kr, kc) where `patch_sees(qr, qc, kr, kc)`."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        qp, kp = q_idx - 1, kv_idx - 1
        sees = patch_sees(qp // cols, qp % cols, kp // cols, kp % cols)
        return (q_idx == 0) | (kv_idx == 0) | sees

    n = rows * cols + 1
    return create_block_mask(mask_mod, None, None, n, n, device=device)


# -- the gathered path --------------------------------------------------------------------

# Bytes of one query chunk's gathered keys, values, logits and weights in `gather_attention`
# without autograd: a few hundred queries at a time keep them in cache whatever N is.
GATHER_CHUNK_BYTES = 8 * 2**20


def gathered_weights(
    q: Tensor, table: Tensor, idx: Tensor, valid: Tensor | None, scale: float
) -> Tensor:
    """Softmax weights (B, H, c, T) of queries q (B, H, c, d) over the keys `idx` (c, T)
    names in a pad-extended key table (B, H, N + 1, d); `valid` (c, T) masks pad slots (None:
    there are none). Zero on pad slots; computed in float32 at least (bfloat16 logits are
    normalised in float32)."""
    B, H, c, d = q.shape
    kn = table.index_select(2, idx.reshape(-1)).view(B, H, c, idx.shape[1], d)
    logits = ((q * scale).unsqueeze(-2) @ kn.transpose(-2, -1)).squeeze(-2)  # (B, H, c, T)
    if valid is not None:
        logits = logits.masked_fill(~valid, float("-inf"))
    return torch.softmax(logits, dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))


def dense_rows(attn: Tensor, idx: Tensor, n: int) -> Tensor:
    """Weights over gathered keys (B, H, c, T), keys `idx` (c, T) into [CLS, patches..., pad],
    as dense rows over the n tokens (B, H, c, n): repeated keys summed, the pad slot dropped."""
    B, H, c, _ = attn.shape
    dense = attn.new_zeros(B, H, c, n + 1)
    dense.scatter_add_(-1, idx.expand(B, H, -1, -1), attn)
    return dense[..., :n]


def _gathered_chunk(
    q: Tensor, kt: Tensor, vt: Tensor, idx: Tensor, valid: Tensor | None, scale: float
) -> Tensor:
    """(B, H, c, d) outputs of queries q over their gathered keys and values."""
    B, H, c, d = q.shape
    attn = gathered_weights(q, kt, idx, valid, scale)
    vn = vt.index_select(2, idx.reshape(-1)).view(B, H, c, idx.shape[1], d)
    return (attn.to(vn.dtype).unsqueeze(-2) @ vn).squeeze(-2)


def gather_attention(
    q: Tensor, k: Tensor, v: Tensor, idx: Tensor, valid: Tensor | None, scale: float
) -> Tensor:
    """Patch queries of q, k, v (B, H, 1 + P, d) over the T keys and values `idx` (P, T)
    names in [CLS, patches..., pad] (`valid` masks pad slots; None: there are none):
    (B, H, P, d). O(P * T * d).

    Both products are batched matrix products (T logits, then T weighted values per query),
    which fvcore and FlopCounterMode count: 2 * matmul_flops(H, P, d, T) per sample. Without
    autograd the queries go in chunks of about `GATHER_CHUNK_BYTES`, so that the gathered
    keys and values stay in cache; with it, in one pass.
    """
    B, H, _, d = q.shape
    kt, vt = F.pad(k, (0, 0, 0, 1)), F.pad(v, (0, 0, 0, 1))  # the pad slot: index N
    qp = q[:, :, 1:]
    p, taps = idx.shape
    per_query = B * H * taps * (2 * d + 2) * max(q.element_size(), 4)
    step = max(1, GATHER_CHUNK_BYTES // per_query)
    if needs_grad(q, k, v) or step >= p:
        return _gathered_chunk(qp, kt, vt, idx, valid, scale)
    chunks = [
        _gathered_chunk(
            qp[:, :, p0 : p0 + step],
            kt,
            vt,
            idx[p0 : p0 + step],
            None if valid is None else valid[p0 : p0 + step],
            scale,
        )
        for p0 in range(0, p, step)
    ]
    return torch.cat(chunks, dim=2)


def gather_attention_flops(heads: int, patches: int, taps: int, d: int) -> int:
    """FLOPs of one sample's `gather_attention`: logits and weighted values of every patch
    query over its `taps` keys (2 per multiply-add)."""
    return 2 * matmul_flops(heads, patches, d, taps)
