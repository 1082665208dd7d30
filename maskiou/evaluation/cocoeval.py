"""COCO AP of the same detections under each scoring, with the calibration and operating
point of each (mask LaECE, moLRP) and the correlation and calibration of the signals.

AP comes from COCOeval (or faster-coco-eval, which must agree) through
:func:`maskiou.records.coco_ap`, shared with the add-on; the mask IoUs between detections and
GT instances from :func:`maskiou.records.mask_iou_groups`, computed once: the true MaskIoU is
their row maximum, LaECE and LRP match on them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from maskiou.quality.laece import laece
from maskiou.quality.lrp import molrp
from maskiou.quality.matching import IoUGroup, match_all
from maskiou.records import Detections, coco_ap, coco_results, mask_iou_groups

from .metrics import correlation_summary, scorings

LAECE_TAUS = {"LaECE": 0.1, "LaECE50": 0.5}
"""The TP threshold of each LaECE entry (0.1: the paper's, the table's)."""
LRP_TAU = 0.5


def gt_counts(coco_gt: Any) -> dict[int, int]:
    """``{category id: non-crowd GT instances}`` over every image of ``coco_gt`` (every
    category, 0 for one without GT)."""
    counts = dict.fromkeys((int(c) for c in coco_gt.getCatIds()), 0)
    for ann in coco_gt.dataset.get("annotations", []):
        if not ann.get("iscrowd", 0):
            counts[int(ann["category_id"])] = counts.get(int(ann["category_id"]), 0) + 1
    return counts


def calibration_metrics(dets: Detections, scores: np.ndarray, groups: list[IoUGroup],
                        num_gt: dict[int, int]) -> dict[str, Any]:
    """Mask LaECE (TP threshold 0.1: ``LaECE``, 0.5: ``LaECE50``) and moLRP (0.5) of one
    scoring, with each class's LRP-optimal threshold (``LRP_thresholds``: ``{category id:
    keep scores >= it}``, None where keeping nothing is best) and oLRP (``oLRP``).

    Args:
        dets: the detections (image and category ids).
        scores: Float[N], the scoring's score of each detection.
        groups: :func:`maskiou.records.mask_iou_groups` of ``dets``.
        num_gt: :func:`gt_counts` of the GT.
    """
    # one order whatever the order the detections came in (ranks of torchrun gather them
    # image-interleaved): the image's detections keep theirs, so sums are the same to the bit
    order = np.argsort(dets.image_ids, kind="stable")
    where = np.empty(len(order), dtype=np.int64)
    where[order] = np.arange(len(order))
    canon = [(where[sel], ious) for sel, ious in groups]
    s = np.asarray(scores, dtype=np.float64)[order]
    cats = np.asarray(dets.category_ids)[order]
    out: dict[str, Any] = {name: laece(s, cats, match_all(s, canon, tau))[0]
                           for name, tau in LAECE_TAUS.items()}
    mean, per_class = molrp(s, cats, match_all(s, canon, LRP_TAU), num_gt, LRP_TAU)
    out["moLRP"] = mean
    out["LRP_thresholds"] = {str(c): (r.threshold if np.isfinite(r.threshold) else None)
                             for c, r in per_class.items()}
    out["oLRP"] = {str(c): r.lrp for c, r in per_class.items()}
    return out


def evaluate_scorings(dets: Detections, coco_gt: Any, scores: dict[str, np.ndarray],
                      backend: str = "pycocotools", groups: list[IoUGroup] | None = None
                      ) -> dict[str, Any]:
    """``{"segm": {scoring: APs}, "bbox": {...}}`` for each named score of the same detections
    (see :func:`maskiou.evaluation.metrics.scorings`), plus the COCO results lists under
    ``"results"`` (``"segm_<scoring>"``, for writing JSON files). Each ``segm`` entry also has
    :func:`calibration_metrics` (``LaECE``, ``LaECE50``, ``moLRP``, ``LRP_thresholds``,
    ``oLRP``), on ``groups`` (:func:`maskiou.records.mask_iou_groups` of ``dets``, computed
    here when not given)."""
    out: dict[str, Any] = {"segm": {}, "bbox": {}, "results": {}}
    groups = mask_iou_groups(dets, coco_gt) if groups is None else groups
    num_gt = gt_counts(coco_gt)
    for iou_type in ("segm", "bbox"):
        for name, score in scores.items():
            res = coco_results(dets, score, iou_type)
            out[iou_type][name] = coco_ap(coco_gt, res, iou_type, backend)
            if iou_type == "segm":
                out[iou_type][name].update(calibration_metrics(dets, score, groups, num_gt))
            out["results"][f"{iou_type}_{name}"] = res
    return out


def evaluate_detections(dets: Detections, coco_gt: Any, true_ious: np.ndarray, *,
                        has_head: bool, recalibrated: np.ndarray | None = None,
                        backend: str = "pycocotools", groups: list[IoUGroup] | None = None
                        ) -> tuple[dict[str, Any], dict[str, list]]:
    """Every applicable scoring of ``dets`` with its COCO AP (segm and bbox) and its mask
    LaECE and moLRP (see :func:`evaluate_scorings`, ``groups`` as there), and the correlation
    and calibration of the signals with the true MaskIoU.

    Returns:
        (metrics: ``{"segm", "bbox", "correlation", "num_detections"}``, COCO results lists).
    """
    pred = dets.pred_ious if has_head else None
    scores = scorings(dets.cls_scores, pred, dets.maskness, true_ious, recalibrated)
    ev = evaluate_scorings(dets, coco_gt, scores, backend, groups)
    metrics = {"segm": ev["segm"], "bbox": ev["bbox"],
               "correlation": correlation_summary(dets.cls_scores, pred, dets.maskness,
                                                  true_ious, recalibrated),
               "num_detections": len(dets)}
    return metrics, ev["results"]
