"""The records a training run yields: the fields every one of them shares, one per epoch and
the final one, built from the run's `RunState` (peak memory: `effbench.measure.peak_memory`)."""

from __future__ import annotations

from typing import Any

import torch

from effbench.config.budget import TRAIN_FLOP_PER_FORWARD
from effbench.config.spec import BenchSpec, ModelEntry
from effbench.convergence import still_learning
from effbench.measure import param_count, peak_memory
from effbench.results import CpuCheck, Env, TrainEpochRecord, TrainRecord
from effbench.results import record_base as base_fields
from effbench.runs import FINAL
from effbench.train.checkpoint import RunState
from effbench.train.setup import Parts


def record_base(
    bench: BenchSpec, entry: ModelEntry, *, seed: int, run_id: str, env: Env
) -> dict[str, Any]:
    """The fields every record of one run carries."""
    return {**base_fields(bench, entry, env=env, run_id=run_id), "seed": seed}


def epoch_record(
    base: dict[str, Any],
    st: RunState,
    *,
    epochs: int | None,
    sums: list[float],
    val: dict[str, float] | None,
    lr: float,
    times: tuple[float, float],
    check: CpuCheck | None,
    device: torch.device,
) -> TrainEpochRecord:
    """The record of the epoch `st` is finishing (before its counters move on).

    Args:
        sums: training loss sum, correct and seen images over all processes.
        val: `accuracy` on the validation split, when there is one.
        times: (epoch_s, train_s) of the whole epoch, across a resume.
    """
    loss_sum, correct, seen = sums
    epoch_s, train_s = times
    peak, mem_source = peak_memory(device)
    return TrainEpochRecord(
        **base,
        epoch=st.epoch + 1,
        epochs=epochs,
        step=st.global_step,
        train_loss=loss_sum / seen,
        train_top1=correct / seen,
        val_loss=val["loss"] if val else None,
        val_top1=val["top1"] if val else None,
        val_top5=val["top5"] if val else None,
        lr=lr,
        epoch_s=epoch_s,
        train_s=train_s,
        images_per_s=seen / train_s,
        peak_mib=peak,
        mem_source=mem_source,
        contended=None if check is None else check.disturbed,
        cpu_checks=None if check is None else {"train": check},
    )


def _images_per_s(history: list[dict[str, Any]]) -> float | None:
    """All training images over all training time."""
    if not history:
        return None
    return sum(h["images_per_s"] * h["train_s"] for h in history) / sum(
        h["train_s"] for h in history
    )


def _contended_epochs(history: list[dict[str, Any]]) -> int | None:
    if not any(h.get("contended") is not None for h in history):
        return None
    return sum(bool(h.get("contended")) for h in history)


def run_peak(history: list[dict[str, Any]], device: torch.device) -> tuple[float | None, str]:
    """The run's own peak memory: the highest of its epochs' peaks (each read since a reset at
    the epoch's start, restored epochs included) and the peak since the last reset."""
    peak, source = peak_memory(device)
    peaks = [h["peak_mib"] for h in history if h.get("mem_source") == source and h.get("peak_mib")]
    if peak is None:
        return (max(peaks), source) if peaks else (None, source)
    return max([peak, *peaks]), source


def run_facts(bench: BenchSpec, parts: Parts, *, precision: str, world: int) -> dict[str, Any]:
    """What was trained, on what, how: the final record's fixed fields."""
    cfg, model, loaders = bench.train, parts.model, parts.loaders
    return {
        "dataset": cfg.dataset,
        "image_size": bench.backbone.image_size,
        "seq_len": model.seq_len,
        "epochs": parts.budget.epochs,
        "budget": str(parts.budget.budget),
        "params": param_count(model),
        "flops_per_image": model.flops(),
        "block_tokens": model.block_tokens if model.merge_r else None,
        "precision": precision,
        "compiled": cfg.compile,
        "compile_mode": cfg.compile_mode if cfg.compile else None,
        "world_size": world,
        "batch_size": cfg.batch_size,
        "n_train": loaders.n_train,
        "n_val": loaders.n_val,
        "n_test": loaders.n_test,
    }


def final_record(
    base: dict[str, Any],
    st: RunState,
    *,
    facts: dict[str, Any],
    status: str,
    error: str | None,
    test: dict[str, float] | None,
    total_s: float,
    device: torch.device,
) -> TrainRecord:
    """The run's last record: `facts` (`run_facts`), how it went (`st`), and the test
    accuracy of the selected weights."""
    peak, mem_source = run_peak(st.history, device)
    images = st.global_step * facts["batch_size"]
    return TrainRecord(
        **base,
        **facts,
        images=images,
        train_flop=TRAIN_FLOP_PER_FORWARD * facts["flops_per_image"] * images,
        status=status,
        error=error,
        epochs_run=len(st.history),
        steps=st.global_step,
        best_epoch=st.best_epoch,
        best_val_top1=st.best_score if st.best_epoch is not None else None,
        test_loss=test["loss"] if test else None,
        test_top1=test["top1"] if test else None,
        test_top5=test["top5"] if test else None,
        compile_s=st.compile_s,
        train_s=st.train_s,
        total_s=total_s,
        images_per_s=_images_per_s(st.history),
        contended_epochs=_contended_epochs(st.history),
        peak_mib=peak,
        mem_source=mem_source,
        stopped_early=st.stopped_early,
        still_learning=still_learning([h["train_loss"] for h in st.history], st.best_epoch),
        weights=FINAL if status == "ok" else None,
    )
