"""`effbench compare`: the whole study as stages of the existing commands, in one output
directory, resumable and idempotent.

A study is a spec (a file or a shipped recipe) plus `--set` items, resolved once. Its stages
are the commands a user would otherwise run by hand, each with the same spec and items:

    train       every model x seed under one budget (resumed from checkpoints: --resume auto)
    analyze     fidelity and attention maps of every run
    resolution  `scale --checkpoint` of every run: accuracy across resolutions
    scale       whole models across the [scale] resolutions (cost)
    profile     each attention layer across the [profile] lengths (cost)
    report      HTML and Markdown from everything above

`<output>/study.json` holds the resolved spec and the stages finished for it. A stage counts
as finished when its command exited 0; a rerun skips finished stages (and runs) and always
renders the report again. A spec that differs from the study's is refused with the keys that
differ, unless `--fresh` moves the old study aside first. Torch-free: the stages run as
child processes of the command line.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from effbench.config.spec import BenchSpec, parse_set, parse_spec, read_toml, select_models
from effbench.errors import RunError, SpecError, UsageError
from effbench.results import write_json_atomic
from effbench.runs import fingerprint_diff

STUDY = "study.json"
RUNS, RESULTS = "runs", "results"
RECIPES = "recipes"
QUICK_RECIPE = "cpu-mini"


def recipe_names() -> list[str]:
    """The spec presets shipped with effbench (`effbench/recipes/*.toml`)."""
    return sorted(
        p.name.removesuffix(".toml")
        for p in resources.files("effbench").joinpath(RECIPES).iterdir()
        if p.name.endswith(".toml")
    )


def recipe_path(name: str) -> Path:
    """The TOML file of a shipped recipe.

    Raises:
        UsageError: for an unknown recipe, listing the recipes.
    """
    names = recipe_names()
    if name not in names:
        raise UsageError(f"--recipe {name!r}: unknown recipe; choose one of {', '.join(names)}")
    return Path(str(resources.files("effbench").joinpath(RECIPES, f"{name}.toml")))


def spec_file(spec: Path, recipe: str | None, *, default: Path) -> Path:
    """The spec file a command reads: a shipped recipe's, or `spec`.

    Raises:
        UsageError: for a recipe beside a --spec other than the default, or an unknown one.
    """
    if recipe is None:
        return spec
    if spec != default:
        raise UsageError("--spec and --recipe: choose one")
    return recipe_path(recipe)


def compare_spec_file(spec: Path, recipe: str | None, *, quick: bool, default: Path) -> Path:
    """The spec file `compare` reads: `spec_file`, with --quick as the cpu-mini recipe.

    Raises:
        UsageError: for --quick beside another recipe or beside a --spec of the user's.
    """
    if quick and recipe not in (None, QUICK_RECIPE):
        raise UsageError(f"--quick is the {QUICK_RECIPE} recipe; drop --recipe {recipe}")
    if quick and spec != default:
        raise UsageError(
            f"--quick is the {QUICK_RECIPE} recipe, which brings its own spec; drop --spec "
            f"{spec}, or drop --quick and make the spec small with --set"
        )
    return spec_file(spec, QUICK_RECIPE if quick else recipe, default=default)


@dataclass(frozen=True)
class Stage:
    """One command of the study: its key in study.json, a title, the effbench arguments."""

    key: str
    title: str
    argv: list[str]


@dataclass
class Study:
    """A resolved study: where it lives, its spec and the items every stage gets."""

    out: Path
    spec_path: Path
    sets: list[str]
    attention: list[str] | None
    spec: BenchSpec
    # stage key -> when it finished and its wall seconds
    done: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def runs(self) -> Path:
        return self.out / RUNS

    @property
    def results(self) -> Path:
        return self.out / RESULTS

    def resolved(self) -> dict[str, Any]:
        return self.spec.model_dump(mode="json")

    def run_dirs(self) -> list[Path]:
        """Every model x seed's run directory, in the spec's order."""
        return [
            self.runs / m.name / f"seed{s}" for m in self.spec.models for s in self.spec.train.seeds
        ]

    def common(self) -> list[str]:
        """The spec, the model selection and the --set items, as every stage passes them."""
        args = ["--spec", str(self.spec_path)]
        if self.attention:
            args += ["--attention", *self.attention]
        return args + [a for item in self.sets for a in ("--set", item)]

    def stages(self) -> Iterator[Stage]:
        """The stages in order; a run's resolution stage is its own, so that a rerun goes on
        from the first run not yet evaluated."""
        common = self.common()
        yield Stage("train", "train every model x seed", [
            "train", *common, "-o", str(self.runs), "--resume", "auto",
        ])  # fmt: skip
        runs = [str(d) for d in self.run_dirs()]
        yield Stage("analyze", "fidelity and maps of every run", [
            "analyze", *runs, "-o", str(self.results),
        ])  # fmt: skip
        for d in self.run_dirs():
            name = f"{d.parent.name}/{d.name}"
            yield Stage(f"resolution:{name}", f"accuracy of {name} across resolutions", [
                "scale", "--checkpoint", str(d), "--spec", str(self.spec_path),
                *(a for item in self.sets for a in ("--set", item)), "-o", str(self.results),
            ])  # fmt: skip
        yield Stage("scale", "whole models across resolutions", [
            "scale", *common, "-o", str(self.results),
        ])  # fmt: skip
        yield Stage("profile", "each attention layer across lengths", [
            "profile", *common, "-o", str(self.results),
        ])  # fmt: skip
        yield Stage("report", "the report", [
            "report", str(self.runs), str(self.results), "-o", str(self.out),
        ])  # fmt: skip

    def finish(self, key: str, seconds: float) -> None:
        """Mark a stage finished after `seconds` (never the report, rendered every time)."""
        if key == "report":
            return
        when = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        self.done[key] = {"finished": when, "seconds": round(seconds, 1)}
        self.save()

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(
            self.out / STUDY,
            {"spec": self.resolved(), "spec_hash": self.spec.hash(), "done": self.done},
        )


def study_sets(
    *,
    seeds: Sequence[int] | None,
    budget: str | None,
    dataset: str | None,
    data_dir: Path | None,
    device: str | None,
    sets: Sequence[str],
) -> list[str]:
    """The command's options as --set items for every stage; explicit --set items last, so
    that they win."""
    out: list[str] = []
    if seeds:
        out.append(f"train.seeds={json.dumps(list(seeds))}")
    if budget:
        out.append(f"train.budget={json.dumps(budget)}")
    if dataset:
        out.append(f"train.dataset={json.dumps(dataset)}")
    if data_dir is not None:
        out.append(f"train.data_dir={json.dumps(str(data_dir))}")
    if device:
        out += [f"{s}.device={json.dumps(device)}" for s in ("train", "profile", "scale")]
    return out + list(sets)


def open_study(
    out: Path,
    spec_path: Path,
    sets: list[str],
    attention: list[str] | None,
    *,
    fresh: bool,
) -> Study:
    """The study in `out`: resolved from the spec and items, checked against the study
    already there (its finished stages kept), or a new one.

    Raises:
        SpecError: the spec or an item is invalid.
        UsageError: the spec differs from the study's (the keys named), without `fresh`.
        RunError: study.json is unreadable.
    """
    source = str(spec_path)
    spec = parse_spec(read_toml(spec_path), overrides=parse_set(sets), source=source)
    spec = select_models(spec, attention)
    # every stage's checks up front, so that no stage fails after hours of training
    problems = spec.token_problems(image=True, profile=True) + spec.scale_problems()
    if problems:
        raise SpecError(problems, source)
    study = Study(out, spec_path, sets, attention, spec)
    old = _read(out / STUDY)
    if old is None:
        return study
    if fresh:
        _move_aside(out)
        return study
    if old.get("spec_hash") != spec.hash():
        diff = fingerprint_diff(old.get("spec") or {}, study.resolved(), was="study")
        raise UsageError(
            f"{out}: this study was run with other settings ({'; '.join(diff[:6])}"
            f"{'; ...' if len(diff) > 6 else ''}); run it as it was, choose another --output, "
            "or pass --fresh to move the old study aside and start again"
        )
    study.done = dict(old.get("done") or {})
    return study


def _read(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RunError(
            f"{path}: unreadable ({err}); move it away to start the study again"
        ) from None
    if not isinstance(data, dict):
        raise RunError(f"{path}: not a study file; move it away to start the study again")
    return data


def _move_aside(out: Path) -> Path:
    """Move the old study's files into <out>/previous-<time>/; nothing is deleted."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    aside = out / f"previous-{stamp}"
    aside.mkdir()
    for name in (STUDY, RUNS, RESULTS, "report.html", "report.md", "report_files"):
        if (out / name).exists():
            (out / name).rename(aside / name)
    return aside
