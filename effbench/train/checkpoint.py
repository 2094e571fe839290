"""Training checkpoints: what a run carries between processes (`RunState`, the RNG states), the
fingerprint a resume must match, and saving/loading with `weights_only=True`."""

from __future__ import annotations

import pickle
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from effbench.errors import CheckpointError
from effbench.results import replace_atomically
from effbench.runs import fingerprint_diff

CHECKPOINT_FORMAT = 1
# ---------------------------------------------------------------------------- random state


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------- run state


def zero_acc(device: torch.device) -> dict[str, torch.Tensor]:
    """An epoch's running sums before its first batch: loss sum, correct, seen (float64)."""
    z = torch.zeros((), dtype=torch.float64, device=device)
    return {"loss_sum": z.clone(), "correct": z.clone(), "seen": z.clone()}


@dataclass
class RunState:
    """Where a run stands: everything a checkpoint carries besides modules and RNG states."""

    acc: dict[str, torch.Tensor]  # this epoch so far: loss sum, correct, seen (float64)
    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # batches of the current epoch completed
    epoch_train_s: float = 0.0  # training time of those batches (before an interruption)
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # epoch records so far
    best_epoch: int | None = None
    best_score: float = -1.0
    bad_epochs: int = 0
    stopped_early: bool = False
    train_s: float = 0.0
    total_s: float = 0.0
    compile_s: float | None = None

    def to_checkpoint(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "acc"}
        out["acc"] = {k: v.detach().cpu() for k, v in self.acc.items()}
        return out

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any], device: torch.device) -> RunState:
        try:
            fields = {k: ckpt[k] for k in cls.__dataclass_fields__ if k != "acc"}
            acc = {k: v.to(device) for k, v in ckpt["acc"].items()}
        except (KeyError, AttributeError) as err:
            raise CheckpointError(
                f"checkpoint lacks {err}; it is not a complete checkpoint"
            ) from None
        return cls(acc=acc, **fields)


# ---------------------------------------------------------------------------- files


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint loaded with `weights_only=True`.

    Raises:
        CheckpointError: when it is missing, unreadable or not an effbench checkpoint.
    """
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the unpickler's notes on foreign pickles
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, garbage bytes, foreign pickle: all unusable
        if isinstance(err, pickle.UnpicklingError) or "weights_only" in str(err):
            why = "it holds objects other than tensors and plain data, which are never loaded"
        else:
            why = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not an effbench checkpoint ({why}); "
            "delete it to start over, or pass --resume with another checkpoint"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} is not an effbench training checkpoint")
    return ckpt


def load_matching(path: Path, expected: dict[str, Any]) -> dict[str, Any]:
    """`load_checkpoint`, refused when it was trained with settings other than `expected`
    (a `fingerprint`)."""
    ckpt = load_checkpoint(path)
    diff = fingerprint_diff(ckpt["fingerprint"], expected)
    if diff:
        raise CheckpointError(
            f"checkpoint {path} was trained with other settings; "
            "resume with the same ones, or train a new run with --output DIR:\n  "
            + "\n  ".join(diff)
        )
    return ckpt


def save_checkpoint(
    path: Path,
    *,
    fingerprint: dict[str, Any],
    modules: dict[str, Any],
    state: RunState,
) -> None:
    """Write a checkpoint atomically: `modules` (name -> object with `state_dict()`: model,
    optimizer, scheduler, scaler), the RNG states now and `state`."""
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "fingerprint": fingerprint,
        **{name: m.state_dict() for name, m in modules.items()},
        "rng": rng_state(),
        **state.to_checkpoint(),
    }
    with replace_atomically(path) as tmp:
        torch.save(ckpt, tmp)


def restore(ckpt: dict[str, Any], modules: dict[str, Any], device: torch.device) -> RunState:
    """Load `modules` (as `save_checkpoint` named them) and the RNG states from a checkpoint;
    return its `RunState` on `device`."""
    for name, m in modules.items():
        m.load_state_dict(ckpt[name])
    set_rng_state(ckpt["rng"])
    return RunState.from_checkpoint(ckpt, device)
