"""TensorBoard scalars of a training run (optional: `effbench[tb]`)."""

from __future__ import annotations

from typing import Any

from effbench.errors import TrainError
from effbench.results import TrainEpochRecord


def summary_writer() -> Any:
    """TensorBoard's SummaryWriter class.

    Raises:
        TrainError: when TensorBoard is not installed.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TrainError(
            "train.tensorboard is on but TensorBoard is not installed: pip install "
            "'effbench[tb]', or turn it off"
        ) from None
    return SummaryWriter


def write_scalars(tb: Any, rec: TrainEpochRecord) -> None:
    """An epoch record's losses, accuracies, learning rate and speed, at its epoch."""
    for name in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr"):
        value = getattr(rec, name)
        if value is not None:
            tb.add_scalar(name.replace("_", "/", 1), value, rec.epoch)
    tb.add_scalar("speed/images_per_s", rec.images_per_s, rec.epoch)
    tb.flush()
