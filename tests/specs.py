"""Spec fragments and helpers shared by the command-line tests."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from effbench.cli import app

# The real CIFAR-10 subset beside the checkout.
MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-mini"
needs_mini = pytest.mark.skipif(not MINI.is_dir(), reason=f"{MINI} is absent")


def run_cli(*args: str) -> tuple[int, str]:
    """`effbench ARGS...` in process: (exit code, output)."""
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


# One small model of every mechanism, sized for 16-17 token sequences (4x4 patches + CLS).
TINY_MODELS = """
[[models]]
name = "standard"
attention = { kind = "standard" }
[[models]]
name = "fused"
attention = { kind = "fused" }
[[models]]
name = "sdpa"
attention = { kind = "sdpa" }
[[models]]
name = "linformer"
attention = { kind = "linformer", k = 8 }
[[models]]
name = "performer"
attention = { kind = "performer", features = 16 }
[[models]]
name = "nystrom"
attention = { kind = "nystrom", landmarks = 4, conv_kernel = 3 }
[[models]]
name = "hybrid"
attention = { kind = "hybrid", window = 3, dilation = 1 }
"""
