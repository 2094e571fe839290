"""Shared test setup: every test starts from the same random state, and no test reads or
writes the user's own data cache."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _data_cache(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The default data location ($EFFBENCH_DATA) is an empty folder of the session's, here
    and in every command a test starts, so a missing dataset is missing for every user."""
    saved = os.environ.get("EFFBENCH_DATA")
    os.environ["EFFBENCH_DATA"] = str(tmp_path_factory.mktemp("effbench-data"))
    yield Path(os.environ["EFFBENCH_DATA"])
    if saved is None:
        os.environ.pop("EFFBENCH_DATA", None)
    else:
        os.environ["EFFBENCH_DATA"] = saved


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Seed torch's global RNG so that weights, inputs and random features are reproducible."""
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _no_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command a test runs in process ends without a traceback: its output names none,
    and nothing escaped it but an exit (an escaped exception prints one for a real user)."""
    from typer.testing import CliRunner

    invoke = CliRunner.invoke

    def checked(self: CliRunner, *args: Any, **kwargs: Any) -> Any:
        result = invoke(self, *args, **kwargs)
        assert "Traceback" not in result.output, result.output
        escaped = result.exception
        assert escaped is None or isinstance(escaped, SystemExit), repr(escaped)
        return result

    monkeypatch.setattr(CliRunner, "invoke", checked)
