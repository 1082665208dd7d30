"""Runs side by side: the one Markdown table writer of the research scripts, and the command
line that reads earlier runs' JSON into it (``--table``/``--columns NAME=FILE.json ...``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def side_by_side(first: str, columns: list[str], rows: list[tuple[str, list[str]]]) -> str:
    """A Markdown table: the header ``| first | column ... |``, its rule, then one line per
    ``(label, cells)`` of ``rows`` (one cell per column). No trailing newline."""
    lines = [f"| {first} | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
    return "\n".join(lines)


def read_columns(pairs: list[str]) -> dict[str, Any]:
    """``NAME=FILE.json`` arguments -> {NAME: the file's JSON}, in their order; a pair without
    ``=`` is refused in one line naming it."""
    runs = {}
    for pair in pairs:
        name, sep, file = pair.partition("=")
        if not sep:
            raise SystemExit(f"error: {pair!r}: expected NAME=FILE.json")
        runs[name] = json.loads(Path(file).read_text())
    return runs


def print_columns(argv: list[str], flag: str, table: Callable[[dict[str, Any]], str]) -> bool:
    """The docs' table of earlier runs: where ``argv`` is ``[flag, "NAME=FILE.json", ...]``,
    print ``table`` of those runs (:func:`read_columns`) and return True; else False (the
    script's own command line follows)."""
    if not argv or argv[0] != flag:
        return False
    print(table(read_columns(argv[1:])))
    return True
