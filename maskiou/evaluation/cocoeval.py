"""COCO AP of the same detections under each scoring, with the correlation and calibration of
the signals.

AP comes from COCOeval (or faster-coco-eval, which must agree) through
:func:`maskiou.records.coco_ap`, shared with the add-on; the true MaskIoU from
:func:`maskiou.records.true_mask_ious`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from maskiou.records import Detections, coco_ap, coco_results

from .metrics import correlation_summary, scorings


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
