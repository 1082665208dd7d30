"""No function in ``maskiou/`` over 80 lines (issue 38): a function that does five things is split
along the ideas it mixes, each part named for what it does. A function's length is counted as
Python's ``ast`` sees it, from its ``def`` line to its last line (``end_lineno - lineno + 1``:
docstring and comments included, decorators not)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 80


def long_functions(source: str, limit: int) -> list[tuple[str, int, int]]:
    """(qualified name, first line, length) of each function or method of ``source`` longer
    than ``limit`` lines, in the order they start; a nested function counts on its own too."""
    found: list[tuple[str, int, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                length = child.end_lineno - child.lineno + 1
                if not isinstance(child, ast.ClassDef) and length > limit:
                    found.append((name, child.lineno, length))
                visit(child, f"{name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return sorted(found, key=lambda f: f[1])


def test_the_count_on_a_hand_built_module():
    source = (
        "def short():\n"                      # 1: 2 lines
        "    return 1\n"
        "\n"
        "class A:\n"                          # 4
        "    @staticmethod\n"                 # 5: a decorator does not count
        "    def long():\n"                   # 6: lines 6..12, 7 lines
        "        '''Doc.'''\n"
        "        def inner():\n"              # 8: lines 8..10, 3 lines
        "            x = 1\n"
        "            return x\n"
        "        # a comment counts\n"
        "        return inner()\n"
        "\n"
        "async def later():\n"                # 14: 2 lines
        "    return [i for i in range(3)]\n"
    )
    assert long_functions(source, 6) == [("A.long", 6, 7)]
    assert long_functions(source, 7) == []  # exactly at the limit is allowed
    assert long_functions(source, 2) == [("A.long", 6, 7), ("A.long.inner", 8, 3)]
    assert long_functions(source, 1) == [("short", 1, 2), ("A.long", 6, 7),
                                         ("A.long.inner", 8, 3), ("later", 14, 2)]


def test_no_function_in_the_package_is_over_80_lines():
    paths = sorted((ROOT / "maskiou").rglob("*.py"))
    assert len(paths) > 20  # the package, not an empty folder
    too_long = [f"{path.relative_to(ROOT)}:{line} {name} ({length} lines)"
                for path in paths
                for name, line, length in long_functions(path.read_text(encoding="utf-8"),
                                                         LIMIT)]
    assert not too_long, (f"functions over {LIMIT} lines (split them along the ideas they mix): "
                          + "; ".join(too_long))
