"""Shared test setup: every test starts from the same random state."""

from __future__ import annotations

from typing import Any

import pytest
import torch


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
