"""Hand-made records for the report's tests, built through the schema's models so that they
are whole records (the report skips any that is not) and a renamed field fails here."""

from __future__ import annotations

from typing import Any

from effbench.results import (
    AnalyzeRecord,
    Env,
    ProfileRecord,
    Record,
    ScaleRecord,
    TrainEpochRecord,
    TrainRecord,
)

ENV = Env(
    effbench="0.0", torch="2.0", python="3.11", platform="Linux", device="cpu",
    device_name="cpu", threads=2, allocator="glibc", dtype="float32",
)  # fmt: skip


def _record(schema: type[Record], model: str, values: dict[str, Any]) -> dict[str, Any]:
    """A whole record of `schema` as JSON data; `mechanism` in `values` is the attention kind
    (default: the model's name)."""
    values = {
        "run_id": f"run-{model}", "spec_hash": "0" * 12, "model": model, "env": ENV,
        "time": "2026-01-01T00:00:00", **values,
    }  # fmt: skip
    values["attention"] = {"kind": values.pop("mechanism", model)}
    return schema(**values).model_dump(mode="json")


def train(model: str, **fields: Any) -> dict[str, Any]:
    """A final training record of `model`."""
    values = {
        "seed": 0, "dataset": "cifar10", "image_size": 32, "seq_len": 65, "epochs": 80,
        "epochs_run": 80, "steps": 800, "budget": "80ep", "test_top1": 0.5, "test_top5": 0.9,
        "n_test": 1000, "params": 1000, "flops_per_image": 10**6, "precision": "float32",
        "batch_size": 64, "n_train": 9000, "n_val": 1000, "train_s": 60.0, "total_s": 70.0,
        "peak_mib": 900.0,
    }  # fmt: skip
    return _record(TrainRecord, model, {**values, **fields})


def epoch(model: str, **fields: Any) -> dict[str, Any]:
    """One training epoch of `model`."""
    values = {
        "seed": 0, "epoch": 1, "step": 10, "train_loss": 2.0, "train_top1": 0.3,
        "val_top1": 0.3, "lr": 1e-3, "epoch_s": 2.0, "train_s": 1.5, "images_per_s": 100.0,
    }  # fmt: skip
    return _record(TrainEpochRecord, model, {**values, **fields})


def scale(model: str, image_size: int, **fields: Any) -> dict[str, Any]:
    """One scale point of `model` at `image_size` px (patch 8, inference only)."""
    values = {
        "image_size": image_size, "patch_size": 8, "seq_len": (image_size // 8) ** 2 + 1,
        "batch_size": 2, "mode": "infer", "precision": "float32", "dim": 32, "depth": 2,
        "heads": 2, "repeats": 1, "infer_ms": image_size / 10, "infer_peak_mib": 10.0,
        "breakdown_ms": {"attention": 1.0, "mlp": 1.0, "norm": 0.1, "other": 0.2},
        "breakdown_step_ms": 2.3,
    }  # fmt: skip
    return _record(ScaleRecord, model, {**values, **fields})


def profile(model: str, seq_len: int, **fields: Any) -> dict[str, Any]:
    """One attention layer of `model` at `seq_len` tokens."""
    values = {"seq_len": seq_len, "batch_size": 2, "dim": 32, "heads": 2, "fwd_ms": 0.1}
    return _record(ProfileRecord, model, {**values, **fields})


def analyze(model: str, **fields: Any) -> dict[str, Any]:
    """Fidelity and maps of `model` on one 2x2-patch image, one layer."""
    grid = [[0.1, 0.2], [0.3, 0.3]]
    values = {
        "run_dir": f"runs/{model}/seed0", "weights": "best.safetensors", "dataset": "cifar10",
        "image_size": 8, "seq_len": 5, "grid": [2, 2], "n_images": 32,
        "map_row_stochastic": True,
        "layers": [{"layer": 0, "rel_output_error": 0.1, "tv_mean": 0.05, "row_sum_max_dev": 0}],
        "images": [[[[0, 128, 255]] * 8] * 8], "labels": [1], "predictions": [0],
        "classes": ["cat", "dog"], "cls_maps": [[grid]], "cls_maps_exact": [[grid]],
        "rollout": [grid], "rollout_exact": [grid],
    }  # fmt: skip
    return _record(AnalyzeRecord, model, {**values, **fields})
