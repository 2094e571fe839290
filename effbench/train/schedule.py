"""A run's budget laid over its steps: how many optimizer steps it may take (`ep`, `flop`) or
for how long (`min`), when it is spent, and the warm-up + cosine learning-rate factor over it."""

from __future__ import annotations

import math
from dataclasses import dataclass

from effbench.config.budget import TRAIN_FLOP_PER_FORWARD, Budget
from effbench.config.spec import TrainSection
from effbench.errors import TrainError
from effbench.train.optim import cosine_factor, lr_factor


@dataclass
class BudgetPlan:
    """Steps or seconds one run may spend; every batch is full (the loader drops the last)."""

    budget: Budget
    steps_per_epoch: int
    flop_per_step: float  # analytic forward FLOPs per image x 3 x batch
    warmup: int  # steps
    floor: float  # min_lr / lr
    elapsed: float = 0.0  # training seconds so far, kept current by the loop (`min` budgets)

    @property
    def steps(self) -> int | None:
        """Total optimizer steps (`ep`, `flop`); None for a time budget."""
        b = self.budget
        if b.epochs is not None:
            return b.epochs * self.steps_per_epoch
        if b.flop is not None:
            return math.floor(b.flop / self.flop_per_step)
        return None

    @property
    def epochs(self) -> int | None:
        """Epochs the run will start (the last may be partial); None for a time budget."""
        steps = self.steps
        return None if steps is None else math.ceil(steps / self.steps_per_epoch)

    def spent(self, step: int, train_s: float) -> bool:
        """Whether a run at optimizer step `step` after `train_s` seconds of training is done."""
        steps, seconds = self.steps, self.budget.seconds
        if steps is not None:
            return step >= steps
        return seconds is not None and train_s >= seconds

    def __call__(self, step: int) -> float:
        """The learning-rate factor of step `step` (a `LambdaLR` lambda): linear warm-up, then
        cosine to `floor` at the end of the budget: its last step, or its last second."""
        steps, seconds = self.steps, self.budget.seconds
        if steps is not None:
            warmup = min(self.warmup, steps)
            return lr_factor(step, warmup=warmup, total=steps, floor=self.floor)
        if step < self.warmup:
            return (step + 1) / self.warmup
        return cosine_factor(self.elapsed / seconds if seconds else 1.0, floor=self.floor)


def plan_budget(cfg: TrainSection, *, steps_per_epoch: int, flop_per_image: float) -> BudgetPlan:
    """The budget of `cfg` over a loader of `steps_per_epoch` full batches.

    Raises:
        TrainError: a FLOP budget smaller than one training step.
    """
    budget = cfg.run_budget()
    flop_per_step = TRAIN_FLOP_PER_FORWARD * flop_per_image * cfg.batch_size
    plan = BudgetPlan(
        budget=budget,
        steps_per_epoch=steps_per_epoch,
        flop_per_step=flop_per_step,
        warmup=round(cfg.warmup_epochs * steps_per_epoch),
        floor=cfg.min_lr / cfg.lr,
    )
    if plan.steps == 0:
        raise TrainError(
            f"budget {budget} buys no training step (one step of batch {cfg.batch_size} "
            f"costs {flop_per_step:.3g} FLOPs); raise --budget"
        )
    return plan
