"""One benchmark figure: what was measured, its target, met or the gap; the table and JSON."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

Op = Literal["<", "<=", ">=", "=="]


@dataclass(frozen=True)
class Row:
    section: str
    name: str
    value: float
    unit: str
    target: str
    """What the figure must be ("< 15 s"); empty for a figure shown beside the others."""
    met: bool | None
    """None: no target (a figure for context)."""
    gap: str = ""
    """How far from the target, when it is not met."""
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["value"] = None if math.isnan(self.value) else self.value
        return data

    @property
    def verdict(self) -> str:
        if self.met is None:
            return ""
        return "met" if self.met else f"GAP {self.gap}".rstrip()


def figure(section: str, name: str, value: float, unit: str, note: str = "") -> Row:
    return Row(section, name, float(value), unit, "", None, "", note)


def check(
    section: str,
    name: str,
    value: float,
    unit: str,
    op: Op,
    limit: float,
    note: str = "",
) -> Row:
    """A figure against `op limit`; a NaN value (not measured) is never met."""
    value = float(value)
    met = (
        not math.isnan(value)
        and {
            "<": value < limit,
            "<=": value <= limit,
            ">=": value >= limit,
            "==": value == limit,
        }[op]
    )
    gap = ""
    if not met:
        gap = "not measured" if math.isnan(value) else f"{value - limit:+.{_digits(unit)}f} {unit}"
    target = f"{op} {_show(limit, unit)}"
    return Row(section, name, value, unit, target, met, gap, note)


def _digits(unit: str) -> int:
    return 0 if unit in ("B", "ids", "polls", "members", "processes", "") else 2


def _show(value: float, unit: str) -> str:
    if math.isnan(value):
        return "-"
    text = f"{value:.{_digits(unit)}f}" if _digits(unit) else f"{value:.0f}"
    return f"{text} {unit}".rstrip()


def table(rows: list[Row]) -> str:
    """A plain-text table (also valid Markdown), one line per figure."""
    head = ("benchmark", "measured", "target", "verdict")
    lines = [f"| {' | '.join(head)} |", f"|{'|'.join('---' for _ in head)}|"]
    section = ""
    for row in rows:
        if row.section != section:
            section = row.section
            lines.append(f"| **{section}** | | | |")
        name = row.name + (f" ({row.note})" if row.note else "")
        cells = (name, _show(row.value, row.unit), row.target or "-", row.verdict or "-")
        lines.append(f"| {' | '.join(cells)} |")
    return "\n".join(lines)
