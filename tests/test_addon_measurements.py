"""The add-on figures the documentation shows are the measured ones in docs/measurements/: the
main job on 2 CPU cores and the scale benchmark (``benchmarks/addon_scale.py``). Timings are
never asserted against the machine; what is asserted is that each page (the README, or the page
under docs/ that shows the table, read with ``tests/pages.py``) shows what the files hold,
formatted the page's way."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from pages import flat, marked

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ROOT / "docs" / "measurements"


def load(name: str) -> dict:
    return json.loads((MEASURED / name).read_text())


def test_main_job_paragraph_is_the_measured_run():
    measurements, results, readme = flat("measurements"), flat("benchmarks/main-job"), \
        flat("README")
    m = load("main_job_cpu_metrics.json")
    sec = m["seconds"]
    assert (f"**{sec['total']:.0f} s from an empty cache on 2 CPU cores** (data "
            f"{sec['data']:.0f} s, add-on images {sec['addon_data']:.0f} s, the add-on "
            f"{sec['addon_training']:.0f} s, evaluation {sec['evaluation']:.0f} s; "
            "`docs/measurements/main_job_cpu_metrics.json`)") in measurements
    assert f"({sec['total']:.0f} s on 2 CPU cores from an empty cache;" in readme
    log = json.loads((ROOT / "maskiou" / "pretrained" /
                      "synthetic_cpu_torchvision_addon.train_log.json").read_text())
    seconds = sum(e["seconds"] for e in log)
    rate = sum(e["samples_per_s"] for e in log) / len(log)
    assert (f"{seconds:.0f} s of head training ({len(log)} epochs, {rate:,.0f} samples/s"
            in measurements)
    segm = m["segm"]
    gain = segm["recalibrated"]["AP"] - segm["maskness"]["AP"]
    assert (f"recalibrated {segm['recalibrated']['AP']:.2f} / "
            f"{segm['recalibrated']['AP75']:.2f} against maskness {segm['maskness']['AP']:.2f}"
            f" / {segm['maskness']['AP75']:.2f}") in results
    assert f"**+{gain:.1f} mask AP" in results
    assert f"**+{gain:.1f} mask AP** on torchvision" in readme
    assert f"**Pearson {m['correlation']['head_pearson']:.3f}** (paper: 0.74)" in results


def test_scale_table_is_the_measured_run():
    doc = flat("addon")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import addon_scale

    r = load("addon_scale.json")
    for line in addon_scale.table(r).splitlines():
        if line.strip():
            assert " ".join(line.split()) in doc, line
    assert r["full"]["disk_gb"] >= 20.0 and r["full"]["peak_pss_gb"] <= 4.0
    assert r["rss_full_over_tenth"] <= 1.5 and r["memory_vs_disk"]["disk_over_memory"] >= 0.8


def test_final_score_scale_table_is_the_measured_run():
    """docs/addon.md's table of the final score's fit at COCO size is final_score_scale.py's
    table of its JSON, the README's figures are its 5,000-image row, and the pair against the
    loops it replaced is the one its file holds; the recorded run is within issue 40's budget."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import final_score_scale as fs

    r = load("final_score_scale.json")
    assert marked("addon", "final-score-scale") == fs.table(r)
    big = r["sizes"][-1]
    assert (big["images"], big["detections"], big["categories"]) == (5000, 500000, 80)
    assert big["fit_s"] <= 120 and big["ap_s"] <= 1 and big["peak_rss_gb"] <= 4
    # growth (CPU time): the search's steps depend on the data; per AP evaluation, and one AP,
    # within 20% of linear (docs/addon.md: the excess is memory, not arithmetic)
    g = r["growth"]
    assert g["from"] == 500 and g["images"] == 10.0
    assert g["fit_per_evaluation_per_image"] <= 1.2 and g["ap_per_image"] <= 1.2
    readme, doc = flat("README"), flat("addon")
    assert (f"fit at COCO size (500,000 detections, 80 classes): **{big['fit_s']:.1f} s**, one AP "
            f"{big['ap_s']:.3f} s, {big['peak_rss_gb']:.2f} GB, on 2 shared CPU cores") in readme
    loads = [v for s in r["sizes"] for v in s["load_average"]]
    assert f"1-minute load average {min(loads):.0f} to {max(loads):.0f}" in doc
    pair = load("final_score_loops.json")
    assert fs.loops_line(pair) in doc and pair["same_weights"]


def test_learning_curve_table_is_the_measured_run():
    """The learning curve page's table is curve_table() of docs/measurements/curve.json, and the
    2,000-image row is the main job's add-on."""
    doc = flat("benchmarks/learning-curve")
    sys.path.insert(0, str(ROOT / "research"))
    import ablation

    results = load("curve.json")
    assert {r["row"] for r in results} == {row for row, _, _ in ablation.curve_rows()}
    for line in ablation.curve_table(ablation.curve_summary(results)).splitlines():
        assert " ".join(line.split()) in doc, line
    main = load("main_job_cpu_metrics.json")["segm"]
    row = next(r for r in results if r["row"] == "curve-2000-seed0")["segm"]
    # figures read back from the two files: exact. The curve's recalibration was the logistic
    # fit (the page says so); the head is the main job's, bit for bit
    assert row["rescored"]["AP"] == main["rescored"]["AP"]
    assert (f"the main job's recalibrated score is now {main['recalibrated']['AP']:.2f} where "
            f"this table shows {row['recalibrated']['AP']:.2f}") in doc


def test_levers_table_is_the_measured_runs():
    """The few-labels levers of the learning curve page are levers_table() of the curve runs in
    docs/measurements/ (curve-*.json, one per --curve-set), named as the page names them."""
    doc = flat("benchmarks/learning-curve")
    sys.path.insert(0, str(ROOT / "research"))
    import ablation

    for line in ablation.levers_table(lever_runs()).splitlines():
        assert " ".join(line.split()) in doc, line


# the page's name of each lever -> its --curve-set run (docs/measurements/curve-*.json)
LEVERS = {"crossfit-5": "crossfit-folds-5",
          "crossfit-5-average": "crossfit-folds-5-crossfit-final-average",
          "crossfit-2-average": "crossfit-folds-2-crossfit-final-average",
          "photometric": "photometric-True", "min-steps-1500": "min-steps-1500",
          "crossfit-5-small-head": "crossfit-folds-5-conv-channels-32-fc-dim-128",
          "crossfit-5-ensemble": "crossfit-folds-5-ensemble",
          "crossfit-10": "crossfit-folds-10",
          "crossfit-5-zoom-in": "crossfit-folds-5-zoom-in",
          "crossfit-5-zoom-out": "crossfit-folds-5-zoom-out",
          "crossfit-5-zoom-both, logistic fit": "crossfit-folds-5-zoom-both",
          "crossfit-5-zoom-both, AP search (default)": "crossfit-folds-5-zoom-both-search",
          "zoom-both": "zoom-both",
          "crossfit-5-pretrain": "crossfit-folds-5-zoom-none-pretrain",
          "crossfit-5-zoom-both-pretrain": "crossfit-folds-5-zoom-both-pretrain"}


def lever_runs() -> dict[str, list[dict]]:
    """The held-out fifth (the learning curve's rows at the levers' sizes), then each lever."""
    sizes = {250, 500, 2000}
    return {"held-out fifth": [r for r in load("curve.json") if r["images"] in sizes],
            **{name: load(f"curve-{file}.json") for name, file in LEVERS.items()}}


def test_detectron2_main_job_paragraph_is_the_measured_run():
    """The detectron2 paragraph of the main job's page: ``coco_eval.py --detector-framework
    detectron2``'s metrics.json and its log (the collection rate), and the comparison with
    torchvision."""
    doc = flat("benchmarks/main-job")
    import re

    m = load("main_job_detectron2_cpu_metrics.json")
    assert m["framework"] == "detectron2"
    sec = m["seconds"]
    log = (MEASURED / "main_job_detectron2_cpu.log").read_text()
    collected = re.search(r"collected (\d+) images in (\d+) s \(([\d.]+) images/s\)", log)
    assert (f"**{sec['total']:.0f} s from an empty cache on 2 CPU cores** (data "
            f"{sec['data']:.0f} s, add-on images {sec['addon_data']:.0f} s, the add-on "
            f"{sec['addon_training']:.0f} s of which {collected.group(2)} s collection at "
            f"{float(collected.group(3)):.0f} images/s, evaluation {sec['evaluation']:.0f} s; "
            "`docs/measurements/main_job_detectron2_cpu_metrics.json`)") in doc
    assert f"({m['num_detections']:,} detections)" in doc
    segm, corr = m["segm"], m["correlation"]
    best, free, oracle = segm["recalibrated"], segm["maskness"], segm["oracle"]
    assert (f"**+{best['AP'] - free['AP']:.1f} mask AP, +{best['AP75'] - free['AP75']:.1f} "
            f"AP75** (recalibrated {best['AP']:.2f} / {best['AP75']:.2f} against maskness "
            f"{free['AP']:.2f} / {free['AP75']:.2f})") in doc
    assert f"and **+{best['AP'] - free['AP']:.1f}** on detectron2" in flat("README")
    assert f"the head's own rescoring +{segm['rescored']['AP'] - free['AP']:.1f} AP" in doc
    tv = load("main_job_cpu_metrics.json")
    assert (f"(Pearson {corr['maskness_pearson']:.3f} with the true MaskIoU against "
            f"{tv['correlation']['maskness_pearson']:.3f} on the torchvision one)") in doc
    share = (best["AP"] - free["AP"]) / (oracle["AP"] - free["AP"])
    assert f"the head closes {share:.0%} of the way from maskness to the oracle" in doc
    assert (f"**Pearson {corr['head_pearson']:.3f}**, {corr['head_pearson_matched']:.3f} over "
            f"the {corr['matched_fraction']:.0%} that overlap") in doc
    rows = []
    for metrics in (tv, m):
        s = metrics["segm"]
        rows.append(" / ".join(f"{s[k]['AP']:.1f}" for k in ("cls", "maskness", "recalibrated",
                                                             "oracle")))
    assert f"torchvision {rows[0]}, detectron2 {rows[1]}" in doc
    assert corr["head_pearson"] >= 0.75 and best["AP"] - free["AP"] >= 1.0  # the bar
    # the same run with the logistic fit, on faster cores: the same head, another final score
    old = load("main_job_detectron2_cpu_logistic_metrics.json")
    assert old["segm"]["rescored"]["AP"] == pytest.approx(segm["rescored"]["AP"], abs=0.002)
    assert (f"The logistic fit the search replaced gave {old['segm']['recalibrated']['AP']:.2f} / "
            f"{old['segm']['recalibrated']['AP75']:.2f} with the same head") in doc
    parts = []
    for name, metrics in (("main_job_detectron2_cpu_logistic.log", old), (
            "main_job_detectron2_cpu.log", m)):
        text = (MEASURED / name).read_text()
        head = re.search(r"trained the MaskIoU head alone: 12 epochs, ([\d]+) detections .*?"
                         r"\((\d+) s,", text)
        collect = float(re.search(r"collected \d+ images in (\d+) s", text).group(1))
        rest = metrics["seconds"]["addon_training"] - collect - float(head.group(2))
        parts.append((metrics["seconds"]["total"], int(head.group(1)), head.group(2), rest))
    (t0, n0, h0, r0), (_, n1, h1, r1) = parts
    assert n0 == n1
    assert (f"with the logistic fit on an earlier day ({t0:.0f} s), and not because of the "
            f"search: the head's 12 epochs on the same {n0:,} detections took {h0} s there and "
            f"{h1} s here (`main_job_detectron2_cpu_logistic.log` beside it), and the rest of "
            "the add-on's time, the recalibration's fit and its held-out check, is "
            f"{r1:.0f} s against {r0:.0f} s") in doc


def test_the_default_below_a_thousand_images_meets_the_few_labels_bar():
    """The few-labels bar, computed as the levers table computes it (curve_summary of
    the measured runs): the default add-on below 1,000 images (5-fold cross-fitting and both
    zoom views) reaches 50.0 recalibrated mask AP on average over three draws of 500 images
    (with the logistic fit and with today's AP search, whose heads are the same), but not in
    every draw, as the page says; and it beats maskness in every draw of 250 images (measured
    with the logistic fit)."""
    sys.path.insert(0, str(ROOT / "research"))
    import ablation

    from maskiou.addon.fit import AddonConfig

    runs = load("curve-crossfit-folds-5-zoom-both.json")
    assert {(r["config"]["crossfit_folds"], r["config"]["zoom"]) for r in runs} == {(5, "both")}
    for n in (250, 500):  # what the default does there
        assert AddonConfig().folds_for(n) == 5
        assert AddonConfig().zoom_views_for(n) == ("zoom-in", "zoom-out")
    rows = {r["images"]: r for r in ablation.curve_summary(runs)}
    assert rows[500]["seeds"] == rows[250]["seeds"] == 3
    assert rows[500]["recal_ap"]["mean"] >= 50.0
    assert rows[250]["gain_ap"]["min"] > 0
    search = load("curve-crossfit-folds-5-zoom-both-search.json")
    assert {r["config"]["recalibration"] for r in search} == {"search"}
    assert AddonConfig().recalibration == "search"
    (now,) = ablation.curve_summary(search)
    assert now["seeds"] == 3 and now["recal_ap"]["mean"] >= 50.0
    assert now["rescored_ap"] == rows[500]["rescored_ap"]  # the same heads
    below = sorted(r["segm"]["recalibrated"]["AP"] for r in search
                   if r["segm"]["recalibrated"]["AP"] < 50.0)
    assert len(below) == 2
    assert f"two of the three still below 50.0 ({below[0]:.2f}, {below[1]:.2f})" in \
        flat("benchmarks/learning-curve")


# the columns of the levers page: its name of each run -> docs/measurements/levers_*.json
LEVER_COLUMNS = {"embedded, torchvision": "levers_shapes_torchvision.json",
                 "embedded, YOLO-seg": "levers_shapes_ultralytics.json",
                 "scenes, torchvision": "levers_scenes_torchvision.json"}


def test_the_recalibration_levers_table_is_the_measured_runs():
    """docs/benchmarks/levers.md's table is levers_table() of the three levers runs, and what the
    add-on kept (the AP search with the uncontested signal) gains over the logistic fit it
    replaced on every column, as the page says."""
    sys.path.insert(0, str(ROOT / "research"))
    import recalibration_levers as levers

    runs = {name: load(file) for name, file in LEVER_COLUMNS.items()}
    table = marked("benchmarks/levers", "levers")
    assert table == levers.levers_table(runs)
    kept = "AP search, + contested (1 - overlap same class)"
    for run in runs.values():
        assert run["rows"][kept]["all"] > run["rows"][levers.BASE_ROW]["all"]
        assert run["rows"][kept]["all"] >= run["rows"]["AP search, base"]["all"]
    # the search per class: not kept, it does not gain over the kept search on every column
    per_class = [run["rows"]["AP search per class, + contested"]["all"] - run["rows"][kept]["all"]
                 for run in runs.values()]
    assert min(per_class) < 0
    assert ("The search per class ties the one search for all classes: "
            f"{per_class[0]:+.2f} and {per_class[2]:+.2f} over it on the torchvision columns, "
            f"{per_class[1]:+.2f} on YOLO-seg") in flat("benchmarks/levers")


def scenes_rows() -> list[str]:
    """The scenes table's rows: docs/measurements/scenes_addon_{2000,400}_metrics.json."""
    rows = ["| add-on images | cls | maskness | rescored | recalibrated (final) | oracle | "
            "final - maskness | share of maskness -> oracle | Pearson (head) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for n in (2000, 400):
        m = load(f"scenes_addon_{n}_metrics.json")
        s = {k: m["segm"][k]["AP"] for k in ("cls", "maskness", "rescored", "recalibrated",
                                              "oracle")}
        gain = s["recalibrated"] - s["maskness"]
        share = gain / (s["oracle"] - s["maskness"])
        rows.append(f"| {n:,} | " + " | ".join(f"{v:.2f}" for v in s.values())
                    + f" | {gain:+.2f} | {share:.0%} | {m['correlation']['head_pearson']:.3f} |")
    return rows


def test_the_scenes_table_is_the_measured_runs():
    """docs/generators.md's table of the add-on on the second generator is the two runs'
    metrics, and the page says which of them meets the bar (a third of the way to the
    oracle)."""
    table = marked("generators", "scenes")
    assert table == "\n".join(scenes_rows())
    met = {}
    for n in (2000, 400):
        s = load(f"scenes_addon_{n}_metrics.json")["segm"]
        met[n] = s["recalibrated"]["AP"] - s["maskness"]["AP"] >= (
            s["oracle"]["AP"] - s["maskness"]["AP"]) / 3
    assert met == {2000: True, 400: False}
    assert "**Met with 2,000 (35%), not with 400 (19%).**" in flat("generators")


def test_the_scenes_pretraining_paragraph_is_the_measured_rows():
    """docs/generators.md's pretraining paragraph: ablation.py's two rows on the 400 scenes
    add-on images, the plain one equal to the table's 400 run, and still short of the bar."""
    rows = {r["row"]: r for r in load("scenes_addon_400_pretrain.json")}
    plain, pre = rows["shipped"], rows["shipped-pretrain"]
    s = load("scenes_addon_400_metrics.json")["segm"]
    for scoring in ("recalibrated", "rescored"):  # as the table shows them
        assert f"{plain['segm'][scoring]['AP']:.2f}" == f"{s[scoring]['AP']:.2f}"
    ap = {k: r["segm"]["recalibrated"]["AP"] for k, r in rows.items()}
    share = (ap["shipped-pretrain"] - s["maskness"]["AP"]) / (
        s["oracle"]["AP"] - s["maskness"]["AP"])
    doc = flat("generators")
    assert (f"gives **{ap['shipped-pretrain']:.2f} against {ap['shipped']:.2f}** (rescored "
            f"{pre['segm']['rescored']['AP']:.2f} against {plain['segm']['rescored']['AP']:.2f}, "
            f"Pearson {pre['correlation']['head_pearson']:.3f} against "
            f"{plain['correlation']['head_pearson']:.3f}): {share:.0%} of the way") in doc
    assert share < 1 / 3 and pre["images"] == plain["images"] == 400


def test_the_readme_quotes_the_scenes_runs():
    readme = flat("README")
    gains = []
    for n in (2000, 400):
        s = load(f"scenes_addon_{n}_metrics.json")["segm"]
        gains.append(s["recalibrated"]["AP"] - s["maskness"]["AP"])
    assert (f"it gains +{gains[0]:.2f} over maskness with 2,000 add-on images and "
            f"+{gains[1]:.2f} with 400") in readme


# the columns of the head-inputs table: its name of each run -> docs/measurements/head_inputs_*
HEAD_INPUT_COLUMNS = {"embedded, torchvision": "head_inputs_shapes.json",
                      "scenes, torchvision": "head_inputs_scenes.json"}
HEAD_INPUT_LEVERS = ("mask-logits", "boundary-band", "mask-head-features", "context-features",
                     "image-pixels")


def test_the_head_inputs_table_is_the_measured_runs_and_none_is_kept():
    """docs/benchmarks/levers.md's head-inputs table is columns_table() of the two ablation
    runs; no lever clears the seeds' spread on both generators (the shipped and seed-1 rows),
    and the add-on's head keeps its inputs as they were."""
    from maskiou.addon.config import AddonConfig

    sys.path.insert(0, str(ROOT / "research"))
    import ablation

    runs = {name: load(file) for name, file in HEAD_INPUT_COLUMNS.items()}
    table = marked("benchmarks/levers", "head-inputs")
    assert table == ablation.columns_table(runs)
    for lever in HEAD_INPUT_LEVERS:
        clears = []
        for rows in runs.values():
            ap = {r["row"]: r["segm"]["recalibrated"]["AP"] for r in rows}
            clears.append(ap[lever] > max(ap["shipped"], ap["seed-1"]))
        assert not all(clears), lever
    head = AddonConfig().head
    assert head.mask_input == "probs" and not head.boundary_band
    pearson = [{r["row"]: r["correlation"]["head_pearson"] for r in runs["embedded, torchvision"]}
               [row] for row in ("image-pixels", "shipped")]
    assert ("The image's pixels raise the head's Pearson a little on the embedded set "
            f"({pearson[0]:.3f} against {pearson[1]:.3f})") in flat("benchmarks/levers")
    assert "**none of the five is kept**" in flat("benchmarks/levers")


def test_the_paired_main_job_timing_is_the_two_runs():
    """docs/measurements.md's paired timing: the two runs' metrics.json and logs (with
    /usr/bin/time's wall time), the same head, and the search's cost within the 20% issue 29
    allows."""
    import re

    doc = flat("measurements")
    runs = {}
    for name in ("2a08422", "search"):
        wall = re.search(r"([\d.]+) s wall", (MEASURED / f"paired_main_job_{name}.log").read_text())
        runs[name] = float(wall.group(1)), load(f"paired_main_job_{name}_metrics.json")
    (old_wall, old), (new_wall, new) = runs["2a08422"], runs["search"]
    assert (f"took {old_wall:.1f} s wall ({old['seconds']['total']:.1f} s total in its "
            f"metrics.json), today's {new_wall:.1f} s ({new['seconds']['total']:.1f} s): "
            f"**{new_wall / old_wall - 1:+.1%} wall, "
            f"{new['seconds']['total'] / old['seconds']['total'] - 1:+.1%} total**") in doc
    assert new_wall <= 1.2 * old_wall
    assert old["segm"]["rescored"]["AP"] == new["segm"]["rescored"]["AP"]
    assert (f"recalibrated {new['segm']['recalibrated']['AP']:.2f} against "
            f"{old['segm']['recalibrated']['AP']:.2f} with the same head (rescored "
            f"{new['segm']['rescored']['AP']:.2f} in") in doc


def test_the_levers_search_per_class_scores_each_class_with_its_own_weights(monkeypatch):
    """The per-class search row: each validation detection is scored with the weights searched
    on its own class's calibration detections, and a class the calibration lacks with the
    weights searched on all of them (the search itself is apsearch's, tested there)."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "research"))
    import recalibration_levers as levers

    def table(cats: list[int]) -> dict:
        n = len(cats)
        return {**{b: np.ones(n) for b in levers.BASE}, "contested": np.ones(n),
                "category_ids": np.array(cats)}

    ct, vt = table([1, 1, 2, 2]), table([1, 2, 3])

    def search_fit(ct, rows, match, names):  # the weights tell which rows they saw
        classes = set(ct["category_ids"][rows].tolist())
        return np.full(5, 10.0 * next(iter(classes)) if len(classes) == 1 else 1.0)

    scored = []
    monkeypatch.setattr(levers, "search_fit", search_fit)
    monkeypatch.setattr(levers, "ap", lambda coco, dets, scores: scored.append(scores) or 0.0)
    res = levers.measure_search(ct, vt, None, ["contested"], [], None, None, per_class=True)
    assert res["all"] == 0.0 and res["weights"] == [[1.0] * 5]
    np.testing.assert_array_equal(scored[0], [50.0, 100.0, 5.0])  # 5 signals of 1 x weight
    levers.measure_search(ct, vt, None, ["contested"], [], None, None)
    np.testing.assert_array_equal(scored[1], [5.0, 5.0, 5.0])  # one search for all
