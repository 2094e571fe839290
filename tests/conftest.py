"""Shared test setup: every test starts from the same random state."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Seed torch's global RNG so that weights, inputs and random features are reproducible."""
    torch.manual_seed(0)
