"""Options that several commands share, as `Annotated` types: the spec, the models, dtype,
device, threads, batch size, timing repeats, the results directory and `--set`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from effbench.config.fields import DEFAULT_SPEC, Dtype

DEFAULT_SPEC_PATH = Path(DEFAULT_SPEC)
DEFAULT_RESULTS = Path("results")

SpecOpt = Annotated[
    Path,
    typer.Option("--spec", "-s", help="Benchmark spec (TOML).", show_default=True),
]
AttentionOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--attention",
        "-a",
        help="Models to run: model names or attention kinds from the spec, several allowed, "
        "or 'all' (default).",
    ),
]
DtypeOpt = Annotated[
    Dtype | None,
    typer.Option(help="Compute dtype (overrides the spec).", case_sensitive=False),
]
DeviceOpt = Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(help="CPU threads for torch (default: torch's, one per core)."),
]
BatchSizeOpt = Annotated[int | None, typer.Option("--batch-size", "-b", help="Batch size.")]
GridBatchOpt = Annotated[
    str | None,
    typer.Option(
        "--batch-size",
        "--batch",
        "-b",
        help="Batch size, or 'max': the largest batch whose peak memory fits --memory-limit, "
        "found per point and phase (throughput at the largest batch).",
    ),
]
MemoryLimitOpt = Annotated[
    str | None,
    typer.Option(
        help="With --batch max: the memory a call may use, e.g. 2GiB (needed on the CPU; on a "
        "GPU the default is nine tenths of its free memory).",
    ),
]
RepeatsOpt = Annotated[
    int | None, typer.Option(help="Timed repeats per point; their spread is recorded.")
]
InterleaveOpt = Annotated[
    bool | None,
    typer.Option(
        "--interleave/--no-interleave",
        help="Take the repeats round-robin over the grid (default), so that a slow spell of "
        "the machine hits every point alike; records then come after the last round. "
        "--no-interleave: each point's repeats back to back, its record at once.",
    ),
]
CompileOpt = Annotated[
    bool | None,
    typer.Option(
        "--compile/--no-compile",
        help="Time the torch.compile'd layer or model (inductor: C++ on the CPU, Triton on "
        "CUDA); its first call, which compiles, is recorded apart as compile_s.",
    ),
]
CompileModeOpt = Annotated[
    str | None,
    typer.Option(
        metavar="MODE",
        help="torch.compile mode: default, reduce-overhead (CUDA graphs) or max-autotune.",
    ),
]
ResultsOpt = Annotated[
    Path, typer.Option("--output", "-o", help="Results directory (created if absent).")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override any spec key: --set train.lr=3e-4 backbone.depth=4 (values are TOML; "
        "applied after the other options).",
    ),
]

RecipeOpt = Annotated[
    str | None,
    typer.Option(
        metavar="NAME",
        help="A spec preset shipped with effbench, instead of --spec: cpu-mini (the "
        "`compare --quick` study on 2 CPU cores), cifar10-gpu (ViT-Lite-7/4's CIFAR-10 "
        "recipe), imagenet100-gpu (DeiT-Ti's recipe at 224 px).",
    ),
]


def spec_source(spec: Path, recipe: str | None = None, *, quick: bool | None = None) -> Path:
    """The spec file a command reads (`--spec`, `--recipe`, `--quick` for compare; without
    them ./bench.toml, or the default shipped with effbench where there is none). When the
    user named none, one line on stderr says which it is.

    Raises:
        UsageError: for --spec beside --recipe or --quick, or an unknown recipe.
    """
    from effbench.cli.console import err_console
    from effbench.study.recipes import compare_spec_file, shipped_spec, spec_file

    if quick is None:
        path = spec_file(spec, recipe, default=DEFAULT_SPEC_PATH)
    else:
        path = compare_spec_file(spec, recipe, quick=quick, default=DEFAULT_SPEC_PATH)
    chosen = spec != DEFAULT_SPEC_PATH or recipe is not None or bool(quick)
    if chosen or os.environ.get("RANK", "0") != "0":  # said once, not once per DDP rank
        return path
    if path == shipped_spec():
        line = (
            f"the default shipped with effbench (no ./{DEFAULT_SPEC} here; "
            "`effbench init` writes one to edit)"
        )
    else:
        line = f"./{DEFAULT_SPEC}"
    err_console.print(f"spec: {line}", markup=False, highlight=False)
    return path
