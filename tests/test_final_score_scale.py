"""The final score's scale benchmark (benchmarks/final_score_scale.py, also
``addon_scale.py --final-score``) at a tiny size: the JSON it writes, the set it generates, and
its AP against pycocotools on that set."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from test_apsearch import cocoeval_ap

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import addon_scale  # noqa: E402
import final_score_scale as fs  # noqa: E402


def test_the_generated_set_is_coco_shaped():
    held = fs.generate(12, seed=3)
    n = 12 * fs.DETECTIONS
    assert held.x.shape == (n, 5) and held.true_ious.shape == (n,) and len(held.rles) == n
    assert np.bincount(held.image_ids).tolist() == [0] + [fs.DETECTIONS] * 12
    assert set(held.category_ids.tolist()) <= set(range(1, fs.CATEGORIES + 1))
    anns = held.coco.dataset["annotations"]
    assert 12 * 4 < sum(not a["iscrowd"] for a in anns) < 12 * 11
    assert np.isfinite(held.x).all() and (held.true_ious >= 0).all()
    # a realistic spread: near-perfect copies, partial ones and misses
    assert (held.true_ious > 0.9).mean() > 0.01 and (held.true_ious == 0).mean() > 0.3
    assert ((held.true_ious > 0.5) & (held.true_ious < 0.9)).mean() > 0.03
    # the head's signal knows the IoU (about 0.8 Pearson), the class score less
    assert np.corrcoef(np.exp(held.x[:, 1]), held.true_ious)[0, 1] > 0.7


def test_the_benchmark_writes_each_size_and_its_ap_is_pycocotools(tmp_path):
    out = tmp_path / "fs.json"
    assert addon_scale.main(["--final-score", "--images", "6", "12", "--in-process",
                             "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert [s["images"] for s in r["sizes"]] == [6, 12]
    for s in r["sizes"]:
        assert s["detections"] == s["images"] * fs.DETECTIONS and s["categories"] == 80
        assert s["fit_s"] >= s["fit_search_s"] > 0 and s["ap_s"] > 0 and s["peak_rss_gb"] > 0
        assert s["fit_cpu_s"] > 0 and s["ap_cpu_s"] > 0 and len(s["load_average"]) == 2
        assert s["fit_ap_evaluations"] > 3 and len(s["weights"]) == 5
        assert set(s["heldout_check"]) == {"maskness", "rescored", "recalibrated"}
    g = r["growth"]
    assert (g["from"], g["to"], g["images"]) == (6, 12, 2.0)
    assert g["fit_per_image"] == pytest.approx(g["fit"] / 2, abs=1e-3)
    assert g["fit"] == pytest.approx(r["sizes"][1]["fit_cpu_s"] / r["sizes"][0]["fit_cpu_s"],
                                     abs=1e-3)  # CPU time: the wait for shared cores left out
    assert "ru_maxrss" in r["memory"] and "CPU" in r["device"]
    held = fs.generate(12, seed=0)  # the set the second size measured
    rescored = held.x[:, 0] + held.x[:, 1]
    assert r["sizes"][1]["ap"] == pytest.approx(
        cocoeval_ap(held.coco, held.image_ids, held.category_ids, held.rles, rescored,
                    list(range(1, 13))), abs=1e-9)
    assert r["sizes"][1]["heldout_check"]["rescored"] == r["sizes"][1]["ap"]
    for line in fs.table(r).splitlines()[2:4]:
        assert line.startswith(("| 6 | 600 |", "| 12 | 1,200 |"))
