"""The Typer app: the root options, the command class that takes several values after one list
flag, `main()`, and the one place where an EffbenchError becomes its `location: message` lines
on stderr and exit code 2."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from effbench import __version__
from effbench.cli.console import console, err_console, fail
from effbench.errors import EffbenchError, os_error_line

HELP = "effbench: which attention should a Vision Transformer use? Measured, side by side."


class ListOptionCommand(TyperCommand):
    """Lets list options take several values after one flag: `--seq-len 65 257 1025`.

    Click wants the flag repeated (`--seq-len 65 --seq-len 257`); this rewrites the first
    form into the second before parsing. Both forms work.
    """

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        multi: set[str] = set()
        for p in self.params:
            if getattr(p, "multiple", False):
                multi.update(getattr(p, "opts", ()))
        out: list[str] = []
        current: str | None = None
        for a in args:
            if a.startswith("-"):
                current = a if a in multi else None
                out.append(a)
            elif current is not None and out and out[-1] != current:
                out += [current, a]
            else:
                out.append(a)
        return super().parse_args(ctx, out)


def reflowed(text: str) -> str:
    """A docstring's paragraphs each on one line, so that `--help` wraps them to the terminal
    instead of keeping the source's line breaks (which showed as broken lines at 80 columns)."""
    paragraphs = (" ".join(p.split()) for p in text.strip().split("\n\n"))
    return "\n\n".join(p for p in paragraphs if p)


class EffbenchGroup(TyperGroup):
    """Runs a command; an EffbenchError it raises is printed as located lines, and an OSError
    (a write or read that failed) as one line naming the path and cause; exit 2. A
    command's help is its docstring reflowed (`reflowed`)."""

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None and cmd.help:
            cmd.help = reflowed(cmd.help)
        return cmd

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except EffbenchError as err:
            raise fail(err.lines()) from None
        except KeyboardInterrupt:  # outside a grid or a training run, which say what they kept
            err_console.print("interrupted; records already written are kept")
            raise typer.Exit(130) from None
        except OSError as err:  # a full disk, no permission, a file where a directory goes
            raise fail([os_error_line(err)]) from None


app = typer.Typer(
    cls=EffbenchGroup,
    help=HELP,
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        console.print(f"effbench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """effbench: which attention should a Vision Transformer use? Measured, side by side."""


def main() -> None:
    """Run the command line (`effbench.launch.main` prepares the process first)."""
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted; records already written are kept")
        sys.exit(130)
