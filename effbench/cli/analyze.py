"""`effbench analyze`: attention maps and fidelity of trained runs against exact attention,
one record per run and a line of figures each."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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

    From each run's own weights on test images: per layer, the relative output error and
    total-variation distance against exact softmax attention, Nystrom's pseudo-inverse
    residual, Performer's error against its feature count, and CLS attention maps with
    rollout beside the exact ones. Written to <output>/analyze-<run>.jsonl for
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
            errors = [x.rel_output_error for x in rec.layers]
            tv = [x.tv_mean for x in rec.layers if x.tv_mean is not None]
            rows = (
                f"mean TV distance {sum(tv) / len(tv):.3g}"
                if tv
                else "signed maps (not distributions: no TV distance)"
            )
            console.print(
                f"  {len(rec.layers)} layers on {rec.n_images} test images: relative output "
                f"error {min(errors):.3g}-{max(errors):.3g}, {rows}, against exact attention"
            )
    console.print(f"Results: {path}")
