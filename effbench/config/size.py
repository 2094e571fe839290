"""Memory sizes as people write them (`2GiB`, `512M`, `1.5G`), parsed without torch: the
`--memory-limit` of `--batch max`."""

from __future__ import annotations

import re

UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
SIZE_HELP = "a size such as 2GiB, 512MiB or 1.5G (K, M, G and T are powers of 1024)"
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes in `text`.

    Raises:
        ValueError: naming the accepted form, for text that is not a positive size.
    """
    m = _SIZE.match(text)
    if m is None:
        raise ValueError(f"{text!r} is not {SIZE_HELP}")
    value = int(float(m.group(1)) * UNITS[m.group(2).lower()])
    if value <= 0:
        raise ValueError(f"{text!r} is not a positive size; use {SIZE_HELP}")
    return value


def size_words(n: float) -> str:
    """A byte count as the largest unit it fills: '2 GiB', '512 MiB', '1.5 GiB'."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        scale = UNITS[unit[0].lower()]
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"
