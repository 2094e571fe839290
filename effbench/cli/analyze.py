"""`effbench analyze`: attention maps and fidelity of trained runs against exact attention,
one record per run and a line of figures each."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from effbench.cli.app import app
from effbench.cli.console import console, located
from effbench.cli.options import DEFAULT_RESULTS, DeviceOpt, ResultsOpt
from effbench.plan import choose_device, load_runs

RunsArg = Annotated[
    list[Path],
    typer.Argument(help="Trained runs (runs/<model>/seed<N>), one or more.", show_default=False),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(help="The dataset, when not where the runs were trained."),
]


@app.command()
def analyze(
    runs: RunsArg,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
    output: ResultsOpt = DEFAULT_RESULTS,
) -> None:
    """Attention maps and fidelity of trained models against exact attention.

    From each run's own weights on test images: per layer, the relative output error of the
    attention (a residual branch such as Nystrom's conv measured apart) and, where the map is
    a distribution, the total-variation distance against exact softmax attention, Nystrom's
    pseudo-inverse residuals, Performer's error against its feature count, and CLS attention
    maps with rollout beside the exact ones. Written to <output>/analyze-<run>.jsonl for
    `effbench report`.
    """
    from effbench.analyze import analyze_run
    from effbench.env import environment
    from effbench.results import JsonlWriter, new_run_id

    dev = choose_device(device or "auto", where="--device")
    found = load_runs(runs, data_dir=data_dir)
    run_id = new_run_id()
    env = environment(str(dev), "float32")
    path = output / f"analyze-{run_id}.jsonl"
    with JsonlWriter(path) as writer:
        for run, state in found:
            console.print(f"{run.entry.name} ({run.directory}): analysing...")
            with located(run.directory):
                rec = analyze_run(run, state, device=dev, env=env, run_id=run_id)
            writer.write(rec)
            console.print(_fidelity_line(rec))
    console.print(f"Results: {path}")


def _fidelity_line(rec: Any) -> str:
    """One analysed run in a line: its attention error range, a residual branch's size apart,
    and TV distance where its maps are distributions."""
    errors = [x.approximation_error for x in rec.layers]
    branch = [x.skip_rel_norm for x in rec.layers if x.skip_rel_norm is not None]
    tv = [x.tv_mean for x in rec.layers if x.tv_mean is not None]
    rows = (
        f"mean TV distance {sum(tv) / len(tv):.3g}"
        if tv
        else "maps not distributions over the keys: no TV distance"
    )
    apart = f" (residual branch apart, size {min(branch):.3g}-{max(branch):.3g})" if branch else ""
    return (
        f"  {len(rec.layers)} layers on {rec.n_images} test images: attention error "
        f"{min(errors):.3g}-{max(errors):.3g}{apart}, {rows}, against exact attention"
    )
