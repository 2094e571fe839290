"""The `effbench` entry point. For the commands that measure, it settles malloc and the OpenMP
wait policy before torch loads (`effbench.env`), re-executing when the allocator needs it
(mimalloc preloaded, or glibc's huge pages); then it runs the command line."""

from __future__ import annotations

import os
import sys

# Commands that time things; `analyze` and `report` do not.
MEASURING_COMMANDS = frozenset({"profile", "train", "scale", "export"})


def main() -> None:
    """Console-script entry point (also `python -m effbench`)."""
    if MEASURING_COMMANDS.intersection(sys.argv[1:2]):
        from effbench.env import prepare_measuring_process

        try:
            reexec = prepare_measuring_process()
        except ValueError as err:
            print(f"effbench: {err}", file=sys.stderr)
            sys.exit(2)
        if reexec is not None:
            sys.stdout.flush()
            os.execve(sys.executable, [sys.executable, "-m", "effbench", *sys.argv[1:]], reexec)
    from effbench.cli import main as run_cli

    run_cli()
