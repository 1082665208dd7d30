"""COCO AP of the same detections under each scoring, and the true MaskIoU of each detection.

The true MaskIoU comes from pycocotools' RLE IoU against the GT masks of the detection's class;
AP comes from COCOeval (or faster-coco-eval, which must agree).
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np

from maskiou.records import Detections

from .metrics import correlation_summary, scorings

AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def coco_results(dets: Detections, scores: np.ndarray, iou_type: str) -> list[dict[str, Any]]:
    """COCO results JSON entries for ``iou_type`` "segm" or "bbox" with the given scores."""
    out = []
    for i in range(len(dets)):
        entry = {"image_id": int(dets.image_ids[i]), "category_id": int(dets.category_ids[i]),
                 "score": float(scores[i])}
        if iou_type == "segm":
            entry["segmentation"] = dets.rles[i]
        else:
            entry["bbox"] = [round(float(v), 2) for v in dets.boxes_xywh[i]]
        out.append(entry)
    return out


def coco_ap(coco_gt: Any, results: list[dict[str, Any]], iou_type: str,
            backend: str = "pycocotools") -> dict[str, float]:
    """AP, AP50, AP75, APs, APm, APl in percent (pycocotools' stats x 100; -1 where the split
    has no GT of that size)."""
    if not results:
        return dict.fromkeys(AP_KEYS, 0.0)
    if backend not in ("pycocotools", "faster-coco-eval"):
        raise ValueError(f"eval backend must be pycocotools or faster-coco-eval, got {backend!r}")
    with contextlib.redirect_stdout(io.StringIO()):
        if backend == "pycocotools":
            from pycocotools.cocoeval import COCOeval
        else:
            from faster_coco_eval import COCO
            from faster_coco_eval import COCOeval_faster as COCOeval

            gt = COCO()
            gt.dataset = coco_gt.dataset
            gt.createIndex()
            coco_gt = gt
        dt = coco_gt.loadRes([dict(r) for r in results])  # loadRes edits the dicts it gets
        ev = COCOeval(coco_gt, dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # -1 (no GT in that area range) stays -1, as pycocotools reports it
    return {k: round(float(v) * 100, 3) if v >= 0 else -1.0 for k, v in zip(AP_KEYS, ev.stats[:6])}


def evaluate_scorings(dets: Detections, coco_gt: Any, scores: dict[str, np.ndarray],
                      backend: str = "pycocotools") -> dict[str, Any]:
    """``{"segm": {scoring: APs}, "bbox": {...}}`` for each named score of the same detections
    (see :func:`maskiou.evaluation.metrics.scorings`), plus the COCO results lists under
    ``"results"`` (``"segm_<scoring>"``, for writing JSON files)."""
    out: dict[str, Any] = {"segm": {}, "bbox": {}, "results": {}}
    for iou_type in ("segm", "bbox"):
        for name, score in scores.items():
            res = coco_results(dets, score, iou_type)
            out[iou_type][name] = coco_ap(coco_gt, res, iou_type, backend)
            out["results"][f"{iou_type}_{name}"] = res
    return out


def evaluate_detections(dets: Detections, coco_gt: Any, true_ious: np.ndarray, *,
                        has_head: bool, recalibrated: np.ndarray | None = None,
                        backend: str = "pycocotools") -> tuple[dict[str, Any], dict[str, list]]:
    """Every applicable scoring of ``dets`` with its COCO AP (segm and bbox), and the
    correlation and calibration of the signals with the true MaskIoU.

    Returns:
        (metrics: ``{"segm", "bbox", "correlation", "num_detections"}``, COCO results lists).
    """
    pred = dets.pred_ious if has_head else None
    scores = scorings(dets.cls_scores, pred, dets.maskness, true_ious, recalibrated)
    ev = evaluate_scorings(dets, coco_gt, scores, backend)
    metrics = {"segm": ev["segm"], "bbox": ev["bbox"],
               "correlation": correlation_summary(dets.cls_scores, pred, dets.maskness,
                                                  true_ious, recalibrated),
               "num_detections": len(dets)}
    return metrics, ev["results"]
