"""Markdown for every report: one way to write a table and a number, so all reports read alike."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


def markdown_table(headers: Sequence, rows: Iterable[Sequence], align: str, spaced: bool = False) -> str:
    """A markdown table (lines joined by newlines, no final one): ``headers``, the separator, then ``rows`` (cells
    as text; anything else is ``str()``-ed). ``align`` holds one letter per column, ``l`` (``---``) or ``r``
    (``---:``); ``spaced`` writes the separator as ``| --- | ---: |`` instead of ``|---|---:|``."""
    if len(align) != len(headers):
        raise ValueError(f"align {align!r} has {len(align)} letters for {len(headers)} columns")
    marks = ["---:" if letter == "r" else "---" for letter in align]
    separator = "| " + " | ".join(marks) + " |" if spaced else "|" + "|".join(marks) + "|"
    return "\n".join([_row(headers), separator, *(_row(row) for row in rows)])


def _row(cells: Sequence) -> str:
    return "|" + "|".join(f" {cell} " if cell != "" else " " for cell in map(str, cells)) + "|"


def format_number(value, digits: int = 3) -> str:
    """A table cell: a float with ``digits`` decimals, ``-`` for None or NaN, anything else as ``str()``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)
