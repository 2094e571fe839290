"""ImageNet-100 as an ImageFolder tree (train/ and val/, one folder per WordNet id), with
torchvision's transforms, and the check that its classes are the standard subset.

Folder datasets are decoded and augmented per image in DataLoader workers
(`effbench.data.loaders.FolderLoader`), not held in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from effbench.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The ImageNet-100 subset of Tian, Krishnan and Isola, "Contrastive Multiview Coding" (2019),
# as listed in the CMC repository's imagenet100.txt.
_IMAGENET100 = """
    n02869837 n01749939 n02488291 n02107142 n13037406 n02091831 n04517823 n04589890 n03062245
    n01773797 n01735189 n07831146 n07753275 n03085013 n04485082 n02105505 n01983481 n02788148
    n03530642 n04435653 n02086910 n02859443 n13040303 n03594734 n02085620 n02099849 n01558993
    n04493381 n02109047 n04111531 n02877765 n04429376 n02009229 n01978455 n02106550 n01820546
    n01692333 n07714571 n02974003 n02114855 n03785016 n03764736 n03775546 n02087046 n07836838
    n04099969 n04592741 n03891251 n02701002 n03379051 n02259212 n07715103 n03947888 n04026417
    n02326432 n03637318 n01980166 n02113799 n02086240 n03903868 n02483362 n04127249 n02089973
    n03017168 n02093428 n02804414 n02396427 n04418357 n02172182 n01729322 n02113978 n03787032
    n02089867 n02119022 n03777754 n04238763 n02231487 n03032252 n02138441 n02104029 n03837869
    n03494278 n04136333 n03794056 n03492542 n02018207 n04067472 n03930630 n03584829 n02123045
    n04229816 n02100583 n03642806 n04336792 n03259280 n02116738 n02108089 n03424325 n01855672
    n02090622
"""
IMAGENET100_CLASSES = tuple(_IMAGENET100.split())


def check_imagenet100(classes: Sequence[str]) -> str | None:
    """A warning when the class folders are not the standard ImageNet-100 set, else None."""
    have, want = set(classes), set(IMAGENET100_CLASSES)
    if have == want:
        return None
    if len(have) == 100:
        extra = sorted(have - want)
        missing = sorted(want - have)
        return (
            f"{len(extra)} of the 100 class folders are not in the standard ImageNet-100 list "
            f"(CMC, Tian et al. 2019): {', '.join(extra[:8])}{' ...' if len(extra) > 8 else ''}"
            f"; missing from it: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}"
        )
    return f"{len(have)} class folders, not the 100 of ImageNet-100; training on them as given"


def folder_classes(root: Path) -> list[str]:
    """The class folders under `root`, sorted; hidden ones left out."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def imagenet_folders(data_dir: Path, image_size: int) -> tuple[Any, Any, Any, str | None]:
    """(train with training transforms, train with evaluation transforms, val, warning).

    Raises:
        DataError: when train/ or val/ is missing, empty, or their class folders differ.
    """
    from torchvision import datasets, transforms

    train_dir, val_dir = data_dir / "train", data_dir / "val"
    for d in (train_dir, val_dir):
        if not d.is_dir():
            raise DataError(
                f"{d} is not a directory: an ImageNet-100 root holds train/ and val/, with one "
                "folder of images per WordNet id in each. Pass --data-dir to such a root."
            )
    train_classes, val_classes = folder_classes(train_dir), folder_classes(val_dir)
    if not train_classes:
        raise DataError(f"{train_dir} holds no class folders")
    if train_classes != val_classes:
        only_t = sorted(set(train_classes) - set(val_classes))
        only_v = sorted(set(val_classes) - set(train_classes))
        raise DataError(
            f"class folders differ between {train_dir} and {val_dir}: only in train: "
            f"{', '.join(only_t[:8]) or '-'}; only in val: {', '.join(only_v[:8]) or '-'}"
        )
    norm = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(image_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            norm,
        ]
    )
    eval_tf = transforms.Compose(
        [
            transforms.Resize(round(image_size / 0.875)),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            norm,
        ]
    )
    try:
        train = datasets.ImageFolder(str(train_dir), transform=train_tf)
        train_eval = datasets.ImageFolder(str(train_dir), transform=eval_tf)
        val = datasets.ImageFolder(str(val_dir), transform=eval_tf)
    except (FileNotFoundError, RuntimeError) as err:
        raise DataError(f"{data_dir}: {err}") from None
    return train, train_eval, val, check_imagenet100(train_classes)
