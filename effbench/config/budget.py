"""Training budgets: what one run may spend. `30ep` (epochs), `5min` (seconds of training
steps; also `300s`, `1.5h`), `2e15flop` (training FLOPs: the analytic forward count per image
x 3 x images). Parsed here, without torch, so a malformed budget fails before anything loads."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

Unit = Literal["ep", "min", "flop"]

TRAIN_FLOP_PER_FORWARD = 3.0
"""A training step's FLOPs per image as a multiple of the forward's (forward + backward)."""

_PATTERN = re.compile(r"^\s*(\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)\s*([A-Za-z]+)\s*$")
_UNITS: dict[str, tuple[Unit, float]] = {
    "ep": ("ep", 1.0),
    "epoch": ("ep", 1.0),
    "epochs": ("ep", 1.0),
    "s": ("min", 1.0),
    "sec": ("min", 1.0),
    "min": ("min", 60.0),
    "h": ("min", 3600.0),
    "flop": ("flop", 1.0),
    "flops": ("flop", 1.0),
}
HELP = (
    "what each run may spend: '30ep' (epochs), '5min' (minutes of training steps, validation "
    "not counted; also '300s', '1.5h') or '2e15flop' (training FLOPs: the analytic forward "
    "count per image x 3 x images); unset: train.epochs"
)


@dataclass(frozen=True)
class Budget:
    """A parsed budget: epochs (`ep`), seconds of training (`min`) or training FLOPs (`flop`)."""

    unit: Unit
    amount: float  # epochs, seconds or FLOPs

    @property
    def epochs(self) -> int | None:
        return int(self.amount) if self.unit == "ep" else None

    @property
    def seconds(self) -> float | None:
        return self.amount if self.unit == "min" else None

    @property
    def flop(self) -> float | None:
        return self.amount if self.unit == "flop" else None

    def __str__(self) -> str:
        if self.unit == "ep":
            return f"{int(self.amount)}ep"
        if self.unit == "min":
            whole = self.amount % 60 == 0
            return f"{self.amount / 60:g}min" if whole else f"{self.amount:g}s"
        return f"{self.amount:g}flop"


MAX_EPOCHS = 1_000_000  # beyond this a count is a typo, and floats would round it
MAX_SECONDS = 365 * 24 * 3600.0


def parse_budget(text: str) -> Budget:
    """`Budget` of a string like '30ep', '5min', '300s', '2e15flop'.

    Raises:
        ValueError: a malformed string, an unknown unit, a non-positive amount or fractional
            epochs (the message names the accepted forms).
    """
    m = _PATTERN.match(text)
    unit = _UNITS.get(m.group(2).lower()) if m else None
    if m is None or unit is None:
        raise ValueError(
            f"budget {text!r} is not one of the forms '30ep', '5min' (or '300s', '1.5h'), "
            "'2e15flop'"
        )
    name, factor = unit
    amount = float(m.group(1)) * factor
    if not math.isfinite(amount) or amount <= 0:
        raise ValueError(f"budget {text!r} must be positive")
    if name == "ep" and amount != int(amount):
        raise ValueError(f"budget {text!r}: epochs must be a whole number")
    if name == "ep" and amount > MAX_EPOCHS:
        raise ValueError(f"budget {text!r}: at most {MAX_EPOCHS:,} epochs")
    if name == "min" and amount > MAX_SECONDS:
        raise ValueError(f"budget {text!r}: at most a year of training ({MAX_SECONDS:g}s)")
    return Budget(name, amount)


def normalised(text: str) -> str:
    """The canonical spelling of a budget ('300s' -> '5min'); raises like `parse_budget`."""
    return str(parse_budget(text))
