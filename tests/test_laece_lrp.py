"""Mask LaECE and LRP (maskiou.quality.matching, .laece, .lrp) on hand-built cases whose
values are worked out in the comments, and their place in coco_eval's metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from maskiou.quality.laece import class_laece, laece, score_bins
from maskiou.quality.lrp import molrp, optimal_lrp
from maskiou.quality.matching import greedy_match, match_all


def test_greedy_match_takes_detections_by_score_and_each_gt_once():
    scores = np.array([0.9, 0.8, 0.7])
    ious = np.array([[0.6, 0.3], [0.7, 0.2], [0.4, 0.55]])
    # tau 0.5: D0 takes GT0 (0.6); D1's best, GT0, is taken and GT1 (0.2) is under tau: FP;
    # D2 takes GT1 (0.55)
    assert greedy_match(scores, ious, 0.5).tolist() == pytest.approx([0.6, 0.0, 0.55])
    # tau 0.1: D0 takes GT0, D1 takes GT1 (0.2), nothing is left for D2
    assert greedy_match(scores, ious, 0.1).tolist() == pytest.approx([0.6, 0.2, 0.0])
    # the order is the score's, not the array's: the second detection comes first
    assert greedy_match(np.array([0.7, 0.9]), np.array([[0.8], [0.6]]), 0.5).tolist() == \
        pytest.approx([0.0, 0.6])
    # equal IoUs with two free GTs: the later GT (pycocotools' rule); then the next detection
    # gets the other one
    assert greedy_match(np.array([0.9, 0.8]), np.array([[0.7, 0.7], [0.6, 0.5]]), 0.5).tolist() \
        == pytest.approx([0.7, 0.6])
    with pytest.raises(ValueError, match="tau must be > 0"):
        greedy_match(scores, ious, 0.0)


def test_match_all_leaves_detections_outside_every_group_false_positives():
    groups = [(np.array([0, 2]), np.array([[0.9], [0.8]])), (np.array([3]), np.array([[0.4]]))]
    out = match_all(np.array([0.5, 0.9, 0.6, 0.3]), groups, 0.5)
    # detection 2 (0.6) outranks detection 0 (0.5) in their group: it takes the GT
    assert out.tolist() == pytest.approx([0.0, 0.0, 0.8, 0.0])


def test_laece_two_classes_four_detections():
    # class 1: D0 score 0.9 (bin 22) a TP of IoU 0.8 -> |0.9 - 0.8| = 0.1; D1 score 0.3
    # (bin 7) a FP -> |0.3 - 0| = 0.3; LaECE_1 = 1/2 * 0.1 + 1/2 * 0.3 = 0.2
    # class 2: D2 0.62, IoU 0.7 and D3 0.61, IoU 0.5 share bin 15 ([0.60, 0.64)): mean score
    # 0.615, target (0.7 + 0.5) / 2 = 0.6 -> 0.015; LaECE = (0.2 + 0.015) / 2 = 0.1075
    scores = np.array([0.9, 0.3, 0.62, 0.61])
    labels = np.array([1, 1, 2, 2])
    q = np.array([0.8, 0.0, 0.7, 0.5])
    mean, per_class = laece(scores, labels, q)
    assert per_class == pytest.approx({1: 0.2, 2: 0.015})
    assert mean == pytest.approx(0.1075)
    # the bin's target is precision x mean TP IoU: one TP of IoU 0.8 and one FP in a bin of
    # mean score 0.41 -> target 0.4, error 0.01
    assert class_laece(np.array([0.40, 0.42]), np.array([0.8, 0.0])) == pytest.approx(0.01)
    assert score_bins(np.array([0.0, 0.039, 0.04, 0.999, 1.0, 1.2])).tolist() == \
        [0, 0, 1, 24, 24, 24]
    assert math.isnan(class_laece(np.zeros(0), np.zeros(0)))


def test_laece_through_the_matching_at_both_tp_thresholds():
    # class 1 has two GTs; D1 (0.3) overlaps the second one with IoU 0.3: a TP at tau 0.1
    # (bin 7, target 0.3: error 0 -> LaECE_1 = 0.05) and a FP at tau 0.5 (LaECE_1 = 0.2 as
    # above). Class 2 as above: both of its detections match at either threshold.
    scores = np.array([0.9, 0.3, 0.62, 0.61])
    labels = np.array([1, 1, 2, 2])
    groups = [(np.array([0, 1]), np.array([[0.8, 0.0], [0.1, 0.3]])),
              (np.array([2, 3]), np.array([[0.7, 0.0], [0.0, 0.5]]))]
    assert laece(scores, labels, match_all(scores, groups, 0.1))[0] == \
        pytest.approx((0.05 + 0.015) / 2)
    assert laece(scores, labels, match_all(scores, groups, 0.5))[0] == pytest.approx(0.1075)


def test_optimal_lrp_one_class_by_hand():
    # G = 2, tau 0.5; detections by score: TP 0.75, FP, TP 0.9, FP.
    # keep >= 0.9: loc (1 - 0.75) / 0.5 = 0.5, FP 0, FN 1 -> 1.5 / 2 = 0.75
    # keep >= 0.8: 0.5 + 1 + 1 over FP + G = 3 -> 0.8333
    # keep >= 0.6: loc 0.5 + 0.2 = 0.7, FP 1, FN 0 -> 1.7 / 3 = 0.5667 (the optimum)
    # keep >= 0.4: 0.7 + 2 over 4 -> 0.675
    scores = np.array([0.9, 0.8, 0.6, 0.4])
    q = np.array([0.75, 0.0, 0.9, 0.0])
    best = optimal_lrp(scores, q, num_gt=2)
    assert best.lrp == pytest.approx(1.7 / 3)
    assert (best.threshold, best.tp, best.fp, best.fn) == (0.6, 2, 1, 0)
    # on a grid: 0.85 keeps the first detection (0.75), 0.5 the first three (0.5667)
    grid = optimal_lrp(scores, q, 2, grid=np.array([0.5, 0.85]))
    assert grid.lrp == pytest.approx(1.7 / 3) and grid.threshold == 0.5
    assert optimal_lrp(scores, q, 2, grid=np.array([0.85])).lrp == pytest.approx(0.75)


def test_optimal_lrp_cuts_only_between_different_scores_and_may_keep_nothing():
    # a TP (IoU 0.9) and a FP of the same score: both or neither; both: (0.2 + 1 + 0) / 2
    tie = optimal_lrp(np.array([0.8, 0.8]), np.array([0.9, 0.0]), 1)
    assert tie.lrp == pytest.approx(0.6) and tie.threshold == 0.8
    # a lone FP: keeping it gives (1 + 1) / 2 = 1, no better than nothing: keep nothing
    none = optimal_lrp(np.array([0.5]), np.array([0.0]), 1)
    assert none == (1.0, math.inf, 0, 0, 1)
    # among equal LRPs the highest threshold: two GTs; keep the first (IoU 1): (0 + 0 + 1) / 2
    # = 0.5; keep both (the second IoU 0.5): (1 + 0 + 0) / 2 = 0.5 as well
    tied = optimal_lrp(np.array([0.9, 0.5]), np.array([1.0, 0.5]), 2)
    assert tied.lrp == 0.5 and tied.threshold == 0.9 and tied.fn == 1
    with pytest.raises(ValueError, match="at least one GT"):
        optimal_lrp(np.array([0.5]), np.array([0.0]), 0)


def test_molrp_means_over_classes_with_gt():
    # class 1 as test_optimal_lrp_one_class_by_hand (1.7 / 3); class 2 has a GT and no
    # detection (oLRP 1, keep nothing); class 3 has no GT: left out, its FP too
    scores = np.array([0.9, 0.8, 0.6, 0.4, 0.7])
    labels = np.array([1, 1, 1, 1, 3])
    q = np.array([0.75, 0.0, 0.9, 0.0, 0.0])
    mean, per_class = molrp(scores, labels, q, {1: 2, 2: 1, 3: 0})
    assert set(per_class) == {1, 2}
    assert per_class[2] == (1.0, math.inf, 0, 0, 1)
    assert mean == pytest.approx((1.7 / 3 + 1.0) / 2)


def test_coco_eval_metrics_carry_laece_and_molrp_per_scoring():
    """The three detections of tests/test_evaluation.py (one GT of class 3; D1 exact, D2 IoU
    2/3, D3 a false positive), through evaluate_detections, with values by hand."""
    from test_evaluation import gt_coco, three_detections

    from maskiou.evaluation.cocoeval import evaluate_detections
    from maskiou.records import mask_iou_groups, true_mask_ious

    dets, coco = three_detections(), gt_coco()
    groups = mask_iou_groups(dets, coco)
    assert len(groups) == 1 and groups[0][1][:, 0] == pytest.approx([1.0, 2 / 3, 0.0])
    true = true_mask_ious(dets, coco, groups=groups)
    metrics, _ = evaluate_detections(dets, coco, true, has_head=True, groups=groups)
    cls, oracle = metrics["segm"]["cls"], metrics["segm"]["oracle"]
    # cls (0.7, 0.9, 0.8): D2 (0.9) takes the GT at IoU 2/3 at tau 0.1 and 0.5; D1, D3 FPs
    # in bins of their own: (|0.9 - 2/3| + 0.8 + 0.7) / 3
    assert cls["LaECE"] == pytest.approx((0.9 - 2 / 3 + 0.8 + 0.7) / 3)
    assert cls["LaECE50"] == pytest.approx(cls["LaECE"])
    # LRP: keep D2 alone: (1/3) / 0.5 / (0 + 1) = 2/3; adding FPs only raises it
    assert cls["moLRP"] == pytest.approx(2 / 3)
    assert cls["LRP_thresholds"] == {"3": pytest.approx(0.9)}
    assert cls["oLRP"] == {"3": pytest.approx(2 / 3)}
    # oracle (0.7, 0.6, 0.0): D1 takes the GT at IoU 1: |0.7 - 1| + |0.6 - 0| + 0 over 3;
    # keep D1 alone: LRP 0
    assert oracle["LaECE"] == pytest.approx(0.3)
    assert oracle["moLRP"] == pytest.approx(0.0) and oracle["LRP_thresholds"]["3"] == 0.7
    assert "LaECE" not in metrics["bbox"]["cls"]
    # the same when the groups are computed inside
    again, _ = evaluate_detections(dets, coco, true, has_head=True)
    assert again["segm"] == metrics["segm"]


def test_report_shows_laece_and_molrp_of_every_scoring():
    from test_evaluation import gt_coco, three_detections

    from maskiou.evaluation.cocoeval import evaluate_detections
    from maskiou.evaluation.report import markdown_report
    from maskiou.records import true_mask_ious

    dets, coco = three_detections(), gt_coco()
    m, _ = evaluate_detections(dets, coco, true_mask_ious(dets, coco), has_head=True,
                               recalibrated=np.array([0.9, 0.1, 0.0]))
    metrics = {**m, "num_images": 1, "main_model": "addon", "checkpoint": "x.pt",
               "models": {"addon": m}, "model_scoring": "recalibrated"}
    text = markdown_report(metrics)
    # the values of test_coco_eval_metrics_carry_laece_and_molrp_per_scoring, to 3 decimals
    assert "| classification score (the detector's) | 0.578 | 0.578 | 0.667 |" in text
    assert "| cls x true MaskIoU (oracle, paper table 7) | 0.300 | 0.300 | 0.000 |" in text
    # recalibrated (0.9, 0.1, 0.0): D1 takes the GT at IoU 1 -> keep >= 0.9, LRP 0
    assert "LRP-optimal thresholds of `recalibrated` (keep a mask whose score is at least " \
           "this), per category id: 3: 0.900." in text


def test_the_docs_table_is_the_measurement_the_command_wrote():
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    m = json.loads((root / "docs/measurements/laece_molrp_shipped_addon_metrics.json").read_text())
    doc = (root / "docs/outputs.md").read_text()
    rows = {"cls": "cls", "maskness": "cls × maskness", "rescored": "cls × head (rescored)",
            "recalibrated": "final (recalibrated)", "oracle": "oracle"}
    for name, title in rows.items():
        s = m["segm"][name]
        assert (f"| {title} | {s['AP']:.2f} | {s['LaECE']:.3f} | {s['LaECE50']:.3f} | "
                f"{s['moLRP']:.3f} |") in doc, name
    # the independent implementation's figures the issue quotes, for the same detections
    quoted = {"cls": (0.211, 0.594), "maskness": (0.152, 0.590), "rescored": (0.093, 0.561),
              "recalibrated": (0.084, 0.562), "oracle": (0.025, 0.527)}
    for name, (la, lrp) in quoted.items():
        assert round(m["segm"][name]["LaECE"], 3) == la and round(m["segm"][name]["moLRP"],
                                                                    3) == lrp, name


def test_lrp_at_a_given_threshold_by_hand():
    from maskiou.quality.lrp import lrp_at, mlrp_at

    scores = np.array([0.9, 0.8, 0.6, 0.4])
    q = np.array([0.75, 0.0, 0.9, 0.0])
    # the cuts of test_optimal_lrp_one_class_by_hand: >= 0.85 keeps one (0.75), >= 0.5 three
    assert lrp_at(scores, q, 2, 0.85) == pytest.approx(0.75)
    assert lrp_at(scores, q, 2, 0.5) == pytest.approx(1.7 / 3)
    assert lrp_at(scores, q, 2, math.inf) == 1.0  # nothing kept
    # class 1 at 0.5, class 2 (one GT, no detection) 1, class 3 (no GT) left out
    labels = np.array([1, 1, 1, 1])
    assert mlrp_at(scores, labels, q, {1: 2, 2: 1, 3: 0}, {1: 0.5}) == pytest.approx(
        (1.7 / 3 + 1) / 2)
    # no threshold for class 1: everything kept, (0.7 + 2 + 0) / 4
    assert mlrp_at(scores, labels, q, {1: 2}, {}) == pytest.approx(0.675)


def test_the_docs_class_map_table_is_the_main_job_measurement():
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    after = json.loads((root / "docs/measurements/laece_main_job_class_map_metrics.json")
                       .read_text())
    doc = (root / "docs/outputs.md").read_text()
    s = after["segm"]
    for name, title in (("rescored", "cls × head (rescored)"),
                        ("recalibrated", "final, with the map"), ("oracle", "oracle")):
        r = s[name]
        assert (f"| {title} | {r['AP']:.2f} | {r['AP75']:.2f} | {r['LaECE']:.3f} | "
                f"{r['LaECE50']:.3f} | {r['moLRP']:.3f} |") in doc, name
    assert after["calibration"]["class_map"] and s["recalibrated"]["LaECE"] <= 0.045
    # the lowest LaECE of every scoring but the oracle
    assert s["recalibrated"]["LaECE"] == min(v["LaECE"] for k, v in s.items() if k != "oracle")
    bins = {round(b["score"], 3): round(b["truth"], 3) for b in after["calibration"]["laece_bins"]}
    for score, truth in ((0.784, 0.791), (0.861, 0.865), (0.897, 0.896), (0.141, 0.266)):
        assert f"{score:.3f} → {truth:.3f}" in doc and bins[score] == truth
    high = [b for b in after["calibration"]["laece_bins"] if b["score"] >= 0.49]
    assert len(high) >= 10 and max(abs(b["truth"] - b["score"]) for b in high) <= 0.03
    assert "within 0.03 of the bin's mean score from 0.5 up" in doc
    before = json.loads((root / "docs/measurements/laece_main_job_before_map.json").read_text())
    r = before["segm"]["recalibrated"]
    assert (f"| final, without the map (same run, before) | {r['AP']:.2f} | {r['AP75']:.2f} | "
            f"{r['LaECE']:.3f} | {r['LaECE50']:.3f} | {r['moLRP']:.3f} |") in doc
    # the map keeps AP (a strictly increasing map per class)
    assert (r["AP"], r["AP75"]) == (s["recalibrated"]["AP"], s["recalibrated"]["AP75"])


def test_the_threshold_rules_table_is_the_four_stories():
    """docs/outputs.md's rule table is research/threshold_rules.py's JSON of each story (the
    three frameworks' main jobs and the scenes generator's), the stored rule (one threshold) is
    the add-on's, within 0.02 of the in-sample bound in every story (the per-class rule missed
    it on detectron2), and the prose's differences and the shipped files' thresholds are those
    of the same runs."""
    import json
    from pathlib import Path

    import torch
    from pages import flat, marked

    root = Path(__file__).resolve().parents[1]
    runs = {fw: json.loads((root / f"docs/measurements/threshold_rules_{fw}.json").read_text())
            for fw in ("torchvision", "detectron2", "ultralytics", "scenes")}
    lines = marked("outputs", "threshold-rules").splitlines()[2:]
    rules = [k for k in runs["torchvision"] if k != "held-out detections"]
    assert len(lines) == len(rules)
    for line, rule in zip(lines, rules):
        cells = " | ".join(f"{r[rule]['mLRP']:.3f}" for r in runs.values())
        assert line == f"| {rule} | {cells} |", line
    text = flat("outputs")
    gaps = [r["one threshold"]["mLRP"] - r["optimal on the validation images"]["mLRP"]
            for r in runs.values()]
    assert max(gaps) <= 0.02
    assert "(" + ", ".join(f"{g:.3f}" for g in gaps) + ")" in text
    d2 = runs["detectron2"]
    old_gap = d2["per-class"]["mLRP"] - d2["optimal on the validation images"]["mLRP"]
    assert old_gap > 0.02 and f"missed on detectron2 ({old_gap:.3f})" in text
    deltas = [r["one threshold"]["mLRP"] - r["per-class"]["mLRP"] for r in runs.values()]
    assert (f"torchvision ({deltas[0]:+.4f})".replace("-", "−") in text
            and f"YOLO-seg ({deltas[2]:+.4f})" in text and f"scenes ({deltas[3]:+.4f})" in text
            and f"detectron2 ({deltas[1]:+.4f})".replace("-", "−") in text)
    files = {"torchvision": "maskiou/pretrained/synthetic_cpu_torchvision_addon.pt",
             "detectron2": "weights/synthetic_cpu_detectron2_addon.pt",
             "ultralytics": "weights/synthetic_cpu_ultralytics_addon.pt"}
    shown = []
    for fw, path in files.items():
        (t,) = set(runs[fw]["one threshold"]["thresholds"].values())
        state = torch.load(root / path, weights_only=True, map_location="cpu")["model"]
        (stored,) = [v for k, v in state.items() if k.endswith("calibration.class_thresholds")]
        assert stored[0] == 0 and torch.allclose(stored[1:], torch.tensor(t, dtype=stored.dtype))
        shown.append(f"{t:.3f}")
    assert ("torchvision {}, detectron2 {}, YOLO-seg {}".format(*shown)) in text


def test_the_readme_threshold_figures_are_the_main_job_run():
    """The README's LaECE and kept-mask figures are those of the main job as a new user runs it
    (``python benchmarks/coco_eval.py``, 2 threads, from an empty cache: its head is the shipped
    one, rescored 50.187), and meet issue 37's bars there."""
    import json
    from pathlib import Path

    from pages import flat

    root = Path(__file__).resolve().parents[1]
    m = json.loads((root / "docs/measurements/main_job_cpu_laece_metrics.json").read_text())
    s, keep = m["segm"], m["keep"]
    assert (f"its mask LaECE is **{s['recalibrated']['LaECE']:.3f}** (cls {s['cls']['LaECE']:.3f}, "
            f"maskness {s['maskness']['LaECE']:.3f}, head {s['rescored']['LaECE']:.3f}, oracle "
            f"{s['oracle']['LaECE']:.3f}), and the threshold the add-on stores keeps "
            f"masks at mLRP {keep['stored']:.3f} (best possible {keep['optimal']:.3f}, "
            f"`cls > 0.5` {keep['cls_0.5']:.3f})") in flat("README")
    assert s["rescored"]["AP"] == 50.187 and abs(s["recalibrated"]["AP"] - 50.52) <= 0.05
    assert s["recalibrated"]["LaECE"] <= 0.045
    assert s["recalibrated"]["LaECE"] == min(v["LaECE"] for k, v in s.items() if k != "oracle")
    assert keep["stored"] - keep["optimal"] <= 0.02 and keep["stored"] < keep["cls_0.5"]


def test_the_frameworks_calibration_table_is_their_main_jobs():
    """docs/outputs.md's table of the four stories: each row from the main job's metrics.json
    (torchvision: the README's run; scenes: the run of threshold_rules.py), the AP rows those of
    each story's own page (the scenes generator's table), and the bars issue 37 sets: the final
    score the best calibrated but the oracle, the stored thresholds better than
    ``cls >= 0.5``."""
    import json
    from pathlib import Path

    from pages import marked

    root = Path(__file__).resolve().parents[1]
    table = marked("outputs", "laece-frameworks")
    runs = {"torchvision (main job)": ("main_job_cpu_laece_metrics.json",
                                       "main_job_cpu_laece_metrics.json"),
            "detectron2": ("laece_detectron2_metrics.json", "main_job_detectron2_cpu_metrics.json"),
            "YOLO-seg": ("laece_ultralytics_metrics.json", "main_job_ultralytics_cpu_metrics.json"),
            "scenes (torchvision, 2,000 add-on images)": ("laece_scenes_metrics.json",
                                                          "scenes_addon_2000_metrics.json")}
    for story, (name, page_run) in runs.items():
        m = json.loads((root / "docs/measurements" / name).read_text())
        before = json.loads((root / "docs/measurements" / page_run).read_text())
        s, keep = m["segm"], m["keep"]
        order = ("cls", "maskness", "rescored", "recalibrated", "oracle")
        row = (f"| {story} | " + " / ".join(f"{s[k]['LaECE']:.3f}" for k in order)
               + f" | {s['recalibrated']['AP']:.2f} | "
               + " / ".join(f"{keep[k]:.3f}" for k in ("stored", "optimal", "final_0.5", "cls_0.5"))
               + " |")
        assert row in table, story
        for k in order:  # the same heads as the pages' runs: every AP row unchanged
            assert abs(s[k]["AP"] - before["segm"][k]["AP"]) <= 0.05, (story, k)
        assert s["recalibrated"]["LaECE"] == min(s[k]["LaECE"] for k in order[:4]), story
        assert keep["stored"] < keep["cls_0.5"], story
        assert keep["stored"] - keep["optimal"] <= 0.02, story
    from pages import flat

    text = flat("outputs")  # the scenes story's prose
    m = json.loads((root / "docs/measurements/laece_scenes_metrics.json").read_text())
    s, keep = m["segm"], m["keep"]
    (t,) = set(keep["thresholds"].values())
    rules = json.loads((root / "docs/measurements/threshold_rules_scenes.json").read_text())
    (fitted,) = set(rules["one threshold"]["thresholds"].values())
    assert fitted == pytest.approx(t, abs=1e-6)  # the model stores it in float32
    assert (f"mLRP is high for every rule ({keep['optimal']:.3f} at best), and a fixed "
            f"`final >= 0.5` keeps too few ({keep['final_0.5']:.3f}, next to `cls >= 0.5`'s "
            f"{keep['cls_0.5']:.3f}) where the fitted {t:.3f} keeps what pays") in text
    assert f"weak ({s['cls']['AP']:.1f} mask AP under its class score)" in text
    unmatched = 1 - m["correlation"]["matched_fraction"]
    per_image = m["num_detections"] / m["num_images"]
    assert f"{100 * unmatched:.0f}% of its {per_image:.0f} detections an image" in text
    # the README's claim rests on each story's asserts above
    assert ("`maskiou.kept(model(images), model)`; the same on detectron2, YOLO-seg and scenes "
            f"(scenes: LaECE {s['recalibrated']['LaECE']:.3f}, mLRP {keep['stored']:.3f} against "
            f"{keep['optimal']:.3f} best, {keep['cls_0.5']:.3f} at `cls > 0.5`; "
            "`python research/threshold_rules.py -- ARGS`") in flat("README")


def test_the_common_threshold_on_a_hand_built_case():
    """Class 1: 0.9 (TP), 0.8 (TP), 0.6 (FP), 0.4 (TP), 3 GT; class 2: 0.7 (TP), 0.2 (FP), 1 GT;
    TPs of IoU 1. LRP = (FP + FN) / (FP + GT): one threshold t for both gives a mean of 1/8
    for t in (0.2, 0.4] (class 1 keeps all four at 1/4, class 2 its TP only at 0), 1/4 for
    (0.4, 0.6], 1/6 for (0.6, 0.7], more above, 3/8 at or below 0.2: the highest grid value
    of the best run is 0.4. Class 3 has no GT (left out); without any class: (inf, 1)."""
    from maskiou.quality.lrp import common_threshold

    scores = np.array([0.9, 0.8, 0.6, 0.4, 0.7, 0.2, 0.95])
    labels = np.array([1, 1, 1, 1, 2, 2, 3])
    q = np.array([1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    t, mean = common_threshold(scores, labels, q, {1: 3, 2: 1, 3: 0})
    assert t == pytest.approx(0.4) and mean == pytest.approx(1 / 8)
    t, mean = common_threshold(scores, labels, q, {1: 3, 2: 1}, grid=np.array([0.1, 0.65, 0.9]))
    assert t == 0.65 and mean == pytest.approx(1 / 6)
    assert common_threshold(scores, labels, q, {3: 0}) == (float("inf"), 1.0)


def test_the_common_threshold_is_the_best_of_mlrp_at_over_the_grid():
    """Against :func:`mlrp_at` at every grid value (the definition, a loop), on random cases
    with ties, a class without detections and one without GT."""
    from maskiou.quality.lrp import common_threshold, mlrp_at

    rng = np.random.default_rng(0)
    grid = np.linspace(0, 1, 51)
    for _ in range(20):
        s = rng.random(200).round(2)
        labels = rng.integers(1, 4, 200)
        q = np.where(rng.random(200) < s, 0.5 + 0.5 * rng.random(200), 0.0)
        num_gt = {1: 30, 2: 20, 3: 0, 4: 5}
        values = [mlrp_at(s, labels, q, num_gt, dict.fromkeys(num_gt, t)) for t in grid]
        best = len(grid) - 1 - int(np.argmin(values[::-1]))
        t, mean = common_threshold(s, labels, q, num_gt, grid=grid)
        assert t == grid[best] and mean == pytest.approx(values[best], abs=1e-12)
