"""A study's units of work, and whether each is finished.

A study is a spec (a file or a shipped recipe) plus `--set` items, resolved once. Its units
are the commands a user would otherwise run by hand, each with the same spec and items:

    train:<model>/seed<N>       one model x seed under the budget (--resume auto)
    analyze                     fidelity and attention maps of every run
    resolution:<model>/seed<N>  `scale --checkpoint` of one run: accuracy across resolutions
    scale                       whole models across the [scale] resolutions (cost)
    profile                     each attention layer across the [profile] lengths (cost)
    report                      HTML and Markdown from everything above

Units come in phases: the training runs (which may run at once, one per device or job), then
the accuracy units (analyze, resolutions), then the timing units one at a time and alone
(concurrent timings contend), then the report, always where `compare` runs.

A training unit writes its run directory itself (claimed, resumable). Every other unit writes
into an attempt directory of its own (`<output>/.attempts/...`) and, once its command has
exited 0, the attempt replaces `results/<unit>/` whole, with a mark naming the runs it read
(`.unit.json`). So a point is in the report once whatever happened to a process, and a unit is
finished exactly when its records are there and were made from the runs there now.
Torch-free: the units run as child `effbench` processes.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from effbench.config.load import parse_spec, read_toml, select_models
from effbench.config.overrides import parse_set
from effbench.config.spec import BenchSpec
from effbench.errors import SpecError, UsageError
from effbench.results import write_json_atomic
from effbench.runs import completed, fingerprint_diff
from effbench.study.state import STUDY, StudyFile, UnitRecord, read_state, write_state

RUNS, RESULTS, ATTEMPTS = "runs", "results", ".attempts"
MARKER = ".effbench-study"  # {"spec_hash": ...}: this directory is a study's
MARK = ".unit.json"
TRAIN, ACCURACY, TIMING, REPORT = 0, 1, 2, 3
PHASES = {TRAIN: "training", ACCURACY: "accuracy", TIMING: "timing", REPORT: "report"}


@dataclass(frozen=True)
class Unit:
    """One command of the study.

    key: its name in study.json; phase: TRAIN, ACCURACY, TIMING or REPORT; argv: the
    effbench arguments; dest: what it makes (a run directory, or results/<unit>/); attempt:
    where it writes before its records replace `dest` (None: it writes `dest` itself);
    reads: the run directories whose final records it reads.
    """

    key: str
    title: str
    phase: int
    argv: list[str]
    dest: Path
    attempt: Path | None = None
    reads: tuple[Path, ...] = ()

    @property
    def slug(self) -> str:
        """The key as a file or job name: `train-sdpa-seed0`."""
        return self.key.replace(":", "-").replace("/", "-")


def run_identity(directory: Path) -> str | None:
    """The identity of a finished run (its final record's run_id and time), None when the
    run is not finished."""
    final = completed(directory)
    if final is None:
        return None
    return f"{final.get('run_id')}@{final.get('time')}"


def inputs_of(unit: Unit) -> dict[str, str | None]:
    """What a unit reads, as it is now: run directory -> run identity."""
    return {str(d): run_identity(d) for d in unit.reads}


def finished(unit: Unit) -> bool:
    """Whether the unit's records are there: a training run's final record (`ok`, or the
    `nan`/`oom` it ended with, which the report shows as such), or a unit's committed results
    made from the runs as they are now. The report is never finished."""
    if unit.phase == REPORT:
        return False
    if unit.phase == TRAIN:
        return completed(unit.dest) is not None
    try:
        mark = json.loads((unit.dest / MARK).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(mark, dict) and mark.get("inputs") == inputs_of(unit)


@dataclass
class Study:
    """A resolved study: where it lives, its spec, the items every unit gets, its state."""

    out: Path
    spec_path: Path
    sets: list[str]
    attention: list[str] | None
    spec: BenchSpec
    state: StudyFile = field(init=False)

    def __post_init__(self) -> None:
        self.state = StudyFile(spec=self.resolved(), spec_hash=self.spec.hash())

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

    def _items(self) -> list[str]:
        return [a for item in self.sets for a in ("--set", item)]

    def common(self) -> list[str]:
        """The spec, the model selection and the --set items, as every unit passes them."""
        args = ["--spec", str(self.spec_path)]
        if self.attention:
            args += ["--attention", *self.attention]
        return args + self._items()

    def _measuring(self, key: str, title: str, phase: int, argv: list[str], *rel: str,
                   reads: Sequence[Path] = ()) -> Unit:  # fmt: skip
        attempt = self.out / ATTEMPTS / Path(*rel)
        return Unit(key, title, phase, [*argv, "-o", str(attempt)], self.results.joinpath(*rel),
                    attempt, tuple(reads))  # fmt: skip

    def units(self) -> Iterator[Unit]:
        """Every unit, phase by phase."""
        spec = ["--spec", str(self.spec_path)]
        for m in self.spec.models:
            for s in self.spec.train.seeds:
                name = f"{m.name}/seed{s}"
                yield Unit(f"train:{name}", f"train {m.name} seed {s}", TRAIN, [
                    "train", *spec, "--attention", m.name, *self._items(),
                    "--set", f"train.seeds=[{s}]", "-o", str(self.runs), "--resume", "auto",
                ], self.runs / m.name / f"seed{s}")  # fmt: skip
        runs = self.run_dirs()
        yield self._measuring("analyze", "fidelity and maps of every run", ACCURACY,
                              ["analyze", *map(str, runs)], "analyze", reads=runs)  # fmt: skip
        for d in runs:
            name = f"{d.parent.name}/{d.name}"
            yield self._measuring(
                f"resolution:{name}", f"accuracy of {name} across resolutions", ACCURACY,
                ["scale", "--checkpoint", str(d), *spec, *self._items()],
                "resolution", d.parent.name, d.name, reads=[d],
            )  # fmt: skip
        yield self._measuring("scale", "whole models across resolutions", TIMING,
                              ["scale", *self.common()], "scale")  # fmt: skip
        yield self._measuring("profile", "each attention layer across lengths", TIMING,
                              ["profile", *self.common()], "profile")  # fmt: skip
        yield Unit("report", "the report", REPORT,
                   ["report", str(self.runs), str(self.results), "-o", str(self.out)],
                   self.out)  # fmt: skip

    def record(self, unit: Unit) -> UnitRecord:
        """The unit's entry in study.json (made pending when absent)."""
        return self.state.units.setdefault(unit.key, UnitRecord())

    def update(self, unit: Unit, **changes: Any) -> UnitRecord:
        """Change the unit's entry and write study.json at once."""
        rec = self.record(unit).model_copy(update=changes)
        self.state.units[unit.key] = rec
        self.save()
        return rec

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        if not (self.out / MARKER).is_file():
            write_json_atomic(self.out / MARKER, {"spec_hash": self.state.spec_hash})
        write_state(self.out / STUDY, self.state)


def study_sets(
    *,
    seeds: Sequence[int] | None,
    budget: str | None,
    dataset: str | None,
    data_dir: Path | None,
    device: str | None,
    sets: Sequence[str],
) -> list[str]:
    """The command's options as --set items for every unit; explicit --set items last, so
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
    already there (its units' states kept), or a new one.

    Raises:
        SpecError: the spec or an item is invalid.
        UsageError: the spec differs from the study's (the keys named), without `fresh`; or
            `out` holds other things than a study (a report or runs of their own).
        RunError: study.json is unreadable or damaged.
    """
    source = str(spec_path)
    spec = parse_spec(read_toml(spec_path), overrides=parse_set(sets), source=source)
    spec = select_models(spec, attention)
    # every unit's checks up front, so that no unit fails after hours of training
    problems = spec.token_problems(image=True, profile=True) + spec.scale_problems()
    if problems:
        raise SpecError(problems, source)
    study = Study(out, spec_path, sets, attention, spec)
    _check_directories(out)
    old = read_state(out / STUDY)
    if old is None:
        if fresh:
            move_aside(out)
        elif _marked(out) not in (None, spec.hash()):
            raise UsageError(
                f"{out}: this study was run with other settings (its {STUDY} is gone, so "
                "which ones cannot be said); choose another --output, or pass --fresh"
            )
        elif _marked(out) is None:
            _check_not_foreign(out)
        return study  # (a study whose study.json was deleted: its records say what is done)
    if fresh:
        move_aside(out)
        return study
    if old.spec_hash != spec.hash():
        diff = fingerprint_diff(old.spec, study.resolved(), was="study")
        raise UsageError(
            f"{out}: this study was run with other settings ({'; '.join(diff[:6])}"
            f"{'; ...' if len(diff) > 6 else ''}); run it as it was, choose another --output, "
            "or pass --fresh to move the old study aside and start again"
        )
    study.state = old
    return study


FOREIGN = ("report.html", "report.md", RUNS, RESULTS)


def _check_directories(out: Path) -> None:
    """The output and its runs/ and results/ are directories (or absent), checked before
    anything runs rather than after hours of training."""
    for path in (out, out / RUNS, out / RESULTS, out / ATTEMPTS):
        if path.exists() and not path.is_dir():
            raise UsageError(
                f"{path}: a file where the study needs a directory; move it away or choose "
                "another --output"
            )


def _marked(out: Path) -> str | None:
    """The spec hash of the study that made `out` (its marker, kept beside study.json)."""
    try:
        data = json.loads((out / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return str(data.get("spec_hash")) if isinstance(data, dict) else None


def _check_not_foreign(out: Path) -> None:
    """Refuse an output that holds a report or runs but was not made by a study (they would
    be mixed with the study's or overwritten); --fresh moves them aside."""
    found = [name for name in FOREIGN if (out / name).exists()]
    if found:
        raise UsageError(
            f"{out}: holds {', '.join(found)} but no {STUDY}, so it is not a study; choose "
            "another --output, or pass --fresh to move them aside"
        )


def move_aside(out: Path) -> Path:
    """Move the old study's files into <out>/previous-<time>/; nothing is deleted."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S-%f")
    aside = out / f"previous-{stamp}"
    aside.mkdir(parents=True)
    for name in (STUDY, MARKER, RUNS, RESULTS, ATTEMPTS, "report.html", "report.md",
                 "report_files"):  # fmt: skip
        if (out / name).exists():
            (out / name).rename(aside / name)
    return aside
