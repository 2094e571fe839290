"""Layer 3: `effbench train`. The loop (trainer), checkpoints, RNG state and fingerprint
(checkpoint), distributed helpers, evaluation, optimizer and schedule, records, signals.
Yields records; never prints; the run directory's layout is `effbench.runs`."""

from __future__ import annotations

from effbench.runs import NEUTRAL_KEYS, fingerprint, fingerprint_diff
from effbench.signals import Interrupted, StopFlag
from effbench.train.checkpoint import (
    CHECKPOINT_FORMAT,
    RunState,
    load_checkpoint,
    rng_state,
    seed_everything,
    set_rng_state,
)
from effbench.train.distributed import Dist, init_distributed
from effbench.train.evaluate import accuracy, evaluation_sums
from effbench.train.optim import lr_factor, param_groups, resolve_precision
from effbench.train.trainer import NonFiniteLoss, Trainer, TrainProgress

__all__ = [
    "CHECKPOINT_FORMAT",
    "NEUTRAL_KEYS",
    "Dist",
    "Interrupted",
    "NonFiniteLoss",
    "RunState",
    "StopFlag",
    "TrainProgress",
    "Trainer",
    "accuracy",
    "evaluation_sums",
    "fingerprint",
    "fingerprint_diff",
    "init_distributed",
    "load_checkpoint",
    "lr_factor",
    "param_groups",
    "resolve_precision",
    "rng_state",
    "seed_everything",
    "set_rng_state",
]
