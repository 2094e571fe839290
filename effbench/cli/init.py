"""`effbench init [PATH]`: a commented bench.toml to start from, the default spec shipped with
effbench, never written over an existing file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from effbench.cli.app import app
from effbench.cli.console import console
from effbench.config.fields import DEFAULT_SPEC
from effbench.errors import UsageError

PathArg = Annotated[
    Path,
    typer.Argument(help="Where to write it: a file, or a directory to hold bench.toml."),
]


@app.command()
def init(path: PathArg = Path(DEFAULT_SPEC)) -> None:
    """Write a bench.toml to start from: the default spec shipped with effbench, with its
    comments, for `--spec` or for the commands to find in this directory.

    It never replaces a file: an existing PATH is refused.
    """
    from effbench.study.recipes import shipped_spec

    target = path / DEFAULT_SPEC if path.is_dir() else path
    if not target.parent.is_dir():
        raise UsageError(f"{target.parent} is not a directory; create it or pass another PATH")
    write_new(target, shipped_spec().read_bytes())
    console.print(
        f"wrote {target}: the default spec; edit it, then run `effbench profile`"
        + ("" if target == Path(DEFAULT_SPEC) else f" --spec {target}"),
        markup=False,
        highlight=False,
    )


def write_new(target: Path, data: bytes) -> None:
    """Write `data` to `target`, which must not exist: created exclusively, so that a file
    already there (or one made meanwhile) is never replaced, and removed again if the write
    fails, so that nothing half-written is left.

    Raises:
        UsageError: when `target` exists.
    """
    try:
        fh = target.open("xb")
    except FileExistsError:
        raise UsageError(
            f"{target} exists; effbench init never replaces a spec: move it away or pass "
            "another PATH"
        ) from None
    try:
        with fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        target.unlink(missing_ok=True)
        raise
