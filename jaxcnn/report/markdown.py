"""Markdown for the reports: tables, and numbers as text ("–" for a missing one)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

MISSING = "–"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """The lines of a markdown table; each cell is `str` of its value, escaped to stay in its cell."""
    return [_row(header), "|" + "---|" * len(header), *(_row(row) for row in rows)]


def _row(cells: Sequence[Any]) -> str:
    return "| " + " | ".join(cell(c) for c in cells) + " |"


def cell(value: Any) -> str:
    """`str` of a value on one line, its "|" escaped: fit for a table cell or a list item."""
    return str(value).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def percent(x: float | None, std: float | None = None, with_std: bool = False) -> str:
    """A fraction as percent with 2 decimals, optionally followed by "± std" (also in percent)."""
    if x is None:
        return MISSING
    if not with_std:
        return f"{100 * x:.2f}"
    return f"{100 * x:.2f} ± " + (MISSING if std is None else f"{100 * std:.2f}")


def number(x: float | None, fmt: str, unit: str = "") -> str:
    """`x` in format `fmt`, then `unit`."""
    return MISSING if x is None else f"{x:{fmt}}{unit}"


def duration(seconds: float | None) -> str:
    """Seconds, with minutes or hours in brackets from 2 minutes on."""
    if seconds is None:
        return MISSING
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds:.0f} s ({seconds / 60:.1f} min)"
    return f"{seconds:.0f} s ({seconds / 3600:.1f} h)"


def listing(value: Any, fmt: str = "") -> str:
    """A value, or a list of values joined by " / ", each in format `fmt`."""
    if value is None:
        return MISSING
    values = value if isinstance(value, list) else [value]
    return " / ".join(f"{x:{fmt}}" for x in values)


def statistic(t: float | None) -> str:
    """A test statistic (or degrees of freedom) with 2 decimals, or ∞ / −∞; – for none or NaN."""
    if t is None or math.isnan(t):
        return MISSING
    return ("−∞" if t < 0 else "∞") if math.isinf(t) else f"{t:.2f}"


def p_value(p: float | None) -> str:
    """A p-value to 3 decimals, `< 0.001` below that; – for none."""
    if p is None or math.isnan(p):
        return MISSING
    return "< 0.001" if p < 0.001 else f"{p:.3f}"
