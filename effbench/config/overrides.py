"""Dotted-key overrides of a spec: what command options and `--set key=value` items change,
parsed as TOML values, before the spec is validated."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from typing import Any

from effbench.errors import SpecError


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set `section.key` (or deeper) in a nested dict, creating tables as needed."""
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise SpecError([(key, f"{p!r} is not a table")])
        node = nxt
    node[parts[-1]] = value


# What a --set value may be without TOML quotes: a plain word or path (`synthetic`, `runs/a`).
_BARE = re.compile(r"[A-Za-z0-9_./~+:@-]+")


def parse_set(items: Iterable[str]) -> dict[str, Any]:
    """`--set section.key=value` options as overrides; values are TOML (`3`, `1e-3`, `true`,
    `[0, 1]`, `"text"`), and a plain word or path (`synthetic`, `runs/a`) is taken as a string.

    Raises:
        SpecError: for an item without `=` or a section, or a value that is neither.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or "." not in key or not all(key.split(".")):
            raise SpecError(
                [("--set", f"{item!r} is not section.key=value (e.g. train.lr=3e-4)")],
                "command line",
            )
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except (tomllib.TOMLDecodeError, ValueError) as err:
            if not _BARE.fullmatch(raw):
                reason = str(err).splitlines()[0] if str(err) else "invalid"
                raise SpecError(
                    [
                        (
                            "",
                            f"{raw!r} is not a TOML value ({reason}); write numbers as 3 or "
                            '1e-3, text as "text", lists as [0, 1]',
                        )
                    ],
                    f"--set {key}",
                ) from None
            value = raw
        out[key] = value
    return out
