"""Which records the report can use: each is validated against its schema in effbench.results
(fields it does not know are let through), its numbers must be finite and of a sane size, and
what the sections compute with must be in range. A record that fails is a bad line."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

from effbench.crossover import metrics_for
from effbench.results import (
    SCHEMA_VERSION,
    AnalyzeRecord,
    ExportRecord,
    ProfileRecord,
    Record,
    ScaleRecord,
    ScaleSummaryRecord,
    TrainEpochRecord,
    TrainRecord,
)

SCHEMAS: dict[str, type[BaseModel]] = {
    m.model_fields["kind"].default: m
    for m in (
        ProfileRecord, ScaleRecord, ScaleSummaryRecord, TrainRecord, TrainEpochRecord,
        AnalyzeRecord, ExportRecord,
    )
}  # fmt: skip
"""Record kind -> its schema; records of other kinds are held to the fields all records have."""

LIMIT = 1e100  # no figure of a record is larger: beyond this, a number is corrupt
FRACTIONS = ("test_top1", "test_top5", "best_val_top1", "train_top1", "val_top1", "val_top5")
SIZES = ("seq_len", "image_size", "patch_size", "batch_size", "dim", "depth", "heads")
NON_NEGATIVE = ("n_images", "n_test", "n_train", "n_val", "params", "flops_per_image")
NON_NEGATIVE_SUFFIXES = ("_ms", "_mib", "_s")  # times, memory and rates
SHORT = 40  # characters of a user's text (a kind, a key) quoted in a reason


def admit(record: dict[str, Any]) -> str | None:
    """Why the report cannot use `record` (a line of a results file), or None when it can.

    A record whose status says it failed (nan, oom, error) may hold NaN or infinite figures
    of its own: they are what failed, and are read as missing (set to None here). Anywhere
    else (an ok record, or inside a failed record's tables) a non-finite number makes the
    record unusable.
    """
    kind = record.get("kind")
    if not isinstance(kind, str):
        return "kind is not a string"
    what = f"{_short(kind)} record"
    version = record.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        return (
            f"{what}: schema_version {_short(str(version))}, but this effbench reads version "
            f"{SCHEMA_VERSION}; report it with the effbench that wrote it"
        )
    problem = _schema(record, SCHEMAS.get(kind, Record)) or _values(record) or _ranges(record)
    if problem is None and kind == "scale" and not metrics_for(record["mode"]):
        problem = f"mode {_short(record['mode'])!r} is not infer, train or both"
    if problem is None and kind == "analyze":
        problem = _analyze(record)
    return None if problem is None else f"{what}: {problem}"


def _short(text: str) -> str:
    return text if len(text) <= SHORT else text[: SHORT - 1] + "…"


def _where(loc: tuple[Any, ...]) -> str:
    """'layers[0].rel_output_error' from a location ('layers', 0, 'rel_output_error')."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{_short(str(part))}"
    return out.lstrip(".") or "record"


def _schema(record: dict[str, Any], schema: type[BaseModel]) -> str | None:
    """The first way `record` breaks `schema` (strictly: no string read as a number), fields
    the schema does not know aside: they may come from a newer or older effbench."""
    try:
        schema.model_validate(record, strict=True)
    except ValidationError as err:
        errors = [e for e in err.errors() if e["type"] != "extra_forbidden"]
        if errors:
            first = errors[0]
            msg = "missing" if first["type"] == "missing" else first["msg"]
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            return f"{_where(first['loc'])}: {msg}{more}"
    return None


def _leaves(record: dict[str, Any]) -> Iterator[tuple[tuple[Any, ...], Any, Any, Any]]:
    """(location of the container, container, key, value) of every value in `record` that is
    not a container, and of every key; iterative, so any depth is fine."""
    stack: list[tuple[tuple[Any, ...], Any]] = [((), record)]
    while stack:
        loc, node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            if isinstance(key, str):
                yield loc, node, None, key
            if isinstance(value, dict | list):
                stack.append(((*loc, key), value))
            else:
                yield loc, node, key, value


def _values(record: dict[str, Any]) -> str | None:
    """Numbers that are not finite or too large, and text that is not valid Unicode (lone
    surrogates from JSON escapes, which no file can hold)."""
    failed = record.get("status", "ok") != "ok"
    for loc, node, key, value in _leaves(record):
        if isinstance(value, str):
            if not value.isascii() and not _encodable(value):
                return f"{_where((*loc, key) if key is not None else loc)}: not valid Unicode text"
        elif isinstance(value, float) and not math.isfinite(value):
            if not (failed and node is record):
                return f"{_where((*loc, key))} is {value}"
            node[key] = None
        elif isinstance(value, int | float) and not -LIMIT <= value <= LIMIT:
            return f"{_where((*loc, key))} is out of range (beyond ±{LIMIT:g})"
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _ranges(record: dict[str, Any]) -> str | None:
    """Figures the sections compute with, out of their range."""
    for name, value in record.items():
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        if name in FRACTIONS and not 0 <= value <= 1:
            return f"{name} = {value:g} is not between 0 and 1"
        if name in SIZES and value < 1:
            return f"{name} = {value:g} is not at least 1"
        if (name in NON_NEGATIVE or name.endswith(NON_NEGATIVE_SUFFIXES)) and value < 0:
            return f"{name} = {value:g} is negative"
    return None


def _array(value: Any, ndim: int) -> np.ndarray | None:
    """`value` as a non-empty `ndim`-dimensional array of numbers, or None when it is not one."""
    try:
        a = np.array(value)
    except (ValueError, TypeError, RecursionError):  # ragged, or nested beyond numpy's dims
        return None
    return a if a.dtype.kind in "iuf" and a.ndim == ndim and a.size else None


def _analyze(r: dict[str, Any]) -> str | None:
    """The maps and images of an analyze record in the shapes the maps section draws."""
    if r.get("has_map", True) is False:  # a mechanism without a map: no map fields
        given = [k for k in ("cls_maps", "cls_maps_exact", "rollout", "rollout_exact") if r.get(k)]
        if given:
            return f"has_map is false but {', '.join(given)} given"
        return _images(r) or _performer_curve(r)
    return _counts(r) or _images(r) or _maps(r) or _performer_curve(r)


def _counts(r: dict[str, Any]) -> str | None:
    n = len(r["images"])
    if not n or not r["layers"] or not r["cls_maps"]:
        return "images, layers and cls_maps must not be empty"
    if len(r["grid"]) != 2:
        return "grid is not [rows, columns]"
    for name in ("labels", "predictions", "rollout", "rollout_exact"):
        if len(r[name]) != n:
            return f"{name} has {len(r[name])} entries for {n} images"
    if len(r["cls_maps_exact"]) != len(r["cls_maps"]):
        return "cls_maps and cls_maps_exact have different numbers of layers"
    for name in ("cls_maps", "cls_maps_exact"):
        for layer, per_image in enumerate(r[name]):
            if not isinstance(per_image, list) or len(per_image) != n:
                return f"{name}[{layer}] does not hold one map per image"
    return None


def _images(r: dict[str, Any]) -> str | None:
    for i, image in enumerate(r["images"]):
        a = _array(image, 3)
        if a is None or a.shape[-1] not in (3, 4) or a.min() < 0 or a.max() > 255:
            return f"images[{i}] is not an image (rows, columns, RGB values 0-255)"
    return None


def _maps(r: dict[str, Any]) -> str | None:
    maps = [
        (f"{name}[{i}]", m) for name in ("rollout", "rollout_exact") for i, m in enumerate(r[name])
    ]
    for name in ("cls_maps", "cls_maps_exact"):
        for layer, per_image in enumerate(r[name]):
            maps += [(f"{name}[{layer}][{i}]", m) for i, m in enumerate(per_image)]
    bad = next((where for where, m in maps if _array(m, 2) is None), None)
    return None if bad is None else f"{bad} is not a 2-D map of numbers"


def _performer_curve(r: dict[str, Any]) -> str | None:
    for i, point in enumerate(r.get("performer_curve") or []):
        if not point.get("features", 0) > 0 or "rel_error" not in point:
            return f"performer_curve[{i}] needs features > 0 and rel_error"
    return None
