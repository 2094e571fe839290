"""The run-directory layout of `effbench train` (runs/<model>/seed<N>/: spec.json, train.jsonl,
checkpoint.pt, best/model.safetensors): where a run lives, whether one is there, finding and
loading a trained run."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from effbench.config.spec import BenchSpec, ModelEntry, SpecError, TrainSection, parse_spec
from effbench.errors import RunError
from effbench.results import read_jsonl, replace_atomically

CHECKPOINT = "checkpoint.pt"

RECORDS = "train.jsonl"

BEST = "best.safetensors"

FINAL = "model.safetensors"


def run_dir(cfg: TrainSection, model: str, seed: int) -> Path:
    return Path(cfg.output_dir).expanduser() / model / f"seed{seed}"


def save_weights(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    with replace_atomically(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})


def load_weights(model: nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(path)))


def holds_run(directory: Path) -> bool:
    """Whether a run directory already holds a checkpoint or records."""
    return (directory / CHECKPOINT).exists() or (directory / RECORDS).exists()


def completed(directory: Path) -> dict[str, Any] | None:
    """The final `train` record of a finished run in `directory`, if there is one."""
    path = directory / RECORDS
    if not path.is_file():
        return None
    good, _ = read_jsonl(path)
    finals = [r for r in good if r.get("kind") == "train"]
    return finals[-1] if finals else None


@dataclass(frozen=True)
class TrainedRun:
    """A finished (or checkpointed) `effbench train` run directory."""

    directory: Path
    spec: BenchSpec
    entry: ModelEntry
    weights: Path


def find_run(path: Path) -> TrainedRun:
    """The run in `path` (a run directory, or a file inside one).

    Raises:
        RunError: naming what is missing or unreadable.
    """
    directory = path if path.is_dir() else path.parent
    if not path.exists():
        raise RunError(f"--checkpoint {path}: no such run directory (runs/<model>/seed<N>)")
    spec_path = directory / "spec.json"
    if not spec_path.is_file():
        raise RunError(f"--checkpoint {directory}: no spec.json; is it an effbench run?")
    try:
        spec = parse_spec(json.loads(spec_path.read_text(encoding="utf-8")), source=str(spec_path))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunError(f"{spec_path} is corrupt ({err}); the run cannot be evaluated") from None
    except SpecError as err:
        raise RunError("\n".join(err.lines())) from None
    name = directory.parent.name
    records = directory / RECORDS
    if records.is_file():
        names = [r["model"] for r in read_jsonl(records)[0] if "model" in r]
        name = names[-1] if names else name
    try:
        entry = spec.model(name)
    except KeyError:
        raise RunError(f"{spec_path} has no model named {name!r}") from None
    weights = next((directory / w for w in (FINAL, BEST) if (directory / w).is_file()), None)
    if weights is None:
        raise RunError(
            f"--checkpoint {directory}: neither {FINAL} nor {BEST} is there; "
            "train at least one epoch first"
        )
    return TrainedRun(directory=directory, spec=spec, entry=entry, weights=weights)


def load_state(run: TrainedRun) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(run.weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise RunError(f"{run.weights} is corrupt or unreadable ({err})") from None
