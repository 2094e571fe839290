"""CIFAR-10 from a `cifar-10-batches-py` directory (the pickled batches of the Python version),
downloaded by torchvision when asked.

The batches are read as they are, any number of images each and no checksum, so a subset such
as cifar10-mini reads like the full set; the unpickler admits only what a batch holds, so a
crafted file cannot run code.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from effbench.config.fields import DATA_ENV, default_data_dir
from effbench.data.arrays import ArrayData
from effbench.errors import DataError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CIFAR_DIR = "cifar-10-batches-py"
CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_FILE = "test_batch"


def default_note() -> str:
    """Where the commands look when no --data-dir (or train.data_dir) is given."""
    return f"without --data-dir the data is looked for in ${DATA_ENV}, else {default_data_dir()}"


def find_cifar_dir(data_dir: Path) -> Path | None:
    """`data_dir` itself when it holds the CIFAR-10 batches, else `data_dir/cifar-10-batches-py`."""
    for d in (data_dir, data_dir / CIFAR_DIR):
        if (d / CIFAR_TEST_FILE).is_file() or (d / CIFAR_TRAIN_FILES[0]).is_file():
            return d
    return None


class CifarUnpickler(pickle.Unpickler):
    """Reads a CIFAR-10 batch and nothing else: dicts, lists, bytes, strings, numbers and
    numpy arrays. Any other global a pickle names (a function to call, say) is refused before
    it is looked up, so a crafted batch file cannot run code."""

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),  # bytes in a protocol-2 pickle written by Python 3
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(
                f"refused {module}.{name}: a CIFAR-10 batch holds only dicts, lists, bytes, "
                "numbers and numpy arrays"
            )
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[Tensor, Tensor]:
    if not path.is_file():
        raise DataError(f"{path} is missing: a CIFAR-10 directory holds {CIFAR_DIR}'s 6 batches")
    try:
        with path.open("rb") as fh:
            entry = CifarUnpickler(fh, encoding="bytes").load()
        data = entry[b"data"]
        images = torch.as_tensor(data, dtype=torch.uint8).reshape(-1, 3, 32, 32)
        y = torch.as_tensor(list(entry[b"labels"]), dtype=torch.int64)
    except Exception as err:  # any unpickling or shape problem means the file is not usable
        raise DataError(f"{path} is not a CIFAR-10 batch ({type(err).__name__}: {err})") from None
    if len(images) != len(y):
        raise DataError(f"{path}: {len(images)} images but {len(y)} labels")
    if len(y) and (int(y.min()) < 0 or int(y.max()) > 9):
        raise DataError(f"{path}: labels outside 0..9")
    return images.contiguous(), y


def read_cifar10(root: Path) -> tuple[ArrayData, ArrayData]:
    """(train, test) from a `cifar-10-batches-py` directory, read as is: any number of images
    per batch, no checksum check (a subset such as cifar10-mini reads like the full set)."""
    parts = [_read_cifar_batch(root / f) for f in CIFAR_TRAIN_FILES]
    test = _read_cifar_batch(root / CIFAR_TEST_FILE)
    train = ArrayData(
        torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), CIFAR10_CLASSES
    )
    return train, ArrayData(*test, CIFAR10_CLASSES)


def load_cifar10(data_dir: Path, *, download: bool) -> tuple[ArrayData, ArrayData]:
    """CIFAR-10 from `data_dir` (the batches directory or its parent), downloaded there by
    torchvision when absent and `download` is on.

    Raises:
        DataError: naming --data-dir and --dataset synthetic when the data is absent and
            cannot be downloaded, or when a file is unreadable.
    """
    found = find_cifar_dir(data_dir)
    if found is None and download:
        try:
            from torchvision.datasets import CIFAR10

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                CIFAR10(str(data_dir), train=True, download=True)
        except Exception as err:
            raise DataError(
                f"CIFAR-10 is not in {data_dir} and could not be downloaded "
                f"({type(err).__name__}: {err}). Pass --data-dir to a directory holding "
                f"{CIFAR_DIR}, or --dataset synthetic for a run without data; {default_note()}."
            ) from None
        found = find_cifar_dir(data_dir)
    if found is None:
        where = "does not exist" if not data_dir.exists() else f"holds no {CIFAR_DIR}"
        raise DataError(
            f"data directory {data_dir} {where}, and downloading is off. Pass --data-dir to a "
            f"directory holding {CIFAR_DIR}, turn on train.download, or use --dataset "
            f"synthetic; {default_note()}."
        )
    return read_cifar10(found)
