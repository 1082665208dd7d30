"""The package's layers: no import cycle, and no layer imports one above it ("Layout" in
docs/development.md). Checked with the project's shared import-graph tool where it is present."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT.parent / "shared" / "tools" / "layers.py"
# (lower layer, a layer above it): the lower one must never import the upper one
ABOVE = {"maskiou.quality": ["records", "data", "models", "addon", "training", "evaluation"],
         "maskiou.records": ["data", "models", "addon", "training", "evaluation"],
         "maskiou.data": ["models", "addon", "training", "evaluation"],
         "maskiou.models": ["addon", "training", "evaluation"],
         "maskiou.addon": ["training", "evaluation"],
         "maskiou.training": ["evaluation"]}
RULES = [(low, f"maskiou.{high}") for low, highs in ABOVE.items() for high in highs]
CORE = ["maskiou.attach", "maskiou.head", "maskiou.targets", "maskiou.loss", "maskiou.scoring",
        "maskiou.branch", "maskiou.distributed"]


@pytest.mark.skipif(not TOOL.is_file(), reason=f"{TOOL} is not there")
def test_no_cycle_and_no_upward_import():
    rules = [f"{low}!{high}" for low, high in RULES]
    rules += [f"{core}!maskiou.{up}" for core in CORE
              for up in ("records", "data", "models", "addon", "training", "evaluation")]
    done = subprocess.run([sys.executable, str(TOOL), str(ROOT / "maskiou"), *rules],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 cycles, 0 rule breaks" in done.stdout
    assert ("maskiou.addon!maskiou.training" in rules and "maskiou.addon!maskiou.evaluation"
            in rules and "maskiou.models!maskiou.addon" in rules)


LAYERS = ("quality", "records", "data", "models", "addon", "training", "evaluation")


@pytest.mark.skipif(not TOOL.is_file(), reason=f"{TOOL} is not there")
def test_the_adapters_import_the_core_and_their_framework_only(tmp_path):
    """``integrations/`` under the same tool: a copy of the package with the adapters inside it
    (``maskiou.integrations``), so that their imports of maskiou count. They may use the core,
    ``records``, ``data`` and ``models``, never the add-on, the trainer or the evaluation; no
    layer of maskiou imports them (they are found through entry points)."""
    import shutil

    tree = tmp_path / "maskiou"
    shutil.copytree(ROOT / "maskiou", tree, ignore=shutil.ignore_patterns("__pycache__",
                                                                          "pretrained"))
    shutil.copytree(ROOT / "integrations", tree / "integrations",
                    ignore=shutil.ignore_patterns("__pycache__"))
    rules = [f"maskiou.integrations!maskiou.{up}" for up in ("addon", "training", "evaluation")]
    rules += [f"maskiou.{low}!maskiou.integrations" for low in LAYERS]
    rules += [f"{core}!maskiou.integrations" for core in CORE]
    done = subprocess.run([sys.executable, str(TOOL), str(tree), *rules], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 cycles, 0 rule breaks" in done.stdout
    # the copy renames the adapters' package: an import of it by its installed name would hide
    for path in (ROOT / "maskiou").rglob("*.py"):
        assert "maskiou_integrations" not in "\n".join(
            line for line in path.read_text().splitlines()
            if line.lstrip().startswith(("import ", "from "))), path


FRAMEWORK_NAMES = ("torchvision", "detectron2", "ultralytics")
ALLOWED = {  # the lines outside integrations/ that may name a framework, and why
    "maskiou/models/paths.py": 'DEFAULT_FRAMEWORK = "torchvision"',  # the flag's default
    "maskiou/models/checkpoint.py": 'SCHEMA1_FRAMEWORK = "torchvision"',  # what schema 1 means
    "maskiou/addon/cli.py": '"--detector-framework", default="detectron2"',  # the flag's default
}


def test_no_module_outside_the_adapters_branches_on_a_framework():
    """Frameworks are reached through their adapters: outside ``integrations/`` no code names
    one in a string or compares a framework to a name, but for the lines of ``ALLOWED``."""
    found = []
    for folder in ("maskiou", "demo", "benchmarks", "research"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            for n, line in enumerate(path.read_text().splitlines(), 1):
                named = any(f'"{f}"' in line or f"'{f}'" in line for f in FRAMEWORK_NAMES)
                compared = re.search(r"framework\W*[!=]=\s*['\"]", line)
                if (named or compared) and ALLOWED.get(rel, "\0") not in line:
                    found.append(f"{rel}:{n}: {line.strip()}")
    assert found == []
