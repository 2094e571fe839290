"""What the report reads: every JSON Lines result file and resolved spec under the given
paths, with the lines that could not be read."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from effbench.report.figures import FIGURE_DIR
from effbench.results import BadLine, read_jsonl, spec_digest


@dataclass
class Results:
    """Every record found, where it came from, and what could not be read."""

    records: list[dict[str, Any]] = field(default_factory=list)
    bad: list[BadLine] = field(default_factory=list)
    specs: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)  # hash -> spec
    files: list[str] = field(default_factory=list)

    def kind(self, *kinds: str) -> list[dict[str, Any]]:
        """The records of these kinds (train, train_epoch, scale, profile, analyze, ...)."""
        return [r for r in self.records if r.get("kind") in kinds]


def _result_files(paths: Iterable[Path]) -> tuple[list[Path], list[Path]]:
    jsonl: list[Path] = []
    specs: list[Path] = []
    for p in paths:
        if p.is_file():
            (specs if p.name.endswith("spec.json") else jsonl).append(p)
        elif p.is_dir():
            jsonl += sorted(q for q in p.rglob("*.jsonl") if FIGURE_DIR not in q.parts)
            specs += sorted(p.rglob("*spec.json"))
    return list(dict.fromkeys(jsonl)), list(dict.fromkeys(specs))


def collect(paths: Iterable[Path]) -> Results:
    """Read every `*.jsonl` result file and `*spec.json` under `paths`."""
    out = Results()
    jsonl, specs = _result_files(paths)
    for path in jsonl:
        good, bad = read_jsonl(path)
        out.files.append(str(path))
        out.bad += bad
        for r in good:
            r["_source"] = str(path)
            out.records.append(r)
    for path in specs:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            out.bad.append(BadLine(path=str(path), line=0, reason=f"unreadable spec: {err}"))
            continue
        digest = spec_digest(data)
        out.specs.setdefault(digest, (str(path), data))
    return out
