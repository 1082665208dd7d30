"""The add-on figures the README shows are the measured ones in docs/measurements/: the main
job on 2 CPU cores and the scale benchmark (``benchmarks/addon_scale.py``). Timings are never
asserted against the machine; what is asserted is that the README shows what the files hold,
formatted the README's way."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ROOT / "docs" / "measurements"
README = " ".join((ROOT / "README.md").read_text().split())


def load(name: str) -> dict:
    return json.loads((MEASURED / name).read_text())


def test_main_job_paragraph_is_the_measured_run():
    m = load("main_job_cpu_metrics.json")
    sec = m["seconds"]
    assert (f"**{sec['total']:.0f} s from an empty cache on 2 CPU cores** (data "
            f"{sec['data']:.0f} s, add-on images {sec['addon_data']:.0f} s, the add-on "
            f"{sec['addon_training']:.0f} s, evaluation {sec['evaluation']:.0f} s; "
            "`docs/measurements/main_job_cpu_metrics.json`)") in README
    log = json.loads((ROOT / "maskiou" / "pretrained" /
                      "synthetic_cpu_addon.train_log.json").read_text())
    seconds = sum(e["seconds"] for e in log)
    rate = sum(e["samples_per_s"] for e in log) / len(log)
    assert (f"{seconds:.0f} s of head training ({len(log)} epochs, {rate:,.0f} samples/s"
            in README)
    segm = m["segm"]
    gain = segm["recalibrated"]["AP"] - segm["maskness"]["AP"]
    assert (f"recalibrated {segm['recalibrated']['AP']:.2f} / "
            f"{segm['recalibrated']['AP75']:.2f} against maskness {segm['maskness']['AP']:.2f}"
            f" / {segm['maskness']['AP75']:.2f}") in README
    assert f"**+{gain:.1f} mask AP" in README
    assert f"**Pearson {m['correlation']['head_pearson']:.3f}** (paper: 0.74)" in README


def test_scale_table_is_the_measured_run():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import addon_scale

    r = load("addon_scale.json")
    for line in addon_scale.table(r).splitlines():
        if line.strip():
            assert " ".join(line.split()) in README, line
    assert r["full"]["disk_gb"] >= 20.0 and r["full"]["peak_pss_gb"] <= 4.0
    assert r["rss_full_over_tenth"] <= 1.5 and r["memory_vs_disk"]["disk_over_memory"] >= 0.8
