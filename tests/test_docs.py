"""The README's Quick start stays true: CI runs its test command verbatim, and the README
documents every registered mechanism."""

from __future__ import annotations

import re
from pathlib import Path

from effbench.attention import available

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_quick_start_has_two_commands_and_ci_runs_the_test_one() -> None:
    commands = quick_start_commands()
    assert len(commands) == 2, commands
    run, test = commands
    assert "effbench profile" in run and "pytest" in test
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test in ci, "the last command of .ci/run must be the README's test command"
    assert ci[-1] == test


def test_readme_documents_every_mechanism() -> None:
    readme = (ROOT / "README.md").read_text()
    for kind in available():
        assert f"| `{kind}` |" in readme, kind
