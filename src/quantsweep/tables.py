"""Numbers as people read them: units, `value ± stderr`, and the two table layouts quantsweep prints.

One home for these, so the run summary, the search report, the sizing calculator and the leaderboard print
a missing value, a stderr and a column rule the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

GIB = 2**30
MIB = 2**20


def missing(value: Any) -> bool:
    """None, or a float NaN (pandas' missing value)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def present(record: dict[str, Any], key: str) -> Any:
    """A search_runs cell, None when the run lacks it (pandas fills absent params/tags with NaN or None)."""
    value = record.get(key)
    return None if missing(value) else value


def pm(value: Any, err: Any = None, digits: int = 3, scale: float = 1.0, unit: str = "") -> str:
    """`0.412 ± 0.031` (`-` when the value is missing; no `±` when the stderr is)."""
    if missing(value):
        return "-"
    text = f"{value * scale:.{digits}f}{unit}"
    return text if missing(err) else f"{text} ± {err * scale:.{digits}f}{unit}"


def duration(seconds: float) -> str:
    """`41s`, `2m03s`: elapsed times and ETAs on the terminal."""
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def fixed_width(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] = ()) -> str:
    """A plain-text table for the terminal: padded columns, a dashed rule under the header.

    `right[i]` right-aligns column i (numbers); columns past `right` are left-aligned."""
    cells = [list(header), *(list(r) for r in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        padded = (
            c.rjust(w) if i < len(right) and right[i] else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        return "  ".join(padded).rstrip()

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths), *(line(r) for r in cells[1:])])


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] = ()) -> str:
    """A GitHub-flavoured Markdown table; `|` in a cell is escaped, `right[i]` right-aligns column i."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    rule = "|" + "|".join("--:" if i < len(right) and right[i] else "---" for i in range(len(header))) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])
