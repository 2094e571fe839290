"""What the report reads: every JSON Lines result file and resolved spec under the given
paths, with the lines that could not be read or that hold no record the report can use
(`checks.admit`)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from effbench.config.spec import spec_digest
from effbench.report.checks import admit
from effbench.report.figures import FIGURE_DIR
from effbench.results import BadLine, read_jsonl


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


MAX_SPEC_DEPTH = 32  # a resolved spec is a few levels deep; far deeper is not one


def _depth(data: Any) -> int:
    """How deeply JSON data nests (iterative, for data of any depth)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth)
            stack += [(x, depth + 1) for x in (node.values() if isinstance(node, dict) else node)]
    return deepest


def shown(path: Path | str) -> str:
    """A path as text that can be written out: bytes of a name that are not UTF-8 as escapes."""
    return str(path).encode("utf-8", "backslashreplace").decode("utf-8")


def _first(err: BaseException) -> str:
    """The first line of an error's message (at most 200 characters), as text to write out."""
    return shown((str(err).splitlines() or [type(err).__name__])[0][:200])


def _once(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[BadLine]]:
    """Each record once: a record identical to one read from another file (a run directory
    or results file copied beside itself) is dropped, and each file's copies become one
    skipped line naming the file it repeats, so that a copy is never counted as a second
    seed or point."""
    first: dict[str, str] = {}
    kept, dropped = [], {}
    for r in records:
        source = r.pop("_source")
        key = json.dumps(r, sort_keys=True, default=str)
        r["_source"] = source
        original = first.setdefault(key, source)
        if original == source:
            kept.append(r)
        else:
            dropped[(source, original)] = dropped.get((source, original), 0) + 1
    said = "record(s) identical to those in {} (a copy): counted once"
    lines = [
        BadLine(path=shown(copy), line=0, reason=f"{n} {said.format(shown(original))}")
        for (copy, original), n in dropped.items()
    ]
    return kept, lines


def collect(paths: Iterable[Path]) -> Results:
    """Read every `*.jsonl` result file and `*spec.json` under `paths`. A line that is not a
    record the report can use is kept in `bad` with the reason, never raised."""
    out = Results()
    jsonl, specs = _result_files(paths)
    for path in jsonl:
        try:
            good, bad = read_jsonl(path, check=admit)
        except OSError as err:  # a directory named *.jsonl, no permission, a failing disk
            out.bad.append(BadLine(path=shown(path), line=0, reason=f"unreadable: {_first(err)}"))
            continue
        out.files.append(shown(path))
        out.bad += [b.model_copy(update={"path": shown(b.path)}) for b in bad]
        for r in good:
            r["_source"] = str(path)
            out.records.append(r)
    out.records, copies = _once(out.records)
    out.bad += copies
    for path in specs:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if _depth(data) > MAX_SPEC_DEPTH:
                raise ValueError("nested too deeply for a spec")
        except (OSError, ValueError, RecursionError) as err:  # unreadable, not UTF-8, not JSON
            reason = f"unreadable spec: {_first(err)}"
            out.bad.append(BadLine(path=shown(path), line=0, reason=reason))
            continue
        out.specs.setdefault(spec_digest(data), (shown(path), data))
    return out
