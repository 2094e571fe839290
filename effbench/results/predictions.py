"""A training run's per-image test predictions, beside its records (safetensors of numpy
arrays: no torch), which the report's paired tests read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from effbench.errors import RunError
from effbench.results.files import replace_atomically

PREDICTIONS = "predictions.safetensors"
"""A training run's test-set predictions, beside its records: `predicted` and `label`, int16,
one per test image in the test set's order."""


def save_predictions(directory: Path, predicted: Any, label: Any) -> None:
    """Write a run's test-set predictions (two equal-length integer arrays, numpy or torch)."""
    import numpy as np
    from safetensors.numpy import save_file

    arrays = {
        "predicted": np.asarray(predicted, dtype=np.int16),
        "label": np.asarray(label, dtype=np.int16),
    }
    if arrays["predicted"].shape != arrays["label"].shape or arrays["label"].ndim != 1:
        raise ValueError("predicted and label must be 1-D arrays of the same length")
    with replace_atomically(directory / PREDICTIONS) as tmp:
        save_file(arrays, str(tmp))


def load_predictions(directory: Path) -> tuple[Any, Any] | None:
    """A run's test-set predictions as (predicted, label) numpy arrays, or None when the run
    has none (trained before they were kept).

    Raises:
        RunError: the file is there but unreadable or malformed.
    """
    path = directory / PREDICTIONS
    if not path.is_file():
        return None
    from safetensors.numpy import load_file

    try:
        arrays = load_file(str(path))
        predicted, label = arrays["predicted"], arrays["label"]
    except Exception as e:  # any unreadable file is the same user error
        raise RunError(f"{path} is not a readable predictions file ({e}); delete it") from e
    if predicted.shape != label.shape or label.ndim != 1:
        raise RunError(f"{path} holds predictions and labels of different shapes; delete it")
    return predicted, label
