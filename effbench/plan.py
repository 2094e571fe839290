"""What a command will do, decided before anything runs: the spec it uses (file, options,
`--set`, model selection), the scale grid (resolution ladder, `--checkpoint`, the baseline
model), the train runs (model x seed, taken and finished run directories), the runs to analyse.
Never prints; importing it imports no torch (the runners are imported when a plan needs them)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from effbench.config.attention import BASELINE_KIND
from effbench.config.fields import DEFAULT_SPEC
from effbench.config.load import parse_spec, read_toml, select_models
from effbench.config.overrides import parse_set
from effbench.config.spec import BenchSpec, ModelEntry, resolution_ladder
from effbench.errors import DataError, SpecError, TrainError, UsageError
from effbench.runs import (
    TrainedRun,
    completed,
    find_run,
    holds_run,
    load_state,
    run_dir,
    settings_diff,
    taken_runs,
)

if TYPE_CHECKING:
    import torch

    from effbench.train import Dist


# The command-line option of each override key whose option is not `--<last part>`.
OPTION_NAMES = {
    "train.output_dir": "--output",
    "train.budget": "--budget/--epochs",
    "profile.seq_lens": "--seq-len",
    "scale.patch_size": "--patch",
    "scale.resolutions": "--res",
}


def option_name(key: str) -> str:
    """The option that sets `key`: `--lr` for train.lr."""
    return OPTION_NAMES.get(key, "--" + key.rsplit(".", 1)[-1].replace("_", "-"))


def resolve_spec(
    path: Path,
    overrides: Mapping[str, Any],
    attention: list[str] | None = None,
    sets: list[str] | None = None,
    *,
    tokens: Literal["image", "profile"] | None = None,
) -> BenchSpec:
    """The spec file at `path` with the command's options (`overrides`, dotted keys; None
    leaves a key alone), then `--set` items, restricted to the models `attention` names.
    `tokens`: which token counts the selected models' options must fit (the image's for
    training, the shortest profiled length for profile). A problem is blamed on where its
    value came from: the spec file, the option, or the `--set` item.

    Raises:
        SpecError: naming each problem's location; UsageError: an option and a `--set` item
            that set one key to different values.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    set_values = parse_set(sets or [])
    for key in given.keys() & set_values.keys():
        if given[key] != set_values[key]:
            raise UsageError(
                f"{option_name(key)} {given[key]} and --set {key}={set_values[key]} disagree; "
                "give one of them"
            )
    origins = {k: f"{option_name(k)} ({k})" for k in given} | {k: f"--set {k}" for k in set_values}
    full = parse_spec(
        read_toml(path), overrides={**given, **set_values}, source=str(path), origins=origins
    )
    bench = select_models(full, attention)
    if tokens is not None:
        where = {m.name: f"models[{i}]" for i, m in enumerate(full.models)}
        for m in bench.models:  # a kind the spec has no model of: its default options
            if m.name not in where:
                where[m.name] = f"models[{m.name}]"
                origins[where[m.name]] = f"--attention {m.name} (its default options)"
        issues = bench.token_problems(
            image=tokens == "image", profile=tokens == "profile", where=where
        )
        if issues:
            raise SpecError(issues, str(path), origins)
    return bench


def choose_device(setting: str, *, where: str) -> torch.device:
    """The torch device `setting` names (auto, cpu, cuda, cuda:N).

    Raises:
        EffbenchError: `where: ...` when CUDA is asked for but absent.
    """
    from effbench.device import resolve_device

    try:
        return resolve_device(setting)
    except ValueError as err:
        raise UsageError(f"{where}: {err}") from None


# ---------------------------------------------------------------------------- scale


@dataclass(frozen=True)
class ScalePlan:
    """The spec a scale run measures; with `--checkpoint`, the trained run and its weights."""

    spec: BenchSpec
    run: TrainedRun | None = None
    state: dict[str, torch.Tensor] | None = None


def plan_scale(
    path: Path,
    overrides: Mapping[str, Any],
    *,
    attention: list[str] | None = None,
    sets: list[str] | None = None,
    res: list[int] | None = None,
    checkpoint: Path | None = None,
    data_dir: Path | None = None,
) -> ScalePlan:
    """The scale run that the options ask for.

    `res`: two values give the ladder between them (`resolution_ladder`), more are taken as
    given. Without `checkpoint`, the spec's models plus the baseline when none is chosen (the
    crossovers need it). With `checkpoint`, the trained run's model, patch and spec, with this
    command's `[scale]`; when no spec file is there (the default path absent), the run's own.

    Raises:
        SpecError, RunError, EffbenchError: what cannot be used, located.
    """
    overrides = dict(overrides)
    own_spec = checkpoint is not None and path == Path(DEFAULT_SPEC) and not path.exists()
    bench = None if own_spec else resolve_spec(path, overrides, attention, sets)
    run = None
    if checkpoint is not None:
        run = _trained_run(checkpoint, attention)
        if overrides.get("scale.patch_size") is None:
            overrides["scale.patch_size"] = run.spec.backbone.patch_size
    if res:  # with --checkpoint the patch is known from here on, without it from the spec
        patch = overrides.get("scale.patch_size") or bench.scale_patch()
        overrides["scale.resolutions"] = _resolutions(res, patch)
    if run is not None:
        return _checkpoint_plan(
            run, path, overrides, sets=sets, own_spec=own_spec, data_dir=data_dir
        )
    bench = resolve_spec(path, overrides, attention, sets)
    if bench.scale_problems():
        raise SpecError(bench.scale_problems(), str(path))
    if not any(m.attention.kind == BASELINE_KIND for m in bench.models):
        # crossovers need the baseline: add the spec's baseline model, or a default one
        names = [m.name for m in bench.models]
        bench = resolve_spec(path, overrides, [*names, BASELINE_KIND], sets)
    return ScalePlan(bench)


def _trained_run(checkpoint: Path, attention: list[str] | None) -> TrainedRun:
    if attention:
        raise UsageError("--attention: a --checkpoint evaluates the model it was trained with")

    return find_run(checkpoint)


def _resolutions(res: list[int], patch: int) -> list[int]:
    try:
        return resolution_ladder(res[0], res[1], patch) if len(res) == 2 else res
    except ValueError as err:
        raise UsageError(f"--res: {err}") from None


def _checkpoint_plan(
    run: TrainedRun,
    path: Path,
    overrides: Mapping[str, Any],
    *,
    sets: list[str] | None,
    own_spec: bool,
    data_dir: Path | None,
) -> ScalePlan:
    from effbench.sweep import checkpoint_spec

    if own_spec:  # the run's own spec gives the [scale] defaults
        bench = parse_spec(
            run.spec.model_dump(mode="json"),
            overrides={**overrides, **parse_set(sets or [])},
            source=str(run.directory / "spec.json"),
        )
    else:
        bench = resolve_spec(path, overrides, None, sets)
    bench = checkpoint_spec(run, bench, None if data_dir is None else str(data_dir))
    return ScalePlan(bench, run, load_state(run))


def check_checkpoint_data(plan: ScalePlan, device: torch.device) -> None:
    """Whether the test split of a `--checkpoint` run can be read, before any point runs.

    Raises:
        DataError: `--checkpoint DIR: ...` with what to change.
    """
    if plan.run is None:
        return
    from effbench.data import eval_loader

    try:
        eval_loader(plan.spec, device=device)
    except DataError as err:
        raise DataError(f"--checkpoint {plan.run.directory}: {err}") from None


# ---------------------------------------------------------------------------- train


@dataclass(frozen=True)
class TrainPlan:
    """The runs of `effbench train`: every model x seed, in that order, and the resume policy
    (None: fresh runs only; 'auto': continue or skip; a path: resume that one run)."""

    spec: BenchSpec
    runs: list[tuple[ModelEntry, int]]
    resume: str | None

    def directory(self, entry: ModelEntry, seed: int) -> Path:
        return run_dir(self.spec.train, entry.name, seed)

    def taken(self) -> list[Path]:
        """Run directories that already hold a run, when fresh runs were asked for."""
        if self.resume is not None:
            return []
        return taken_runs(self.spec.train, self.runs)

    def check_free(self) -> None:
        """Whether the runs can start: fresh runs need free directories; resumed and skipped
        runs must have been trained with the settings asked for now.

        Raises:
            TrainError: naming the taken run directories, or the settings that differ, and
                what to pass instead.
        """
        taken = self.taken()
        if taken:
            raise TrainError(
                "\n".join(
                    [f"{d} already holds a run" for d in taken]
                    + [
                        "pass --resume auto to continue (finished runs are skipped), or "
                        "--output DIR for new runs"
                    ]
                )
            )
        lines = []
        for entry, seed in self.runs:
            directory = self.directory(entry, seed)
            if self.resume not in (None, "auto"):
                path = Path(self.resume).expanduser()
                directory = path if path.is_dir() else path.parent
            if self.resume is None or not holds_run(directory):
                continue
            diff = settings_diff(directory, self.spec, entry, seed)
            if diff:
                lines += [f"{directory} was trained with other settings:"]
                lines += [f"  {d}" for d in diff]
        if lines:
            raise TrainError(
                "\n".join(
                    [
                        *lines,
                        "pass the same settings to continue or reuse it, or --output DIR "
                        "for a new run",
                    ]
                )
            )

    def finished(self, entry: ModelEntry, seed: int) -> dict[str, Any] | None:
        """The final record of a run that `--resume auto` skips; None when it is to run."""
        return completed(self.directory(entry, seed)) if self.resume == "auto" else None


def plan_train(
    path: Path,
    overrides: Mapping[str, Any],
    *,
    attention: list[str] | None = None,
    sets: list[str] | None = None,
    resume: str | None = None,
) -> TrainPlan:
    """The runs the options ask for.

    Raises:
        SpecError: a spec problem; EffbenchError: a checkpoint path for more than one run.
    """
    bench = resolve_spec(path, overrides, attention, sets, tokens="image")
    runs = [(m, s) for m in bench.models for s in bench.train.seeds]
    if resume not in (None, "auto") and len(runs) > 1:
        raise UsageError(
            f"--resume {resume}: a checkpoint path resumes one run; pick one model and one "
            "seed, or use --resume auto"
        )
    return TrainPlan(bench, runs, resume)


def start_distributed(setting: str) -> Dist:
    """One process, or this process's place under torchrun, on the device `setting` names.

    Raises:
        EffbenchError: `train.device: ...` when CUDA is asked for but absent.
    """
    from effbench.train import init_distributed

    try:
        return init_distributed(setting)
    except ValueError as err:
        raise UsageError(f"train.device: {err}") from None


# ---------------------------------------------------------------------------- analyze


def load_runs(
    paths: list[Path], *, data_dir: Path | None = None
) -> list[tuple[TrainedRun, dict[str, torch.Tensor]]]:
    """Each trained run in `paths` with its weights; `data_dir` replaces where its dataset is.

    Raises:
        RunError, SpecError: naming the run that cannot be used.
    """

    found = []
    for path in paths:
        run = find_run(path, option="")
        if data_dir is not None:
            data = run.spec.model_dump(mode="json")
            data["train"]["data_dir"] = str(data_dir)
            run = dataclasses.replace(run, spec=parse_spec(data, source=str(run.directory)))
        found.append((run, load_state(run)))
    return found
