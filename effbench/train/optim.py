"""The optimizer and schedule every mechanism trains with: AdamW with weight decay on matrices
only, linear warm-up then cosine decay per step, one clipped and scaled step, and the precision
`auto` resolves to (its autocast is `effbench.measure.autocast`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn

from effbench.config.spec import TrainSection


def resolve_precision(name: str, device: torch.device) -> str:
    if name == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return name


def lr_factor(step: int, *, warmup: int, total: int, floor: float) -> float:
    """Linear warm-up to 1 over `warmup` steps, then cosine down to `floor` at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return cosine_factor((step - warmup) / max(1, total - warmup), floor=floor)


def cosine_factor(t: float, *, floor: float) -> float:
    """The cosine from 1 at t = 0 down to `floor` at t >= 1."""
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only: not on biases, norms, the CLS token or position embedding."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or name.endswith(("pos_embed", "cls_token"))
        (no_decay if skip else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module,
    cfg: TrainSection,
    *,
    schedule: Callable[[int], float],
    device: torch.device,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over `param_groups` and its per-step schedule: `schedule(step)` scales the peak
    learning rate (the run's `BudgetPlan`: warm-up, then cosine over the budget)."""
    opt = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=cfg.betas,
        fused=device.type == "cuda",
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(_call, schedule))
    return opt, sched


def _call(schedule: Callable[[int], float], step: int) -> float:
    return schedule(step)


def optimizer_step(
    loss: torch.Tensor,
    *,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    sched: torch.optim.lr_scheduler.LRScheduler,
    model: nn.Module,
    grad_clip: float,
) -> str | None:
    """Backward, gradient clipping (off at 0) and one step of the optimizer and schedule.

    Returns:
        None, or what is NaN or Inf ("the loss", "the gradient norm"); then no step is taken.
        fp16's scaler skips steps with Inf gradients by design: only its loss must be finite.
    """
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    max_norm = grad_clip if grad_clip > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    checks = [loss.detach()] if scaler.is_enabled() else [loss.detach(), grad_norm]
    if not bool(torch.isfinite(torch.stack(checks)).all()):
        return "the loss" if not torch.isfinite(loss).item() else "the gradient norm"
    scaler.step(opt)
    scaler.update()
    sched.step()
    return None
