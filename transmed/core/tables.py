"""The one Markdown table renderer of the project (benchmark report, ablation comparison)."""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence


def is_missing(value: Any) -> bool:
    """None, NaN and pandas' missing markers (NA, NaT): rendered as an empty cell."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return type(value).__name__ in ("NAType", "NaTType")


def format_cell(value: Any, spec: Optional[str] = None) -> str:
    """One cell: empty when missing; numbers through `format(value, spec)`; everything else as `str`.

    `spec` applies to real numbers only (not to bools or strings), so a column can mix formatted
    numbers with ready-made text. Pipes are escaped and newlines become spaces, so a cell never
    breaks the table.
    """
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
        value = value.item()  # numpy scalars format as the Python numbers they hold
    if is_missing(value):
        return ""
    if spec is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        text = format(value, spec)
    else:
        text = str(value)
    return text.replace("\r\n", " ").replace("\n", " ").replace("|", "\\|")


def markdown_table(
    rows: Sequence[Mapping[str, Any]], columns: Optional[Sequence[str]] = None, formats: Optional[Mapping[str, str]] = None
) -> str:
    """A GitHub-flavoured Markdown table of `rows`, one line per row, without a trailing newline.

    `columns`: which keys, in order, also the header (default: every key, in order of first
    appearance). A row without a key gets an empty cell. `formats`: a format spec per column
    (`format(value, spec)`, e.g. `",.1f"`, `".3f"`, `"d"`), for numbers only.
    """
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    if not columns:
        raise ValueError("markdown_table needs at least one column")
    formats = formats or {}
    header = [format_cell(str(column)) for column in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(format_cell(row.get(column), formats.get(column)) for column in columns) + " |")
    return "\n".join(lines)
