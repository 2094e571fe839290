"""The run-directory layout of `effbench train`: where a run lives, whether one is there (and
which checkpoint a resume continues from), opening its files, finding and loading a trained run.

Layout of a run directory (`<output_dir>/<model>/seed<seed>/`):

    train.jsonl        one `train_epoch` record per epoch, then one `train` record
    spec.json          the resolved spec the run was trained with
    checkpoint.pt      the latest checkpoint (every `checkpoint_every` epochs, and on SIGTERM)
    best.safetensors   the weights with the best validation accuracy so far
    model.safetensors  the selected weights, written at the end
    predictions.safetensors  the selected weights' test-set predictions: `predicted` and
                       `label` (int16, one per test image, in the test set's order;
                       written and read by `effbench.results`)
    tb/                TensorBoard scalars, when asked for
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from effbench.config.load import parse_spec
from effbench.config.spec import BenchSpec, ModelEntry, TrainSection
from effbench.errors import CheckpointError, RunError, SpecError, TrainError

if TYPE_CHECKING:
    import torch
    from torch import nn

from effbench.results import (
    JsonlWriter,
    inside,
    read_jsonl,
    replace_atomically,
    write_json_atomic,
    write_jsonl_atomic,
)

CHECKPOINT = "checkpoint.pt"

RECORDS = "train.jsonl"

BEST = "best.safetensors"

FINAL = "model.safetensors"

SPEC = "spec.json"

TENSORBOARD = "tb"


# `[train]` keys that do not change what a run computes: a resume may differ in these.
NEUTRAL_KEYS = frozenset(
    {
        "data_dir",
        "download",
        "seeds",
        "device",
        "threads",
        "workers",
        "checkpoint_every",
        "output_dir",
        "tensorboard",
        "eval_batch_size",
    }
)

# ---------------------------------------------------------------------------- fingerprint


def fingerprint(bench: BenchSpec, entry: ModelEntry, seed: int) -> dict[str, Any]:
    """The settings that determine what a run computes; a resume must match them."""
    train = bench.train.model_dump(mode="json")
    if not train["compile"]:  # (and checkpoints from before compile_mode keep matching)
        del train["compile_mode"]
    if not train.get("trivial_augment"):  # checkpoints from before the option keep matching
        train.pop("trivial_augment", None)
    attention = entry.attention.model_dump(mode="json")
    attention.pop("local_backend", None)  # how the same maths runs, not what it computes
    return {
        "backbone": bench.backbone.model_dump(mode="json"),
        "attention": attention,
        "train": {k: v for k, v in train.items() if k not in NEUTRAL_KEYS},
        "seed": seed,
    }


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def fingerprint_diff(
    old: dict[str, Any], new: dict[str, Any], *, was: str = "checkpoint"
) -> list[str]:
    """`key: <was> old, now new` for each setting that differs."""
    a, b = _flat(old), _flat(new)
    return [
        f"{k}: {was} {a.get(k)!r}, now {b.get(k)!r}"
        for k in sorted(a.keys() | b.keys())
        if a.get(k) != b.get(k)
    ]


def run_dir(cfg: TrainSection, model: str, seed: int) -> Path:
    """`<output_dir>/<model>/seed<seed>`, which must lie inside the output directory.

    Raises:
        RunError: when the model name would place the run elsewhere (`..`, a separator).
    """
    return inside(Path(cfg.output_dir).expanduser(), model, f"seed{seed}")


def save_weights(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    with replace_atomically(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})


def load_weights(model: nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(path)))


def holds_run(directory: Path) -> bool:
    """Whether a run directory already holds a checkpoint or a record (a run that failed
    before its first epoch leaves none, and does not block the next)."""
    if (directory / CHECKPOINT).exists():
        return True
    records = directory / RECORDS
    return records.is_file() and records.stat().st_size > 0


def discard_empty_run(directory: Path) -> None:
    """Remove the files of a run that ended before its first record or checkpoint (its spec
    and empty records file), so the directory holds nothing that reads as a run."""
    if holds_run(directory):
        return
    for name in (RECORDS, SPEC):
        (directory / name).unlink(missing_ok=True)


def settings_diff(directory: Path, bench: BenchSpec, entry: ModelEntry, seed: int) -> list[str]:
    """The settings that determine what a run computes (`fingerprint`) in which the run in
    `directory`, as its spec.json says, differs from `bench`'s run of `entry` and `seed`; []
    when there is no spec.json to compare with.

    Raises:
        TrainError: the spec.json is there but unreadable.
    """
    path = directory / SPEC
    if not path.is_file():
        return []
    try:
        old = parse_spec(json.loads(path.read_text(encoding="utf-8")), source=str(path))
        old_entry = old.model(entry.name) if len(old.models) != 1 else old.models[0]
    except (OSError, ValueError, KeyError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise TrainError(
            f"{path} is unreadable ({first}), so the settings of the run in {directory} are "
            "unknown; move the run away, or train with --output DIR"
        ) from None
    if bench.train.dataset != "synthetic":  # the class count comes from the data
        bb = bench.backbone.model_copy(update={"num_classes": old.backbone.num_classes})
        bench = bench.model_copy(update={"backbone": bb})
    return fingerprint_diff(
        fingerprint(old, old_entry, seed), fingerprint(bench, entry, seed), was="run"
    )


def taken_runs(cfg: TrainSection, runs: Iterable[tuple[ModelEntry, int]]) -> list[Path]:
    """The run directories of (model, seed) `runs` that already hold a run."""
    return [d for d in (run_dir(cfg, m.name, s) for m, s in runs) if holds_run(d)]


def resume_checkpoint(directory: Path, resume: str | None) -> Path | None:
    """The checkpoint a run in `directory` continues from.

    `resume`: None (a fresh run: refused when `directory` already holds one), "auto" (the
    directory's own checkpoint, or None when there is none) or a checkpoint or run directory.

    Raises:
        TrainError: a fresh run where one already is.
        CheckpointError: the checkpoint `resume` names is not there.
    """
    if resume is None:
        if holds_run(directory):
            raise TrainError(
                f"{directory} already holds a run; pass --resume auto to continue it, or "
                "--output DIR to train a new one elsewhere"
            )
        return None
    own = directory / CHECKPOINT
    if resume == "auto":
        return own if own.exists() else None
    path = Path(resume).expanduser()
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found (from --resume {resume})")
    return path


def open_records(
    directory: Path, *, spec: dict[str, Any], history: list[dict[str, Any]]
) -> JsonlWriter:
    """Create the run directory, write its spec.json, and open its records file for appending,
    holding exactly `history` (a checkpoint's epoch records): epochs after it (computed again,
    identically) are dropped rather than duplicated."""
    directory.mkdir(parents=True, exist_ok=True)
    write_json_atomic(directory / SPEC, spec)
    write_jsonl_atomic(directory / RECORDS, history)
    return JsonlWriter(directory / RECORDS)


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


def find_run(path: Path, *, option: str = "--checkpoint ") -> TrainedRun:
    """The run in `path` (a run directory, or a file inside one); `option` is how messages
    name it (the option that gave it, or "" for an argument).

    Raises:
        RunError: naming what is missing or unreadable.
    """
    directory = path if path.is_dir() else path.parent
    if not path.exists():
        raise RunError(f"{option}{path}: no such run directory (runs/<model>/seed<N>)")
    spec_path = directory / SPEC
    if not spec_path.is_file():
        raise RunError(f"{option}{directory}: no spec.json; is it an effbench run?")
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
            f"{option}{directory}: neither {FINAL} nor {BEST} is there; "
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
