"""Sphinx configuration of maskiou's documentation: Markdown pages (MyST) and an API reference
generated from the docstrings (autodoc, napoleon for the Google-style ``Args:`` sections).

Build it with warnings as errors (the command the README names, run by ``.ci/run``)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

Nothing is downloaded (no intersphinx): references to torch, torchvision and the standard
library cannot resolve offline and are listed in ``nitpick_ignore_regex``; every other broken
reference, and a public name of ``maskiou`` without a docstring, fails the build.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's maskiou, also from a clean clone

project = "maskiou"
author = "the maskiou authors"
copyright = "the maskiou authors, MIT licence"
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "measurements"]
html_theme = "furo"
html_title = "maskiou"
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

nitpicky = True
# External packages whose inventories would need a download: their names cannot resolve here.
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|torchvision|numpy|np|nn|Tensor)(\..*)?"),
    (r"py:.*", r"(collections|typing|pathlib|os|enum|dataclasses)\..*"),
    (r"py:.*", r"(Path|Any|Callable|Mapping|Sequence|Iterable|Iterator|Protocol)"),
]
autodoc_typehints = "signature"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False


def _docstring(app, what, name, obj, options, lines) -> None:
    """A lazily exported constant (``maskiou.X``) gets the ``#:`` comment of the module that
    defines it; a documented object without a docstring is an error (a warning under -W)."""
    parts = name.split(".")
    if what == "data" and len(parts) == 2 and parts[0] == "maskiou":
        from sphinx.pycode import ModuleAnalyzer

        import maskiou

        module = f"maskiou.{maskiou._EXPORTS[parts[1]]}"
        lines[:] = ModuleAnalyzer.for_module(module).find_attr_docs().get(("", parts[1]), [])
    if not any(line.strip() for line in lines) and what != "attribute":
        from sphinx.util import logging

        logging.getLogger(__name__).warning("%s %s has no docstring", what, name,
                                            type="maskiou", subtype="docstring")


def setup(app) -> None:
    app.connect("autodoc-process-docstring", _docstring)
