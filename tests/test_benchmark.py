"""The main job's numbers, checked against independent recomputations, and every CLI path.

One tiny run (module fixture): the shipped plain detector gets the add-on head trained on 6
add-on images for one epoch, and is scored on the first 20 images of the embedded validation
split beside the shipped end-to-end model. The tests then recompute what the benchmark wrote
without its code: COCO AP with pycocotools from the results files, the scores from the
per-detection file, the Pearson correlation with scipy.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import coco_eval  # noqa: E402

from maskiou.data.synthetic import generate_synthetic_coco  # noqa: E402
from maskiou.models.checkpoint import load_checkpoint, save_atomic  # noqa: E402
from maskiou.models.paths import shipped_model_path  # noqa: E402

SCORES = {"AP", "AP50", "AP75", "APs", "APm", "APl"}
CALIBRATION = {"LaECE", "LaECE50", "moLRP", "LRP_thresholds", "oLRP"}  # segm only
PLAIN = shipped_model_path("torchvision_plain")
END_TO_END = shipped_model_path("torchvision_end_to_end")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    val = generate_synthetic_coco(d / "val", 0, 20, seed=0, progress=False)  # = embedded val[:20]
    addon = generate_synthetic_coco(d / "addon", 6, 0, seed=1, progress=False)
    return {"val": ["--val-json", str(val.val_json), "--val-images", str(val.val_images)],
            "addon": ["--train-json", str(addon.train_json),
                      "--train-images", str(addon.train_images)],
            "val_json": val.val_json, "addon_json": addon.train_json,
            "addon_images": addon.train_images, "root": d}


def addon_args(data, out: Path, *extra: str) -> list[str]:
    return ["--checkpoint", str(PLAIN), *data["addon"], *data["val"], "--output-dir", str(out),
            "--runs-dir", str(data["root"] / "runs"), "--no-progress", "--addon-epochs", "1",
            "--addon-flip", "false", "--addon-recalibration-holdout", "0.5", "--batch-size", "4",
            *extra]


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = coco_eval.main(addon_args(data, out, "--end-to-end-checkpoint", str(END_TO_END)))
    assert code == 0
    return out, json.loads((out / "metrics.json").read_text()), buf.getvalue()


def pycocotools_ap(val_json: Path, results_file: Path, iou_type: str) -> list[float]:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(val_json))
        ev = COCOeval(gt, gt.loadRes(str(results_file)), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [round(float(v) * 100, 3) if v >= 0 else -1.0 for v in ev.stats[:6]]


def test_every_reported_ap_equals_pycocotools_on_the_written_results(data, run):
    out, metrics, _ = run
    # the recalibrated row is there when the model returns it (its held-out check on the tiny
    # run's two held-out images decides; the search's check may keep the rescoring)
    final = {"recalibrated"} if metrics["model_scoring"] == "recalibrated" else set()
    assert set(metrics["segm"]) == {"cls", "maskness", "rescored", "oracle"} | final
    for iou_type in ("segm", "bbox"):
        for name, aps in metrics[iou_type].items():
            assert set(aps) == SCORES | (CALIBRATION if iou_type == "segm" else set())
            expected = pycocotools_ap(data["val_json"], out / f"results_{iou_type}_{name}.json",
                                      iou_type)
            # the written results are the ones the benchmark scored (JSON keeps each float):
            # the same pycocotools computation, exact
            assert [aps[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")] == expected, \
                (iou_type, name)
    assert metrics["segm"]["cls"]["AP"] > 20  # the shipped detector finds the shapes


def test_oracle_bounds_every_other_scoring(run):
    _, metrics, _ = run
    oracle = metrics["segm"]["oracle"]["AP"]
    assert all(oracle >= s["AP"] for s in metrics["segm"].values())


def test_each_scoring_is_its_formula_of_the_written_detections(run):
    out, _, _ = run
    d = {k: np.asarray(v) for k, v in json.loads((out / "detections.json").read_text()).items()}
    cls, mk, pred, true = d["cls_score"], d["maskness"], d["mask_quality"], d["true_iou"]
    assert len(cls) > 50 and np.ptp(pred) > 0.1  # a real head, not a constant
    for name, expected in (("cls", cls), ("maskness", cls * mk), ("rescored", cls * pred),
                           ("oracle", cls * true)):
        res = json.loads((out / f"results_segm_{name}.json").read_text())
        assert [r["score"] for r in res] == pytest.approx(expected, abs=1e-6), name
    # the rescored scores are not the classification scores (nor maskness ones)
    assert not np.allclose(cls * pred, cls) and not np.allclose(cls * pred, cls * mk)


def test_pearson_equals_scipy_on_the_written_detections(run):
    out, metrics, _ = run
    d = json.loads((out / "detections.json").read_text())
    pred, true = np.array(d["mask_quality"]), np.array(d["true_iou"])
    assert metrics["correlation"]["head_pearson"] == pytest.approx(
        stats.pearsonr(pred, true).statistic, abs=1e-9)
    m = true > 0
    assert metrics["correlation"]["head_pearson_matched"] == pytest.approx(
        stats.pearsonr(pred[m], true[m]).statistic, abs=1e-9)


def test_true_iou_is_pycocotools_mask_iou_with_the_best_gt(data, run):
    from pycocotools import mask as mask_utils

    out, _, _ = run
    res = json.loads((out / "results_segm_cls.json").read_text())
    true = json.loads((out / "detections.json").read_text())["true_iou"]
    gt = _quiet_coco(data["val_json"])
    for r, t in list(zip(res, true))[:40]:
        anns = gt.loadAnns(gt.getAnnIds(imgIds=[r["image_id"]], catIds=[r["category_id"]]))
        best = max((float(mask_utils.iou([r["segmentation"]], [gt.annToRLE(a)], [0])[0][0])
                    for a in anns), default=0.0)
        assert t == pytest.approx(best, abs=1e-9)


def pycocotools_matches(val_json: Path, results_file: Path, tau: float
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, int]]:
    """Scores, category ids and matched mask IoU (0: unmatched) of every detection of a results
    file by pycocotools' own matching at IoU ``tau``, and the GT count per category."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(val_json))
        ev = COCOeval(gt, gt.loadRes(str(results_file)), "segm")
        ev.params.iouThrs = np.array([tau])
        ev.params.areaRng, ev.params.areaRngLbl = [[0, 1e10]], ["all"]
        ev.evaluate()
    scores, cats, matched = [], [], []
    for e in ev.evalImgs:
        if e is None:
            continue
        ious = ev.ious[(e["image_id"], e["category_id"])]
        for d, m in enumerate(e["dtMatches"][0]):
            scores.append(e["dtScores"][d])
            cats.append(e["category_id"])
            matched.append(float(ious[d, e["gtIds"].index(int(m))]) if m else 0.0)
    counts = {c: len(gt.getAnnIds(catIds=[c], iscrowd=False)) for c in gt.getCatIds()}
    return np.array(scores), np.array(cats), np.array(matched), counts


def test_laece_and_molrp_equal_them_on_pycocotools_matching_of_the_written_results(data, run):
    """Each scoring's LaECE (TP IoU 0.1 and 0.5) and moLRP, recomputed from its results file
    with pycocotools' own matching (not maskiou's) and the definitions of maskiou.evaluation:
    LaECE per class over 25 bins, LRP at each distinct score."""
    from maskiou.quality.laece import laece
    from maskiou.quality.lrp import molrp

    out, metrics, printed = run
    for name, row in metrics["segm"].items():
        results = out / f"results_segm_{name}.json"
        for key, tau in (("LaECE", 0.1), ("LaECE50", 0.5)):
            scores, cats, matched, _ = pycocotools_matches(data["val_json"], results, tau)
            assert row[key] == pytest.approx(laece(scores, cats, matched)[0], abs=1e-12), \
                (name, key)
        scores, cats, matched, counts = pycocotools_matches(data["val_json"], results, 0.5)
        mean, per_class = molrp(scores, cats, matched, counts)
        assert row["moLRP"] == pytest.approx(mean, abs=1e-12), name
        assert row["LRP_thresholds"] == {  # None: keeping nothing is best
            str(c): None if r.threshold == np.inf else pytest.approx(r.threshold)
            for c, r in per_class.items()}
        assert 0 < row["LaECE"] < 0.5 and 0 < row["moLRP"] < 1
    assert metrics["segm"]["oracle"]["LaECE"] < metrics["segm"]["cls"]["LaECE"]
    assert "| LaECE (TP IoU 0.1) | LaECE (TP IoU 0.5) | moLRP |" in printed


def _quiet_coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def test_report_files_and_models_side_by_side(run):
    out, metrics, printed = run
    for name in ("report.md", "maskiou_correlation.png", "score_vs_maskiou.png",
                 "detections.json", "gallery.json",
                 f"results_segm_{metrics['model_scoring']}.json"):
        assert (out / name).stat().st_size > 0, name
    assert set(metrics["models"]) == {"addon", "plain", "end_to_end"}
    e2e = metrics["models"]["end_to_end"]
    assert set(e2e["segm"]) == {"cls", "maskness", "rescored", "oracle"}
    assert "| plain detector (the one the user has) | maskness |" in printed
    assert "| Mask Scoring R-CNN trained end to end | rescored |" in printed
    # the add-on's detector is frozen: its box AP with the class score is the plain detector's
    # (the same weights on the same batches of images: the same computation, exact)
    assert metrics["bbox"]["cls"] == metrics["models"]["addon"]["bbox"]["cls"]
    gallery = json.loads((out / "gallery.json").read_text())
    assert gallery["images"] and Path(gallery["images"][0]["file"]).is_file()
    # the final score gets its map per class exactly when the model returns the recalibration;
    # its reliability against LaECE's target is in the metrics and the report
    cal = metrics["calibration"]
    assert cal["class_map"] == (metrics["model_scoring"] == "recalibrated")
    assert sum(r["count"] for r in cal["laece_bins"]) == metrics["num_detections"]
    assert "| score bin mean | precision x IoU | detections |" in printed
    # with the map, the thresholds of the masks worth keeping, measured against the best ones
    # on these images (a lower bound: the moLRP of the final score) and the habits
    assert ("keep" in metrics) == cal["class_map"]
    if cal["class_map"]:
        keep = metrics["keep"]
        assert keep["optimal"] == pytest.approx(
            metrics["segm"][metrics["model_scoring"]]["moLRP"])
        assert all(keep["optimal"] <= keep[k] + 1e-12 for k in ("stored", "final_0.5"))
        assert "## The masks worth keeping" in printed


def test_second_run_reuses_the_add_on_and_retrain_trains_it_again(data, run, tmp_path, capsys):
    assert coco_eval.main(addon_args(data, tmp_path)) == 0
    assert "reusing the add-on model" in capsys.readouterr().out
    assert coco_eval.main(addon_args(data, tmp_path, "--retrain")) == 0
    assert "training the add-on" in capsys.readouterr().out


def test_faster_coco_eval_backend_gives_the_same_numbers(data, run, tmp_path):
    pytest.importorskip("faster_coco_eval")
    _, metrics, _ = run
    assert coco_eval.main(addon_args(data, tmp_path, "--eval-backend", "faster-coco-eval")) == 0
    fast = json.loads((tmp_path / "metrics.json").read_text())
    for iou_type in ("segm", "bbox"):
        for name, row in metrics[iou_type].items():
            aps = {k: row[k] for k in SCORES}
            assert {k: fast[iou_type][name][k] for k in SCORES} == pytest.approx(aps, abs=1e-3)
            # LaECE and LRP are maskiou's own, whatever computes AP: the same
            assert {k: v for k, v in fast[iou_type][name].items() if k not in SCORES} == \
                {k: v for k, v in row.items() if k not in SCORES}


def test_checkpoint_with_a_head_on_a_coco_root_and_a_baseline(data, tmp_path):
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    val_json = Path(data["val"][1])
    (root / "annotations" / "instances_val2017.json").write_bytes(val_json.read_bytes())
    (root / "val2017").symlink_to(Path(data["val"][3]))
    assert coco_eval.main(["--checkpoint", str(END_TO_END), "--coco-root", str(root),
                           "--baseline-checkpoint", str(PLAIN), "--output-dir", str(tmp_path),
                           "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["main_model"] == "model" and "baseline" in metrics["models"]
    assert set(metrics["models"]["baseline"]["segm"]) == {"cls", "maskness", "oracle"}


def test_a_frozen_detector_checkpoint_of_maskiou_train_evaluates(data, tmp_path):
    from maskiou.training.cli import main as train

    args = ["--output-dir", str(tmp_path / "head"), "--freeze-detector", "--detector-checkpoint",
            str(PLAIN), "--train-json", str(data["addon_json"]), "--train-images",
            str(data["addon_images"]), "--max-iters", "2", "--batch-size", "2", "--no-progress",
            "--workers", "0"]
    assert train(args) == 0
    ckpt = tmp_path / "head" / "model_final.pt"
    assert load_checkpoint(ckpt)["config"]["freeze_detector"] is True
    assert coco_eval.main(["--checkpoint", str(ckpt), *data["val"], "--output-dir",
                           str(tmp_path / "out"), "--no-progress"]) == 0
    assert "rescored" in json.loads((tmp_path / "out" / "metrics.json").read_text())["segm"]


@pytest.mark.parametrize("case, message", [
    ("missing", "checkpoint not found"),
    ("corrupt", "not a readable checkpoint"),
    ("classes", "trained on classes"),
    ("architecture", "architecture mismatch"),
    ("fitted", "images the add-on head"),
    ("plain-without-images", "give --train-json and --train-images"),
    ("bad-json", "malformed JSON"),
])
def test_bad_input_is_one_line_and_a_nonzero_exit_with_nothing_written(data, run, tmp_path,
                                                                       capsys, case, message):
    out = tmp_path / "out"
    ckpt = tmp_path / "model.pt"
    val = data["val"]
    if case == "corrupt":
        ckpt.write_text("junk")
    elif case == "classes":  # a model of other classes than the dataset's
        c = load_checkpoint(END_TO_END)
        c["class_names"] = [*c["class_names"][:-1], "blob"]
        save_atomic(c, ckpt)
    elif case == "architecture":
        c = load_checkpoint(END_TO_END)
        c["maskiou_head"] = {**c["maskiou_head"], "num_convs": 3}  # what rebuilds the head
        save_atomic(c, ckpt)
    elif case == "fitted":  # scoring the add-on on the very images its head was trained on
        addon = next((data["root"] / "runs").glob("addon-*/model_final.pt"))
        ckpt = addon
        val = ["--val-json", str(data["addon_json"]), "--val-images", str(data["addon_images"])]
    elif case == "plain-without-images":
        ckpt = PLAIN
    elif case == "bad-json":
        ckpt = END_TO_END
        bad = tmp_path / "bad.json"
        bad.write_text("{not json")
        val = ["--val-json", str(bad), "--val-images", str(tmp_path)]
    code = coco_eval.main(["--checkpoint", str(ckpt), *val, "--output-dir", str(out),
                           "--no-progress", "--runs-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (out / "metrics.json").exists()


def test_distributed_evaluation_matches_single_process(data, tmp_path):
    """torchrun with 2 gloo processes: each rank a shard, gathered on rank 0, same metrics. The
    port comes from the --standalone rendezvous, never a fixed number."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    common = ["--checkpoint", str(END_TO_END), *data["val"], "--no-progress", "--batch-size", "1"]
    script = str(ROOT / "benchmarks" / "coco_eval.py")
    single = subprocess.run([sys.executable, script, *common, "--output-dir",
                             str(tmp_path / "one")], env=env, capture_output=True, text=True,
                            timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    dist = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", script, *common, "--output-dir",
                           str(tmp_path / "two")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert dist.returncode == 0, dist.stderr[-2000:]
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["num_images"] == 20 and two["num_detections"] == one["num_detections"]
    # one image a batch and one thread in both: each image is the same computation, exact
    assert two["segm"] == one["segm"] and two["bbox"] == one["bbox"]


def test_speed_benchmark_runs_and_reports_ratios(tmp_path):
    import speed

    out = tmp_path / "speed.json"
    assert speed.main(["--model", "maskrcnn_resnet18_fpn", "--sizes", "64x64", "--repeats", "1",
                       "--no-train", "--target-rois", "32", "--output", str(out)]) == 0
    r = json.loads(out.read_text())["cpu"]
    s = r["sizes"]["64x64"]
    assert s["detections_per_image"] == 100
    assert s["inference_ratio"] > 0 and s["light_inference_ratio"] > 0
    # the heads' own forward is timed on as many RoIs as the model detected, and reported as a
    # share of the plain model's time
    assert set(s["head_alone_s"]) == {"paper head", "light head"}
    assert s["head_share"] == pytest.approx(
        s["head_alone_s"]["paper head"]["median"] / s["inference_s"]["no head"]["median"])
    assert s["cost"]["head_gmacs_per_roi"] == pytest.approx(0.390, abs=0.001)
    assert s["light_cost"]["head_gmacs_per_roi"] < 0.005
    assert r["targets"]["max_abs_difference"] < 1e-5  # timings are reported, never asserted


def test_head_cost_counts_the_papers_multiply_adds():
    from maskiou import MaskIoUHead
    from maskiou.evaluation.cost import count_flops

    head = MaskIoUHead(num_classes=81)
    flops = count_flops(head, torch.zeros(1, 256, 14, 14), torch.zeros(1, 28, 28))
    convs = 14 * 14 * 9 * (257 * 256 + 2 * 256 * 256) + 7 * 7 * 9 * 256 * 256
    fcs = 256 * 49 * 1024 + 1024 * 1024 + 1024 * 81
    assert flops == 2 * (convs + fcs)  # 0.390 GMACs: the paper's 0.39
