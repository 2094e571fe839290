"""The seed function every random draw of the data package goes through.

Sample order, augmentation, the synthetic set and the validation split all come from
generators seeded by `batch_seed(seed, epoch, batch, ...)`, so a run resumed mid-epoch, or
run again on another machine, sees exactly the batches it would have seen.
"""

from __future__ import annotations


def batch_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, epoch, batch, ...), stable across runs and machines."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p + 0x9E3779B97F4A7C15)) * 1099511628211) % (1 << 63)
    return h
