"""Spec fragments and helpers shared by the command-line tests."""

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from effbench.cli import app
from effbench.config.attention import CONFIGS, KINDS

# The real CIFAR-10 subset beside the checkout.
# The smallest backbone the end-to-end tests train and measure: 16 patches of 8 px, one block.
TINY_BACKBONE = """
[backbone]
image_size = 32
patch_size = 8
dim = 32
depth = 1
heads = 2
mlp_ratio = 2.0
"""

# The tiniest ViT every kind's tiny() options fit: 16 px at patch 4, 4 x 4 patches + CLS.
TINY16_BACKBONE = """
[backbone]
image_size = 16
patch_size = 4
dim = 32
depth = 1
heads = 2
mlp_ratio = 2.0
"""


def tiny_study(train: str, *, seq_lens: str = "[17, 65]") -> str:
    """The spec of a tiny whole study (compare's tests), as a `str.format` template (the
    `[train]` lines may hold fields): the tiny backbone, `sdpa` and `linformer`, two
    resolutions and the shortest profile grid, one repeat of each timing."""
    return (
        TINY_BACKBONE
        + f"""
[[models]]
name = "sdpa"
attention = {{{{ kind = "sdpa" }}}}

[[models]]
name = "linformer"
attention = {{{{ kind = "linformer", k = 8 }}}}

[train]
{train.strip()}

[scale]
resolutions = [16, 32]
batch_size = 2
device = "cpu"
repeats = 1
warmup = 0
min_run_time = 0.01
breakdown = false
count_flops = false

[profile]
seq_lens = {seq_lens}
batch_size = 2
device = "cpu"
repeats = 1
warmup = 0
min_run_time = 0.01
backward = false
count_flops = false
"""
    )


MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-mini"
needs_mini = pytest.mark.skipif(not MINI.is_dir(), reason=f"{MINI} is absent")


def run_cli(*args: str) -> tuple[int, str]:
    """`effbench ARGS...` in process: (exit code, output)."""
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def _toml(value: Any) -> str:
    """A TOML literal of a config option (bool, number or string)."""
    return str(value).lower() if isinstance(value, bool) else json.dumps(value)


def _tiny_model(kind: str) -> str:
    """One `[[models]]` entry named after `kind`, with the options its `tiny()` sets."""
    opts = CONFIGS[kind].tiny().model_dump(exclude_unset=True)
    fields = ", ".join(f"{k} = {_toml(v)}" for k, v in {"kind": kind, **opts}.items())
    return f'[[models]]\nname = "{kind}"\nattention = {{ {fields} }}\n'


# One small model of every mechanism, sized for 16-17 token sequences (4x4 patches + CLS).
TINY_MODELS = "\n" + "".join(_tiny_model(kind) for kind in KINDS)
