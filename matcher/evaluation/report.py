"""Plain-text reports: Markdown tables and a one-call report writer."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from numbers import Integral, Real
from pathlib import Path
from typing import Any

__all__ = ["format_value", "markdown_grid", "markdown_table", "pose_table", "write_report", "write_rows_json"]


def format_value(value: Any, floatfmt: str = ".3f") -> str:
    """One table cell: None -> "", bool -> "yes"/"no", ints as is, floats with floatfmt, NaN -> "nan"."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Integral):
        return str(int(value))
    if isinstance(value, Real):
        value = float(value)
        return "nan" if math.isnan(value) else format(value, floatfmt)
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(
    rows: Iterable[Mapping[str, Any]],
    columns: list[str],
    floatfmt: str | Mapping[str, str] = ".3f",
) -> str:
    """A GitHub-flavoured Markdown table of ``rows`` restricted to ``columns`` (in that order).

    floatfmt: a format spec for every float column, or ``{column: spec}`` (".3f" where missing).
    Missing keys give empty cells; numeric columns are right-aligned. Ends with a newline.
    """
    rows = list(rows)
    formats = floatfmt if isinstance(floatfmt, Mapping) else {}
    default = ".3f" if isinstance(floatfmt, Mapping) else floatfmt
    cells = [[format_value(row.get(c), formats.get(c, default)) for c in columns] for row in rows]
    def is_number(value: Any) -> bool:
        return isinstance(value, Real) and not isinstance(value, bool)

    numeric = [
        any(row.get(c) is not None for row in rows)
        and all(is_number(row.get(c)) or row.get(c) is None for row in rows)
        for c in columns
    ]
    return _grid([format_value(c) for c in columns], cells, "".join("r" if n else "-" for n in numeric)) + "\n"


_RULES = {"-": "---", "l": ":---", "r": "---:", "c": ":---:"}


def markdown_grid(
    headers: Sequence[Any], rows: Iterable[Sequence[Any]], align: str | None = None, floatfmt: str = ".3f"
) -> str:
    """A GitHub-flavoured Markdown table of ready rows (lists of cells, each through :func:`format_value`
    with ``floatfmt``; ``""`` prints floats as ``str`` does).

    align: one character per column, ``l``/``r``/``c`` or ``-`` (no alignment); default: the first column left,
    the others right. No trailing newline.
    """
    cells = [[format_value(c, floatfmt) for c in row] for row in rows]
    return _grid([format_value(h) for h in headers], cells, align or "l" + "r" * (len(headers) - 1))


def _grid(headers: list[str], cells: list[list[str]], align: str) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(_RULES[a] for a in align) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


POSE_COLUMNS = ["scene", "method", "matches", "inliers", "auc@1", "auc@2", "auc@5", "auc@10", "auc@20",
                "failed_pairs", "time_s"]


def pose_table(rows: Iterable[Mapping[str, Any]], reconstruct: bool = False) -> str:
    """The pose protocol's rows (:func:`matcher.evaluation.run.evaluate_scene`, each with its ``scene``) as a
    Markdown table: AUCs in percent, matches and inliers rounded, registered images when ``reconstruct``."""
    columns = POSE_COLUMNS + (["registered", "total_images"] if reconstruct else [])

    def cell(row: Mapping[str, Any], key: str) -> str:
        value = row.get(key, "")
        if key.startswith("auc@"):
            return f"{100 * value:.1f}"
        if key in ("matches", "inliers"):
            return f"{value:.0f}"
        return f"{value:.1f}" if isinstance(value, float) else str(value)

    return markdown_grid(columns, [[cell(r, c) for c in columns] for r in rows])


def write_rows_json(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """The pose protocol's rows as JSON, without their ``pose_curve`` (values JSON cannot hold as strings)."""
    Path(path).write_text(json.dumps([{k: v for k, v in r.items() if k != "pose_curve"} for r in rows], indent=1,
                                     default=str))


def write_report(
    path: str | Path,
    sections: Mapping[str, str] | Iterable[tuple[str, str]],
    title: str | None = None,
) -> Path:
    """Write a Markdown file: optional ``# title``, then ``## heading`` + body for each section."""
    items = sections.items() if isinstance(sections, Mapping) else sections
    parts = [f"# {title}\n"] if title else []
    for heading, body in items:
        parts.append(f"## {heading}\n\n{body.rstrip()}\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
