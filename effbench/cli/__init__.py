"""The `effbench` command line, the only package that prints, draws progress or exits: one
module per command, registered on `app` in the order `effbench --help` lists them."""

from __future__ import annotations

from effbench.cli.app import app, main

# isort: off
# Importing a command module registers its command; this order is the order of --help.
from effbench.cli import profile, train, scale, analyze, report, compare, export, diff, init  # noqa: F401
# isort: on

__all__ = ["app", "main"]
