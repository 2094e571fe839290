"""`effbench compare`: the whole study in one resumable command (`effbench.study`): train,
analyze, accuracy across resolutions, scale, profile and the report, each stage a child
`effbench` process, one overall progress line per stage above the stage's own bars."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from effbench.cli.app import ListOptionCommand, app
from effbench.cli.console import console, err_console
from effbench.cli.options import (
    DEFAULT_SPEC_PATH,
    AttentionOpt,
    DeviceOpt,
    RecipeOpt,
    SetOpt,
    SpecOpt,
)


@app.command(cls=ListOptionCommand)
def compare(
    spec: SpecOpt = DEFAULT_SPEC_PATH,
    recipe: RecipeOpt = None,
    quick: Annotated[
        bool, typer.Option(help="The whole pipeline small: the cpu-mini recipe.")
    ] = False,
    attention: AttentionOpt = None,
    seeds: Annotated[list[int] | None, typer.Option(help="Seeds: --seeds 0 1 2.")] = None,
    budget: Annotated[
        str | None, typer.Option(help="What each run may spend: 30ep, 10min, 2e15flop.")
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="cifar10, imagenet100 or synthetic.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Where the dataset is.")] = None,
    device: DeviceOpt = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="The study's directory.")] = Path(
        "study"
    ),
    fresh: Annotated[
        bool, typer.Option(help="Move a study with other settings aside and start again.")
    ] = False,
    sets: SetOpt = None,
) -> None:
    """The whole comparison in one command: train every model x seed, analyze the runs,
    their accuracy across resolutions, scale and profile every model, then the report.

    Everything goes under --output (runs/, results/, report.html, report.md, study.json).
    Run it again and it goes on where it stopped: finished runs and stages are skipped,
    training resumes from its checkpoints, and the report is rendered again. A changed spec
    is refused with the keys that differ, unless --fresh.
    """
    from effbench.study import compare_spec_file, open_study, study_sets

    spec_path = compare_spec_file(spec, recipe, quick=quick, default=DEFAULT_SPEC_PATH)
    items = study_sets(
        seeds=seeds, budget=budget, dataset=dataset, data_dir=data_dir, device=device,
        sets=sets or [],
    )  # fmt: skip
    study = open_study(output, spec_path, items, attention, fresh=fresh)
    study.save()
    stages = list(study.stages())
    t0 = time.perf_counter()
    for i, stage in enumerate(stages, 1):
        head = f"[{i}/{len(stages)}] {stage.key}: {stage.title}"
        if stage.key in study.done:
            console.print(f"{head}: done, skipped", markup=False, highlight=False)
            continue
        console.print(f"── {head}", style="bold", markup=False, highlight=False)
        start = time.perf_counter()
        _run_stage(stage.key, stage.argv)
        seconds = time.perf_counter() - start
        study.finish(stage.key, seconds)
        console.print(f"   {stage.key}: done in {seconds:.0f} s", highlight=False)
    console.print(f"study finished in {time.perf_counter() - t0:.0f} s: {output}")
    _print_verdict(output / "report.md")


def _run_stage(key: str, argv: list[str]) -> None:
    """Run one stage as a child `effbench` process; SIGINT and SIGTERM are passed on to it,
    and then the study stops with the signal's exit status (what is finished is kept)."""
    child = subprocess.Popen([sys.executable, "-m", "effbench", *argv])
    caught: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        caught.append(signum)
        child.send_signal(signum)

    before = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = child.wait()
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    if caught:
        name = signal.Signals(caught[0]).name
        err_console.print(
            f"interrupted by {name} during {key}; run the same command again to go on from "
            "there (finished stages and runs are kept)"
        )
        raise typer.Exit(128 + caught[0])
    if code != 0:
        err_console.print(
            f"stage {key} failed (exit {code}); fix what it says above and run the same "
            "command again: finished stages are kept"
        )
        raise typer.Exit(code if code > 0 else 1)


def _print_verdict(report_md: Path) -> None:
    """The report's path and its Recommendation and Summary lines."""
    if not report_md.is_file():
        return
    text = report_md.read_text(encoding="utf-8")
    for title in ("Recommendation", "Summary"):
        part = text.split(f"\n## {title}\n", 1)
        if len(part) == 2:
            console.print(f"[bold]{title}[/bold]")
            for line in part[1].split("\n## ", 1)[0].strip().splitlines():
                if line.strip():
                    console.print(line, markup=False, highlight=False)
    console.print(f"Report: {report_md.with_suffix('.html')} and {report_md}")
