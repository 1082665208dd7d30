"""The README and the documentation site: the README stays short, its first code comes early and
runs, each of its commands names a program and flags that exist, CI runs its commands, every
public name of ``maskiou`` has an entry in the API reference, and the site builds with every
warning an error."""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shlex
import subprocess
import sys

import pytest
import torch
from pages import DOCS, ROOT, page

import maskiou

README_MAX_LINES = 200
FIRST_CODE_BY_LINE = 70
DOCS_BUILD = "python -m sphinx -E -W --keep-going -b html docs docs/_build/html"
TEST_COMMAND = "python -m pytest"


def fenced(text: str, language: str) -> list[tuple[int, str]]:
    """``(first line number, code)`` of each fenced block of ``language`` in ``text``."""
    return [(text[:m.start()].count("\n") + 2, m.group(1)) for m in
            re.finditer(rf"^```{language}\n(.*?)^```", text, re.M | re.S)]


def commands(code: str) -> list[str]:
    """The commands of a bash block: continuation lines joined, comments dropped, ``&&`` split."""
    joined = code.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        line = line.split(" #")[0].strip()
        if line and not line.startswith("#"):
            out += [c.strip() for c in line.split("&&")]
    return out


def api_entries() -> set[str]:
    """The names that docs/api.md documents with an autodoc directive, as ``maskiou.NAME``."""
    return set(re.findall(r"^\.\. auto(?:function|class|data|exception):: maskiou\.(\w+)$",
                          (DOCS / "api.md").read_text(), re.M))


def test_every_public_name_of_maskiou_has_an_api_entry():
    assert len(maskiou.__all__) >= 30
    assert api_entries() == set(maskiou.__all__)


def test_readme_is_short_and_its_python_comes_early():
    text = page("README")
    assert len(text.splitlines()) <= README_MAX_LINES
    blocks = fenced(text, "python")
    assert blocks and blocks[0][0] <= FIRST_CODE_BY_LINE


def test_readme_quickstart_runs(monkeypatch):
    """The README's first Python block, executed as written; only the detector's input size is
    made small (torchvision resizes every image to 800 px by default) to keep the test cheap."""
    import torchvision.models.detection as detection

    monkeypatch.setattr(detection, "maskrcnn_resnet50_fpn", functools.partial(
        detection.maskrcnn_resnet50_fpn, min_size=160, max_size=160))
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(fenced(page("README"), "python")[0][1], "README.md", "exec"), scope)
    head = maskiou.find_maskiou_head(scope["model"])
    assert head is not None and all(p.grad is not None for p in head.parameters())
    assert scope["losses"]["loss_maskiou"].item() > 0
    out = scope["out"]
    assert {"boxes", "labels", "masks", "scores", "cls_scores", "mask_quality",
            "maskness"} <= out.keys()
    assert len({len(v) for v in out.values()}) == 1  # one row per detection in every field
    assert maskiou.keep_setting(scope["model"]) == "worth"  # the kept-mask switch it names


def test_readme_links_lead_to_files_that_exist():
    """Every relative link and image of the README names a file of the repository (the docs
    build checks the links of the pages under docs/, not the README's)."""
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page("README"))
    local = [x for x in targets if "://" not in x]
    assert len(local) >= 20 and "docs/demo.png" in local
    assert [x for x in local if not (ROOT / x).is_file()] == []


def console_scripts() -> dict[str, str]:
    """``{name: "module:function"}`` of pyproject.toml's [project.scripts]."""
    section = (ROOT / "pyproject.toml").read_text().split("[project.scripts]")[1].split("\n[")[0]
    return dict(re.findall(r'^([\w-]+) = "([\w.:]+)"', section, re.M))


def extras() -> set[str]:
    section = (ROOT / "pyproject.toml").read_text().split(
        "[project.optional-dependencies]")[1].split("\n[")[0]
    return set(re.findall(r"^(\w+) = \[", section, re.M))


@functools.cache
def help_text(program: tuple[str, ...]) -> str:
    proc = subprocess.run([*program, "--help"], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, f"{' '.join(program)} --help: {proc.stderr[-2000:]}"
    return proc.stdout


def program_of(argv: list[str]) -> tuple[str, ...] | None:
    """The command line that runs ``argv``'s program here, or None for one this test does not
    run (``pip``, ``ruff``, pytest and sphinx, checked elsewhere)."""
    scripts = console_scripts()
    if argv[0] in scripts:
        module, function = scripts[argv[0]].split(":")
        return (sys.executable, "-c", f"import sys; sys.argv[0] = {argv[0]!r}; "
                f"from {module} import {function}; {function}()")
    if argv[0] == "python" and argv[1].endswith(".py"):
        assert (ROOT / argv[1]).is_file(), argv[1]
        return (sys.executable, argv[1])
    if argv[0] == "python" and argv[1] == "-m" and argv[2].startswith("maskiou"):
        assert importlib.util.find_spec(argv[2]) is not None, argv[2]
        return (sys.executable, "-m", argv[2])
    return None


def test_every_readme_command_names_a_program_and_flags_that_exist():
    """Each command of the README's bash blocks: its program exists and takes every flag it is
    given (``--help`` lists it); ``pip install`` names extras pyproject.toml declares; the
    test and docs commands are the ones CI runs."""
    seen, unchecked = [], []
    for _, code in fenced(page("README"), "bash"):
        for command in commands(code):
            argv = shlex.split(command)
            seen.append(command)
            if argv[:2] == ["python", "demo/app.py"] and importlib.util.find_spec("gradio") is None:
                unchecked.append(command)  # its --help needs the demo extra
                continue
            if argv[:2] == ["pip", "install"]:
                for spec in argv[2:]:
                    m = re.fullmatch(r"\.\[([\w,]+)\]", spec)
                    assert m is None or set(m.group(1).split(",")) <= extras(), spec
                continue
            program = program_of(argv)
            if program is None:
                assert command in (TEST_COMMAND, "ruff check .", DOCS_BUILD), command
                continue
            text = help_text(program)
            for flag in (a.split("=")[0] for a in argv if a.startswith("--")):
                assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), \
                    f"{command}: {flag} is not an option of {argv[0]} {argv[1]}"
    assert TEST_COMMAND in seen and DOCS_BUILD in seen
    assert any(c.startswith("python benchmarks/coco_eval.py") for c in seen)
    if unchecked:
        pytest.skip(f"the demo extra is not installed (pip install -e '.[demo]'): not checked: "
                    f"{'; '.join(unchecked)}")


def test_the_demo_without_its_extra_says_so_in_one_line(tmp_path):
    """``python demo/app.py`` where gradio cannot be imported: one line naming the extra, exit
    2, no traceback (a ``gradio`` module that raises ImportError stands in for its absence)."""
    (tmp_path / "gradio.py").write_text("raise ImportError('no gradio here')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    proc = subprocess.run([sys.executable, "demo/app.py", "--help"], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "demo/app.py: error: the demo needs the demo extra: pip install -e '.[demo]' "
        "(no gradio here)"]


def test_ci_runs_the_readme_test_and_docs_commands():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert TEST_COMMAND in ci and DOCS_BUILD in ci
    assert 'python -m pip install --quiet -e ".[dev,demo,docs,ultralytics]"' in ci


@pytest.mark.skipif(importlib.util.find_spec("sphinx") is None
                    or importlib.util.find_spec("myst_parser") is None,
                    reason='the docs need sphinx and myst-parser: pip install -e ".[docs]"')
def test_docs_build_with_warnings_as_errors(tmp_path):
    """The README's docs command, into a temporary folder: every warning (a broken reference,
    a page outside the table of contents, a public name without a docstring) fails it."""
    argv = shlex.split(DOCS_BUILD)[1:-2] + ["docs", str(tmp_path / "html"), "-d",
                                            str(tmp_path / "doctrees")]
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp_path / "html" / "api.html").is_file()
