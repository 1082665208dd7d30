"""research/runs_table.py: the one side-by-side table writer of the research scripts and the
command line that reads earlier runs into it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "research"))

from runs_table import print_columns, read_columns, side_by_side  # noqa: E402


def test_side_by_side_writes_a_markdown_table_of_the_given_cells():
    table = side_by_side("row", ["a", "b"], [("(ref)", ["1.00", "2.00"]), ("x", ["-", "3"])])
    assert table == ("| row | a | b |\n|---|---|---|\n| (ref) | 1.00 | 2.00 |\n"
                     "| x | - | 3 |")


def test_the_columns_command_reads_each_named_run_in_order(tmp_path, capsys):
    for name, value in (("one", 1), ("two", 2)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"v": value}))
    pairs = [f"second, b={tmp_path / 'two.json'}", f"first={tmp_path / 'one.json'}"]
    assert read_columns(pairs) == {"second, b": {"v": 2}, "first": {"v": 1}}
    assert list(read_columns(pairs)) == ["second, b", "first"]

    def table(runs):
        return side_by_side("run", list(runs), [("v", [str(r["v"]) for r in runs.values()])])

    assert print_columns(["--table", *pairs], "--table", table)
    assert capsys.readouterr().out == "| run | second, b | first |\n|---|---|---|\n| v | 2 | 1 |\n"
    assert not print_columns(["--checkpoint", "a.pt"], "--table", table)
    assert not print_columns([], "--table", table)
    with pytest.raises(SystemExit, match="'one.json': expected NAME=FILE.json"):
        read_columns(["one.json"])
