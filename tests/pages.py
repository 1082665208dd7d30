"""The pages whose figures the tests guard: the README and the documentation site's Markdown
pages under docs/. A figure is read from the page that shows it, so a guard moves with its
table: ``page("benchmarks/cost")`` is ``docs/benchmarks/cost.md``, ``page("README")`` the
README."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def page_path(name: str) -> Path:
    """The file of page ``name``: ``"README"`` or a path under docs/ without ``.md``."""
    path = ROOT / "README.md" if name == "README" else DOCS / f"{name}.md"
    if not path.is_file():
        raise FileNotFoundError(f"no page {name!r}: {path} is not there")
    return path


def page(name: str) -> str:
    """The Markdown text of page ``name``."""
    return page_path(name).read_text(encoding="utf-8")


def flat(name: str) -> str:
    """The text of page ``name`` with every run of whitespace made one space (a figure may
    wrap to the next line)."""
    return " ".join(page(name).split())


def marked(name: str, marker: str) -> str:
    """The text of page ``name`` between its ``<!-- marker -->`` and ``<!-- /marker -->``
    lines, stripped: a table that a test compares with what a script prints."""
    text = page(name)
    start, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    return text[text.index(start) + len(start):text.index(end)].strip()
