"""Whether a training run was still learning when its budget ended, by a stated rule on its own
curve, so that a ranking of such runs is called what it is: a ranking of learning speed within
the budget, not of what each mechanism reaches. No torch.

The rule: a run of at least MIN_EPOCHS epochs was still learning when its best validation epoch
lies in the last LAST_SHARE of its epochs, or when its training loss over the last quarter of
its epochs (at least two) fell by more than SLOPE of its level per epoch (a least-squares
line). Fewer epochs: unknown (None).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

MIN_EPOCHS = 3
LAST_SHARE = 0.2  # the best validation epoch in the last 20 % of the run
SLOPE = 0.01  # training loss still falling by more than 1 % of its level per epoch
RULE = (
    f"best validation epoch in the last {LAST_SHARE:.0%} of the run, or training loss over the "
    f"last quarter of the epochs still falling by more than {SLOPE:.0%} per epoch"
)


def still_learning(losses: Sequence[float], best_epoch: int | None) -> bool | None:
    """The rule above on a run's per-epoch training losses (epoch 1 first) and its best
    validation epoch (1-based; None without validation)."""
    n = len(losses)
    if n < MIN_EPOCHS:
        return None
    if best_epoch is not None and best_epoch > n - max(1, math.ceil(LAST_SHARE * n)):
        return True
    tail = list(losses[-max(2, math.ceil(n / 4)) :])
    slope = statistics.linear_regression(range(len(tail)), tail).slope
    level = statistics.fmean(tail)
    return level > 0 and -slope / level > SLOPE
