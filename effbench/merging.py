"""Token merging (ToMe: Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023): after a
block's attention, bipartite soft matching on the keys merges r tokens into their most similar
ones, averaging features weighted by how many tokens each already holds; CLS is never merged.

How many tokens each block sees (`block_tokens`), what the matching costs (`match_flops`) and
the merge itself (`merge_tokens`), re-derived from the paper's algorithm: split the tokens
alternately into A (even positions, CLS first) and B (odd), score every A token against every
B token by the cosine similarity of their keys (mean over heads), keep each A token's best
edge, and merge the r A tokens with the best edges into their B partners. Sizes travel with
the tokens so that attention can count a merged token as the tokens it holds (proportional
attention: `Attention.attend_sized`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def merged_count(tokens: int, r: int) -> int:
    """Tokens one block merges out of `tokens`: r, but at most half of those beside CLS (the
    A side holds CLS, which is never merged)."""
    return min(r, (tokens - 1) // 2)


def block_tokens(tokens: int, r: int, depth: int) -> list[int]:
    """Tokens entering each of `depth` blocks, then those leaving the last: depth + 1 counts."""
    counts = [tokens]
    for _ in range(depth):
        counts.append(counts[-1] - merged_count(counts[-1], r))
    return counts


def match_flops(tokens: int, r: int, head_dim: int) -> int:
    """FLOPs per sample of one block's matching: the A x B similarity product of the keys
    (2 per multiply-add); none where the block merges nothing."""
    if merged_count(tokens, r) == 0:
        return 0
    a, b = math.ceil(tokens / 2), tokens // 2
    return 2 * a * b * head_dim


def merge_tokens(x: Tensor, size: Tensor | None, keys: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """Merge `merged_count(N, r)` tokens of x (B, N, C), whose sizes are `size` (B, N, 1; None:
    all 1), matched on `keys` (B, H, N, d): -> the merged tokens (B, N - r, C), CLS first,
    each the size-weighted mean of those it holds, and their sizes."""
    B, N, C = x.shape
    r = merged_count(N, r)
    if size is None:
        size = torch.ones(B, N, 1, device=x.device, dtype=x.dtype)
    if r == 0:
        return x, size
    with torch.no_grad():  # which tokens merge is a choice, not something to learn through
        metric = keys.mean(dim=1)
        metric = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        scores = metric[:, ::2] @ metric[:, 1::2].transpose(-2, -1)  # (B, |A|, |B|)
        scores[:, 0, :] = -math.inf  # CLS, A's first token, is never merged
        best, partner = scores.max(dim=-1)  # each A token's most similar B token
        order = best.argsort(dim=-1, descending=True)[..., None]  # (B, |A|, 1)
        kept = order[:, r:].sort(dim=1).values  # A tokens left alone, in place: CLS first
        merged, into = order[:, :r], partner[..., None].gather(1, order[:, :r])
    weighted = torch.cat([x * size, size], dim=-1)  # features and size merge alike
    a, b = weighted[:, ::2], weighted[:, 1::2]
    width = weighted.shape[-1]
    keep = a.gather(1, kept.expand(-1, -1, width))
    src = a.gather(1, merged.expand(-1, -1, width))
    b = b.scatter_reduce(1, into.expand(-1, -1, width), src, reduce="sum")
    out = torch.cat([keep, b], dim=1)
    total = out[..., C:]
    return out[..., :C] / total, total
