"""Throughput of the in-memory loader's batched augmentation on one device: random crop, flip,
TrivialAugmentWide (on, then off), normalisation and random erasing, at 32 px.

    python benchmarks/bench_augment.py                    # CPU
    python benchmarks/bench_augment.py --device cuda      # compare with `effbench train` img/s

Each figure times whole passes of a `TensorLoader` over `--batches` batches of synthetic uint8
images that already sit on the device (as CIFAR-10 does in training), with
`torch.utils.benchmark.Timer.blocked_autorange`: images/s at the median, the IQR, and the runs.
Augmentation keeps a GPU fed when these figures exceed the training images/s.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from torch.utils import benchmark

from effbench.data import CIFAR10_MEAN, CIFAR10_STD, ArrayData, TensorLoader
from effbench.env import allocator_name, cpu_name, prepare_measuring_process


def loader(
    *, batch: int, batches: int, size: int, device: torch.device, trivial: bool
) -> TensorLoader:
    """A training loader with effbench's CIFAR recipe (crop 4, flip, erasing 0.25)."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch * batches, 3, size, size), generator=g)
    data = ArrayData(images.to(torch.uint8), torch.zeros(batch * batches, dtype=torch.long), ("a",))
    return TensorLoader(
        data,
        batch_size=batch,
        device=device,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        image_size=size,
        train=True,
        crop_padding=4,
        hflip=True,
        random_erasing=0.25,
        trivial_augment=trivial,
    )


def measure(ld: TensorLoader, *, min_run_time: float) -> benchmark.Measurement:
    """Whole passes over the loader's batches, synchronised on CUDA."""
    sync = torch.cuda.synchronize if ld.device.type == "cuda" else (lambda: None)

    def epoch() -> None:
        for _ in ld.iterate():
            pass
        sync()

    epoch()  # warm-up: kernels, caches, the lazy torchvision import
    return benchmark.Timer("epoch()", globals={"epoch": epoch}).blocked_autorange(
        min_run_time=min_run_time
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--batches", type=int, default=8, help="batches per timed pass")
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds per figure")
    args = parser.parse_args()
    env = prepare_measuring_process()  # as `effbench train` does: malloc and OpenMP
    if env is not None:
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(
        f"{where}, {torch.get_num_threads()} threads, {allocator_name()}, "
        f"torch {torch.__version__}; crop+flip+normalise+erasing, {args.size} px",
        flush=True,
    )
    print(f"{'batch':>6} {'TrivialAugment':>14} {'img/s':>10} {'IQR img/s':>18} {'runs':>5}")
    for batch in args.batch_sizes:
        for trivial in (True, False):
            ld = loader(
                batch=batch, batches=args.batches, size=args.size, device=device, trivial=trivial
            )
            m = measure(ld, min_run_time=args.min_run_time)
            images = batch * args.batches
            q1, q3 = torch.tensor(m.times).quantile(torch.tensor([0.25, 0.75])).tolist()
            print(
                f"{batch:>6} {'on' if trivial else 'off':>14} {images / m.median:>10,.0f} "
                f"{images / q3:>8,.0f}-{images / q1:<9,.0f} {len(m.times):>5}",
                flush=True,
            )


if __name__ == "__main__":
    main()
