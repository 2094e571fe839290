"""What a training run is made of: loaders, model (DDP-wrapped under torchrun), optimizer,
schedule and gradient scaler, built in the order that fixes what each seeded stream gives;
compiling them with graphs warmed before the clock starts."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from effbench.config.spec import BenchSpec, ModelEntry
from effbench.data import Loaders, build_loaders
from effbench.model import ViT, build_model
from effbench.train.distributed import Dist
from effbench.train.optim import build_optimizer
from effbench.train.schedule import BudgetPlan, plan_budget


@dataclass
class Parts:
    """The objects one run trains with; `net` is `model` as the loop calls it (DDP, compiled)."""

    loaders: Loaders
    model: ViT
    net: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    budget: BudgetPlan

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loaders.train)

    def modules(self) -> dict[str, Any]:
        """What a checkpoint holds the state dicts of, by their names in it."""
        return {
            "model": self.model,
            "optimizer": self.opt,
            "scheduler": self.sched,
            "scaler": self.scaler,
        }


def build_parts(
    bench: BenchSpec, entry: ModelEntry, *, seed: int, dist: Dist, precision: str
) -> Parts:
    """Loaders, then the model (its initial weights from the global stream), then the budget,
    optimizer, schedule and scaler; call after seeding."""
    cfg, dev, bb = bench.train, dist.device, bench.backbone
    loaders = build_loaders(
        cfg,
        image_size=bb.image_size,
        channels=bb.channels,
        num_classes=bb.num_classes,
        device=dev,
        seed=seed,
        rank=dist.rank,
        world=dist.world,
    )
    model = build_model(bb, entry.attention, merge_r=entry.merge_r(bb)).to(dev)
    net: nn.Module = model
    if dist.world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    budget = plan_budget(cfg, steps_per_epoch=len(loaders.train), flop_per_image=model.flops())
    opt, sched = build_optimizer(model, cfg, schedule=budget, device=dev)
    scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")
    return Parts(
        loaders=loaders, model=model, net=net, opt=opt, sched=sched, scaler=scaler, budget=budget
    )


def compile_parts(
    parts: Parts,
    bench: BenchSpec,
    *,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
    device: torch.device,
) -> None:
    """`torch.compile` the net, then compile the training and evaluation graphs, leaving
    weights and random state as they were."""
    parts.net = torch.compile(parts.net, mode=bench.train.compile_mode)
    bb = bench.backbone
    x = torch.zeros(
        parts.loaders.train.batch_size,
        bb.channels,
        bb.image_size,
        bb.image_size,
        device=device,
    )
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        with autocast():
            parts.net(x).float().sum().backward()
        for p in parts.model.parameters():
            p.grad = None
        parts.net.eval()
        with torch.no_grad(), autocast():
            parts.net(x)
        parts.net.train()
