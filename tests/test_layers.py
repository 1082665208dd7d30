"""The package's layers: no import cycle, and no layer imports one above it (the README's
"Layout"). Checked with the project's shared import-graph tool where it is present."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT.parent / "shared" / "tools" / "layers.py"
# (lower layer, a layer above it): the lower one must never import the upper one
ABOVE = {"maskiou.records": ["data", "models", "addon", "training", "evaluation"],
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
