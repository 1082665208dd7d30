import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from maskiou.evaluation.cocoeval import coco_ap, coco_results, evaluate_scorings, true_mask_ious
from maskiou.evaluation.metrics import (
    binned_means,
    correlation_summary,
    expected_calibration_error,
    pearson,
    scorings,
    spearman,
)
from maskiou.evaluation.predict import Detections, encode_masks
from maskiou.evaluation.report import markdown_report


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


def two_detections(cls=(0.7, 0.9), pred=(0.9, 0.3)) -> Detections:
    """D1: the exact mask; D2: shifted 4 px right, IoU 16/24 = 0.667."""
    masks = torch.stack([square(10, 10), square(14, 10)])
    return Detections(np.array([7, 7]), np.array([3, 3]),
                      np.array([[10.0, 10, 20, 20], [14.0, 10, 20, 20]]), encode_masks(masks),
                      np.array(cls), np.array(pred))


def test_true_mask_iou_against_gt_of_same_class():
    dets = two_detections()
    assert true_mask_ious(dets, gt_coco()) == pytest.approx([1.0, 16 / 24])
    other = Detections(dets.image_ids, np.array([3, 5]), dets.boxes_xywh, dets.rles,
                       dets.cls_scores, dets.pred_ious)
    assert true_mask_ious(other, gt_coco())[1] == 0.0  # no GT of class 5


def test_three_scorings_known_ap():
    # cls ranks the poor mask first: AP 1.0 at IoU thresholds 0.50-0.65, 0.5 at 0.70-0.95
    # -> AP 70, AP75 50. Rescored and oracle rank the exact mask first: AP 100.
    out = evaluate_scorings(two_detections(), gt_coco())
    for iou_type in ("segm", "bbox"):
        assert out[iou_type]["cls"]["AP"] == pytest.approx(70.0)
        assert out[iou_type]["cls"]["AP50"] == pytest.approx(100.0)
        assert out[iou_type]["cls"]["AP75"] == pytest.approx(50.0)
        assert out[iou_type]["rescored"]["AP"] == pytest.approx(100.0)
        assert out[iou_type]["oracle"]["AP"] == pytest.approx(100.0)
        assert out[iou_type]["cls"]["APs"] == pytest.approx(70.0)
        assert out[iou_type]["cls"]["APm"] == -1.0  # no medium GT, as pycocotools says


def test_oracle_keeps_predicted_iou_for_unmatched():
    s = scorings(np.array([0.8, 0.9]), np.array([0.5, 0.4]), np.array([0.0, 0.7]))
    assert s["oracle"] == pytest.approx([0.4, 0.63])
    assert s["rescored"] == pytest.approx([0.4, 0.36])
    assert s["cls"] == pytest.approx([0.8, 0.9])


def test_faster_coco_eval_gives_the_same_numbers():
    pytest.importorskip("faster_coco_eval")
    dets, coco = two_detections(), gt_coco()
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
                                  np.array([0.1, 0.5, 1.0, 0.0]))
    # one unmatched detection (true 0) with a high predicted IoU drags the overall Pearson down
    assert summary["pearson"] == pytest.approx(0.3662, abs=1e-3)
    assert summary["matched_fraction"] == 0.75
    # without the unmatched detection (true 0) the head's IoUs are almost exactly linear
    assert summary["pearson_matched"] > 0.99 and summary["cls_pearson_matched"] < -0.9


def test_report_renders_metrics(tmp_path):
    out = evaluate_scorings(two_detections(), gt_coco())
    metrics = {"segm": out["segm"], "bbox": out["bbox"], "num_images": 1, "num_detections": 2,
               "correlation": correlation_summary(np.array([0.7, 0.9]), np.array([0.9, 0.3]),
                                                  np.array([1.0, 0.667]))}
    assert metrics["correlation"]["pearson"] == pytest.approx(1.0)  # two points on a line
    text = markdown_report(metrics)
    assert "| change, rescored vs cls | +30.0 |" in text
    json.dumps(metrics)  # serializable
