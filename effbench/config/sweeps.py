"""Option sweeps: a `[[models]]` entry whose options hold lists expands into one model per
combination, each named after its values and grouped under the entry's name."""

from __future__ import annotations

import itertools
from typing import Any

from effbench.errors import SpecError


def _sweep_part(key: str, value: Any) -> str:
    """A variant's name part: `k32` for a number, the word for a string (`flex`), the key or
    `no` + key for a bool."""
    if isinstance(value, bool):
        return key if value else f"no{key}"
    if isinstance(value, str):
        return value
    return f"{key}{value}"


def _repeated(values: list[Any]) -> str | None:
    """The first value of a sweep equal to an earlier one (16.0 and 16 alike; a bool only
    equals a bool), as text, or None."""
    seen: list[Any] = []
    for v in values:
        if any(v == w and isinstance(v, bool) == isinstance(w, bool) for w in seen):
            return repr(v)
        seen.append(v)
    return None


def expand_sweeps(models: Any) -> tuple[Any, list[tuple[int, str]]]:
    """`[[models]]` entries whose attention options hold lists, expanded to one model per
    value (several lists: their product), each named from the entry's name and its values
    (`linformer` with `k = [32, 64]` gives `linformer-k32` and `linformer-k64`) and carrying
    the entry's name as its `group`. Returns the models and, for each, (index of the entry
    it came from, its name), so that a problem can be blamed on the entry.

    Raises:
        SpecError: for an empty list.
    """
    if not isinstance(models, list):
        return models, []
    out: list[Any] = []
    origin: list[tuple[int, str]] = []
    for i, entry in enumerate(models):
        att = entry.get("attention") if isinstance(entry, dict) else None
        swept = (
            {k: v for k, v in att.items() if isinstance(v, list) and k != "kind"}
            if isinstance(att, dict)
            else {}
        )
        if not swept:
            out.append(entry)
            origin.append((i, str(entry.get("name", "")) if isinstance(entry, dict) else ""))
            continue
        empty = [k for k, v in swept.items() if not v]
        if empty:
            raise SpecError(
                [(f"models[{i}].attention.{empty[0]}", "an option sweep needs at least one value")]
            )
        for key, values in swept.items():
            twice = _repeated(values)
            if twice is not None:
                raise SpecError(
                    [
                        (
                            f"models[{i}].attention.{key}",
                            f"the sweep lists {twice} "
                            "more than once (as equal values); list each value once",
                        )
                    ]
                )
        base = str(entry.get("name", att.get("kind", "model")))
        for values in itertools.product(*swept.values()):
            chosen = dict(zip(swept, values, strict=True))
            suffix = "-".join(_sweep_part(k, v) for k, v in chosen.items())
            name = f"{base}-{suffix}"
            out.append(
                {
                    **entry,
                    "name": name,
                    "group": entry.get("group", base),
                    "attention": {**att, **chosen},
                }
            )
            origin.append((i, name))
    return out, origin
