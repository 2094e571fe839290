"""Evaluation of a classifier over a whole split: loss, top-1 and top-5 sums that processes
can add, and the accuracies they give. Shared by training and `scale --checkpoint`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from effbench.results import save_predictions
from effbench.train.distributed import Dist


@torch.no_grad()
def evaluation_sums(
    net: nn.Module,
    loader: Any,
    *,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
    num_classes: int,
    on_batch: Callable[[int, int], None] | None = None,
    predictions: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """(loss sum without smoothing, top-1 hits, top-5 hits, images) of `net` over a loader,
    as one float64 tensor on the loader's device (so that processes can add theirs).
    `predictions`, when given, receives each batch's (top-1 class, label) as a (2, b) tensor."""
    sums: torch.Tensor | None = None
    total = len(loader)
    k = min(5, num_classes)
    for i, (x, y) in enumerate(loader.iterate(), start=1):
        with autocast():
            logits = net(x).float()
        if sums is None:
            sums = torch.zeros(4, dtype=torch.float64, device=logits.device)
        top = logits.topk(k, dim=-1).indices
        sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
        sums[1] += (top[:, 0] == y).sum()
        sums[2] += (top == y[:, None]).any(-1).sum()
        sums[3] += y.shape[0]
        if predictions is not None:
            predictions.append(torch.stack([top[:, 0], y]))
        if on_batch is not None:
            on_batch(i, total)
    assert sums is not None, "evaluation on an empty split"
    return sums


def accuracy(sums: torch.Tensor) -> dict[str, float]:
    """`evaluation_sums` as mean loss, top-1 and top-5."""
    loss, top1, top5, n = sums.tolist()
    return {"loss": loss / n, "top1": top1 / n, "top5": top5 / n, "n": n}


def keep_predictions(batches: list[torch.Tensor], *, dist: Dist, directory: Path) -> None:
    """Write the test split's predictions (`evaluation_sums`' (top-1 class, label) batches of
    every process, in the split's order) to the run directory: rank 0 does."""
    predicted, label = dist.gather_interleaved(torch.cat(batches, dim=1).T).T
    if dist.main:
        save_predictions(directory, predicted.numpy(), label.numpy())
