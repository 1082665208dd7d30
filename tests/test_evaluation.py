import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from maskiou.evaluation.cocoeval import (
    coco_ap,
    coco_results,
    evaluate_detections,
)
from maskiou.evaluation.metrics import (
    binned_means,
    correlation_summary,
    expected_calibration_error,
    pearson,
    scorings,
    spearman,
)
from maskiou.evaluation.report import markdown_report
from maskiou.records import Detections, encode_masks, true_mask_ious


def square(x, y, s=20, size=64):
    m = torch.zeros(size, size, dtype=torch.bool)
    m[y:y + s, x:x + s] = True
    return m


def gt_coco() -> COCO:
    rle = encode_masks(square(10, 10)[None])[0]
    data = {"images": [{"id": 7, "file_name": "a.png", "height": 64, "width": 64}],
            "categories": [{"id": 3, "name": "square"}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "segmentation": rle,
                             "area": 400.0, "bbox": [10, 10, 20, 20], "iscrowd": 0}]}
    coco = COCO()
    coco.dataset = data
    coco.createIndex()
    return coco


def detections(masks: torch.Tensor, cls, pred, mk, category_ids=None) -> Detections:
    n = len(masks)
    boxes = []
    for m in masks:
        ys, xs = torch.where(m)
        boxes.append([float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                      float(ys.max() - ys.min() + 1)])
    return Detections(np.full(n, 7), np.array(category_ids or [3] * n), np.array(boxes),
                      encode_masks(masks), np.array(cls, dtype=float),
                      np.array(pred, dtype=float), np.array(mk, dtype=float),
                      np.ones(n, dtype=np.int64), np.full(n, 400 / 64 ** 2),
                      np.array(cls, dtype=float) * np.array(pred, dtype=float))


def three_detections() -> Detections:
    """D1: the exact mask; D2: shifted 4 px right (IoU 16/24 = 0.667); D3: a false positive
    far from the GT that the head (wrongly) likes."""
    masks = torch.stack([square(10, 10), square(14, 10), square(40, 40)])
    return detections(masks, cls=(0.7, 0.9, 0.8), pred=(0.9, 0.3, 0.9), mk=(0.6, 0.95, 0.9))


def test_true_mask_iou_against_gt_of_same_class():
    dets = three_detections()
    assert true_mask_ious(dets, gt_coco()).tolist() == pytest.approx([1.0, 16 / 24, 0.0])
    other = detections(torch.stack([square(10, 10)]), (0.5,), (0.5,), (0.5,), category_ids=[5])
    assert true_mask_ious(other, gt_coco()).tolist() == [0.0]  # no GT of class 5


def test_every_scoring_has_its_known_ap():
    # cls and cls x maskness rank D2, D3, D1: AP 1 at IoU 0.50-0.65 (D2 matches), 1/3 at
    # 0.70-0.95 (only D1, third) -> AP 60, AP75 33.3. The head ranks the false positive first,
    # then D1: AP 50. The oracle gives D3 a 0 and ranks D1 first: AP 100.
    dets, coco = three_detections(), gt_coco()
    true = true_mask_ious(dets, coco)
    metrics, results = evaluate_detections(dets, coco, true, has_head=True,
                                           recalibrated=np.array([0.9, 0.1, 0.0]))
    segm = metrics["segm"]
    assert segm["cls"]["AP"] == pytest.approx(60.0) and segm["cls"]["AP75"] == pytest.approx(
        100 / 3, abs=0.01)
    assert segm["maskness"]["AP"] == pytest.approx(60.0)
    assert segm["rescored"]["AP"] == pytest.approx(50.0)
    assert segm["recalibrated"]["AP"] == pytest.approx(100.0)
    assert segm["oracle"]["AP"] == pytest.approx(100.0)
    assert segm["cls"]["APm"] == -1.0  # no medium GT, as pycocotools says
    assert [r["score"] for r in results["segm_oracle"]] == pytest.approx([0.7, 0.6, 0.0])
    assert set(results) == {f"{t}_{n}" for t in ("segm", "bbox")
                            for n in ("cls", "maskness", "rescored", "recalibrated", "oracle")}


def test_oracle_is_zero_for_a_false_positive_and_rows_depend_on_what_exists():
    s = scorings(np.array([0.8, 0.9]), np.array([0.5, 0.4]), np.array([0.5, 1.0]),
                 np.array([0.0, 0.7]))
    assert s["oracle"] == pytest.approx([0.0, 0.63])
    assert s["rescored"] == pytest.approx([0.4, 0.36])
    assert s["maskness"] == pytest.approx([0.4, 0.9])
    assert s["cls"] == pytest.approx([0.8, 0.9])
    assert list(s) == ["cls", "maskness", "rescored", "oracle"]
    plain = scorings(np.array([0.8]), None, np.array([0.5]), np.array([0.0]))
    assert list(plain) == ["cls", "maskness", "oracle"]  # no head: no rescored row


def test_faster_coco_eval_gives_the_same_numbers():
    pytest.importorskip("faster_coco_eval")
    dets, coco = three_detections(), gt_coco()
    for iou_type in ("segm", "bbox"):
        res = coco_results(dets, dets.cls_scores, iou_type)
        assert coco_ap(coco, res, iou_type, "faster-coco-eval") == \
            pytest.approx(coco_ap(coco, res, iou_type, "pycocotools"))


def test_correlation_and_ece_known_values():
    x = np.array([0.1, 0.2, 0.3, 0.4])
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert spearman(x, x ** 3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert np.isnan(pearson(x, np.ones(4)))
    # one bin: mean score 0.9, mean truth 0.6 -> 0.3; perfectly calibrated -> 0
    assert expected_calibration_error(np.array([0.9, 0.9]), np.array([0.5, 0.7])) == \
        pytest.approx(0.3)
    assert expected_calibration_error(np.array([0.05, 0.95]), np.array([0.05, 0.95])) == \
        pytest.approx(0.0)
    centres, means, counts = binned_means(np.array([0.05, 0.06, 0.95]), np.array([1.0, 0.0, 0.5]))
    assert means[0] == pytest.approx(0.5) and means[9] == pytest.approx(0.5)
    assert counts.tolist() == [2, 0, 0, 0, 0, 0, 0, 0, 0, 1] and np.isnan(means[4])
    summary = correlation_summary(np.array([0.9, 0.8, 0.7, 0.6]), np.array([0.2, 0.5, 0.9, 0.9]),
                                  np.array([0.3, 0.4, 0.8, 0.7]), np.array([0.1, 0.5, 1.0, 0.0]))
    # one unmatched detection (true 0) with a high predicted IoU drags the overall Pearson down
    assert summary["head_pearson"] == pytest.approx(0.3662, abs=1e-3)
    assert summary["matched_fraction"] == 0.75
    # without the unmatched detection (true 0) the head's IoUs are almost exactly linear
    assert summary["head_pearson_matched"] > 0.99 and summary["cls_pearson_matched"] < -0.9
    assert summary["maskness_pearson_matched"] == pytest.approx(
        pearson(np.array([0.3, 0.4, 0.8]), np.array([0.1, 0.5, 1.0])))
    assert {"ece_cls", "ece_maskness", "ece_rescored"} <= set(summary)


def test_report_renders_every_scoring_and_the_change_against_maskness():
    dets, coco = three_detections(), gt_coco()
    true = true_mask_ious(dets, coco)
    m, _ = evaluate_detections(dets, coco, true, has_head=True,
                               recalibrated=np.array([0.9, 0.1, 0.0]))
    metrics = {**m, "num_images": 1, "main_model": "addon", "checkpoint": "x.pt",
               "models": {"addon": m, "plain": {}}}
    text = markdown_report(metrics)
    assert "| change, recalibrated vs maskness | +40.0 |" in text
    assert "| cls x maskness (free: SOLOv2, Mask2Former) | 60.0 |" in text
    assert "| plain detector (the one the user has) | maskness | 60.0 |" in text
    json.dumps(metrics)  # serializable
