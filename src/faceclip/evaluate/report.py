"""Tables and files for evaluation results (JSON and CSV written atomically)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

__all__ = ["format_rows", "write_json", "write_csv"]


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def format_rows(rows: list[dict], columns: list[str] | None = None, max_rows: int | None = None) -> str:
    """A fixed-width text table of dict rows (columns: the union of keys, in first-seen order)."""
    if not rows:
        return "(no results)"
    if columns is None:
        columns = []
        for r in rows:
            columns += [k for k in r if k not in columns]
    shown = rows if max_rows is None or len(rows) <= max_rows else rows[:max_rows]
    table = [columns] + [[_fmt(r.get(c, "")) for c in columns] for r in shown]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    lines = ["  ".join(cell.rjust(w) if k else cell.ljust(w) for k, (cell, w) in enumerate(zip(row, widths))) for row in table]
    if len(shown) < len(rows):
        lines.append(f"... ({len(rows) - len(shown)} more rows in the JSON/CSV output)")
    return "\n".join(lines)


def _clean(obj):
    """NaN/inf -> None so the JSON is valid for every reader."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json(path: str | Path, obj) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    from faceclip.io.files import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_clean(obj), indent=1) + "\n")
    return path


def write_csv(path: str | Path, rows: list[dict]) -> Path:
    """Write dict rows as CSV (header = union of keys), atomically."""
    from faceclip.io.files import atomic_path

    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()})
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())
    return path
