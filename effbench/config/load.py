"""Reading and validating a spec: the TOML file, overrides and sweeps applied, pydantic's
errors turned into one (location, message) per problem blamed on where its value came from,
and the models a command selects."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import (
    ValidationError,
)

from effbench.config.attention import KINDS
from effbench.config.fields import (
    DEFAULT_SPEC,
)
from effbench.config.overrides import set_dotted
from effbench.config.spec import BenchSpec, ModelEntry
from effbench.config.sweeps import expand_sweeps
from effbench.errors import SpecError


def _loc(parts: Iterable[Any]) -> str:
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += f".{p}" if out else str(p)
    return out


def _pydantic_issues(err: ValidationError) -> list[tuple[str, str]]:
    issues = []
    for e in err.errors(include_url=False):
        # Drop the tag that pydantic inserts for the chosen member of a discriminated union
        # (right after `attention`; an option may share a kind's name, as window's does).
        raw = list(e["loc"])
        loc = [
            p
            for i, p in enumerate(raw)
            if not (isinstance(p, str) and p in KINDS and i and raw[i - 1] == "attention")
        ]
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "union_tag_invalid":
            kind = e["input"].get("kind")
            msg = f"unknown attention kind {kind!r}; choose one of {', '.join(KINDS)}"
            loc.append("kind")
        elif e["type"] == "union_tag_not_found":
            msg = f"missing 'kind'; choose one of {', '.join(KINDS)}"
        elif e["type"] == "extra_forbidden":
            msg = f"unknown key {loc[-1]!r} (check its spelling)"
        issues.append((_loc(loc), msg))
    return issues


def _blame_entries(
    issues: list[tuple[str, str]], origin: list[tuple[int, str]]
) -> list[tuple[str, str]]:
    """Locations `models[j]...` of expanded models named as the entry they came from."""
    if all(i == j for j, (i, _) in enumerate(origin)):
        return issues
    out = []
    for loc, msg in issues:
        m = re.match(r"models\[(\d+)\](.*)", loc)
        if m and int(m.group(1)) < len(origin):
            entry, name = origin[int(m.group(1))]
            loc = f"models[{entry}]{m.group(2)} ({name})"
        out.append((loc, msg))
    return out


def parse_spec(
    data: Mapping[str, Any],
    *,
    overrides: Mapping[str, Any] | None = None,
    source: str = DEFAULT_SPEC,
    origins: dict[str, str] | None = None,
) -> BenchSpec:
    """Validate a spec dict, applying dotted-key overrides (CLI options, `--set`) first;
    `origins` names where an override came from, so that its problems are blamed on it.
    Options that depend on token counts are checked by `BenchSpec.token_problems`, for
    the models and lengths that run.

    Raises:
        SpecError: with one (location, message) per problem.
    """
    merged: dict[str, Any] = json.loads(json.dumps(data))  # deep copy of plain TOML data
    for key, value in (overrides or {}).items():
        if value is not None:
            try:
                set_dotted(merged, key, value)
            except SpecError as err:
                raise SpecError(err.issues, source, origins) from None
    origin: list[tuple[int, str]] = []
    try:
        if "models" in merged:
            merged["models"], origin = expand_sweeps(merged["models"])
    except SpecError as err:
        raise SpecError(err.issues, source, origins) from None
    try:
        spec = BenchSpec.model_validate(merged)
    except ValidationError as err:
        raise SpecError(_blame_entries(_pydantic_issues(err), origin), source, origins) from None
    issues = spec.problems()
    if issues:
        raise SpecError(_blame_entries(issues, origin), source, origins)
    return spec


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file, turning a missing file or bad syntax into a SpecError."""
    p = Path(path)
    if not p.is_file():
        what = "is a directory" if p.is_dir() else "not found"
        raise SpecError([("", f"spec file {what}; pass --spec PATH to a bench.toml")], str(p))
    try:
        return tomllib.loads(p.read_text(encoding="utf-8-sig"))  # a BOM is not TOML
    except UnicodeDecodeError as err:
        raise SpecError([("", f"not UTF-8 text: {err}")], str(p)) from None
    except ValueError as err:  # TOMLDecodeError, or an integer of thousands of digits
        raise SpecError([("", f"invalid TOML: {str(err).splitlines()[0]}")], str(p)) from None
    except (OSError, RecursionError) as err:
        raise SpecError([("", f"unreadable: {err or type(err).__name__}")], str(p)) from None


def load_spec(
    path: str | Path = DEFAULT_SPEC, overrides: Mapping[str, Any] | None = None
) -> BenchSpec:
    """Read, override and validate a spec file."""
    return parse_spec(read_toml(path), overrides=overrides, source=str(path))


def select_models(spec: BenchSpec, wanted: Iterable[str] | None) -> BenchSpec:
    """The spec restricted to the models named on the command line.

    Names are model names, attention kinds, or 'all'. A kind that no model in the spec
    uses gets a model with that kind's default options.

    Raises:
        SpecError: naming what is unknown and what is available.
    """
    wanted = [w for item in (wanted or ["all"]) for w in item.split(",") if w]
    if not wanted or "all" in wanted:
        return spec
    chosen: list[ModelEntry] = []
    unknown = []
    for w in wanted:
        by_name = [m for m in spec.models if m.name == w] or [
            m for m in spec.models if m.group == w
        ]
        by_kind = [m for m in spec.models if m.attention.kind == w]
        if by_name or by_kind:
            picks = by_name or by_kind
        elif w in KINDS:
            picks = [ModelEntry.model_validate({"name": w, "attention": {"kind": w}})]
        else:
            unknown.append(w)
            continue
        chosen += [m for m in picks if m not in chosen]
    if unknown:
        names = ", ".join(m.name for m in spec.models)
        raise SpecError(
            [
                (
                    "--attention",
                    f"unknown attention {', '.join(map(repr, unknown))}; "
                    f"choose 'all', a model ({names}) or a kind ({', '.join(KINDS)})",
                )
            ],
            "command line",
        )
    return spec.model_copy(update={"models": chosen})
