"""Result writing: Markdown tables and the JSON + Markdown pair every command leaves behind.

text = md_table(["metric", "value"], [("FVU", "0.1234"), ("L0", "32.0")], align="lr")
json_path, md_path = write_result(out_dir, "eval", {"fvu": 0.1234}, text)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from . import io

_RULES = {"l": "---", "r": "---:", "c": ":---:"}


def md_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], align: str | Sequence[str] | None = None) -> str:
    """A GitHub Markdown table (header, rule, one line per row; no trailing newline).

    `align` gives one letter per column, l (left, the default), r (right) or c (centre), as a
    string ("lrr") or a sequence; a single letter applies to every column. Cells are written with
    `str`; a `|` inside a cell is escaped.
    """
    n = len(columns)
    letters: Sequence[str] = "l" * n if align is None else [*align] * n if len(align) == 1 else align
    if len(letters) != n or any(a not in _RULES for a in letters):
        raise ValueError(f"align must give one of l, r, c for each of the {n} columns, got {align!r}")

    def line(cells: Sequence[Any]) -> str:
        if len(cells) != n:
            raise ValueError(f"a table row has {len(cells)} cells for {n} columns: {cells!r}")
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    out = [line(columns), "|" + "".join(_RULES[a] + "|" for a in letters)]
    out += [line(r) for r in rows]
    return "\n".join(out)


def write_result(out_dir: str | os.PathLike, stem: str, json_obj: Any, md_text: str) -> tuple[Path, Path]:
    """Write `<out_dir>/<stem>.json` and `<stem>.md` atomically (the directory is created); return both paths."""
    out = Path(out_dir)
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    io.write_json(json_path, json_obj)
    io.write_text(md_path, md_text)
    return json_path, md_path
