"""One process or DDP under torchrun: rank, world size and device, and the few collectives the
training loop needs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

from effbench.device import resolve_device


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            torch.distributed.all_reduce(t)
        return t

    def any_rank(self, flag: bool) -> bool:
        """Whether `flag` is true in any process."""
        if self.world == 1:
            return flag
        t = torch.tensor(float(flag), device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def gather_interleaved(self, t: torch.Tensor) -> torch.Tensor:
        """The whole split from every process's shard (process r holds items r, r + world,
        ...: `effbench.data`'s evaluation shards), on the CPU, in the split's order."""
        t = t.cpu()
        if self.world == 1:
            return t
        shards: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(shards, t)
        out = torch.empty(sum(len(s) for s in shards), *t.shape[1:], dtype=t.dtype)
        for r, shard in enumerate(shards):
            out[r :: self.world] = shard
        return out


def init_distributed(device_name: str) -> Dist:
    """A single process, or DDP under torchrun (WORLD_SIZE > 1): gloo on CPU, nccl on CUDA."""
    device = resolve_device(device_name)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(0, 1, device)
    rank = int(os.environ["RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, device)
