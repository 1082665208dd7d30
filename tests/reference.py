"""Independent references for the tests: plain numpy, one RoI at a time, no project function.

- :func:`roi_align_1ch`: torchvision's ``roi_align`` (aligned=False, spatial scale 1, adaptive
  sampling ratio), written from its definition: each of the M x M bins averages
  ceil(h / M) x ceil(w / M) bilinear samples; a sample more than one pixel outside the map counts
  as 0, one within a pixel of the border is clamped to it.
- :func:`grid_mask_iou`: the MaskIoU target as the paper defines it on the RoI grid: the
  predicted mask (logit > 0) against the projected GT (>= 0.5), with the GT pixels outside the box
  added to the union, converted to grid cells.
- :func:`pasted_mask_iou`: the IoU of a predicted grid mask pasted into the image by hand
  (for boxes whose cells are whole pixels) with the full-image GT mask.
- :class:`LoopMatchTable` and :func:`loop_search_weights`: COCO mask AP of a score vector and
  the weight search as maskiou.addon.apsearch computed them before it was vectorized (Python
  loops over images, classes, thresholds, detections and ground truth, COCOeval's own order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALLS = np.linspace(0.0, 1.0, 101)


def _bilinear(img: np.ndarray, y: float, x: float) -> float:
    h, w = img.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    hy, hx = 1.0 - ly, 1.0 - lx
    return (hy * hx * img[y0, x0] + hy * lx * img[y0, x1] + ly * hx * img[y1, x0]
            + ly * lx * img[y1, x1])


def roi_align_1ch(img: np.ndarray, box: np.ndarray, m: int) -> np.ndarray:
    """Float64[m, m]: one map, one box (x1, y1, x2, y2), as torchvision computes it."""
    x1, y1, x2, y2 = (float(v) for v in box)
    rw, rh = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    bw, bh = rw / m, rh / m
    gw, gh = math.ceil(rw / m), math.ceil(rh / m)
    out = np.zeros((m, m))
    img = img.astype(np.float64)
    for ph in range(m):
        for pw in range(m):
            total = 0.0
            for iy in range(gh):
                y = y1 + ph * bh + (iy + 0.5) * bh / gh
                for ix in range(gw):
                    x = x1 + pw * bw + (ix + 0.5) * bw / gw
                    total += _bilinear(img, y, x)
            out[ph, pw] = total / max(gh * gw, 1)
    return out


def grid_mask_iou(logits: np.ndarray, box: np.ndarray, gt: np.ndarray) -> float:
    """The full-instance MaskIoU target of one RoI (see the module docstring)."""
    m = logits.shape[-1]
    pred = logits > 0
    proj = roi_align_1ch(gt, box, m) >= 0.5
    h, w = gt.shape
    x1, y1, x2, y2 = (int(round(float(v))) for v in box)
    x1, y1 = min(max(x1, 0), w), min(max(y1, 0), h)
    x2, y2 = max(min(x2, w), x1), max(min(y2, h), y1)
    outside = float(gt.sum() - gt[y1:y2, x1:x2].sum())
    area = max(float((box[2] - box[0]) * (box[3] - box[1])), 1e-6)
    inter = float((pred & proj).sum())
    union = float(pred.sum()) + float(proj.sum()) + outside * m * m / area - inter
    return inter / union if union > 0 else 0.0


def pasted_mask_iou(logits: np.ndarray, box: tuple[int, int, int, int], gt: np.ndarray) -> float:
    """Paste a grid mask whose cells are whole pixels into the image and measure its IoU."""
    m = logits.shape[-1]
    x1, y1, x2, y2 = box
    sy, sx = (y2 - y1) // m, (x2 - x1) // m
    assert sy * m == y2 - y1 and sx * m == x2 - x1, "cells must be whole pixels"
    pasted = np.zeros(gt.shape, dtype=bool)
    pasted[y1:y2, x1:x2] = np.kron(logits > 0, np.ones((sy, sx), dtype=bool))
    g = gt.astype(bool)
    union = (pasted | g).sum()
    return float((pasted & g).sum() / union) if union else 0.0


@dataclass
class _Group:
    """One image's detections of one class against its ground truth of that class."""

    dets: np.ndarray  # Int[d] indices into the score vector
    ious: np.ndarray  # Float[d, g], ground truth sorted: not ignored first
    ignored: np.ndarray  # Bool[g]: crowd regions
    crowd: np.ndarray  # Bool[g]


class LoopMatchTable:
    """maskiou.addon.apsearch.MatchTable as it was before it was vectorized: one pycocotools IoU
    call per (image, class) and COCOeval's greedy matching as Python loops (slow, plain).

    Args:
        coco: a pycocotools ``COCO`` with the ground truth.
        images: the image ids evaluated (those without detections count too).
        image_ids, category_ids: Int[N] per detection.
        rles: N COCO RLEs, each detection's mask.
        max_detections: per image, as COCOeval's ``maxDets`` (the highest scored are kept).
    """

    def __init__(self, coco: Any, images: list[int], image_ids: np.ndarray,
                 category_ids: np.ndarray, rles: list[dict[str, Any]],
                 max_detections: int = 100) -> None:
        from pycocotools import mask as mask_utils

        self.max_detections = max_detections
        self.n = len(image_ids)
        self.categories = sorted(coco.getCatIds())
        self.groups: dict[int, list[_Group]] = {c: [] for c in self.categories}
        self.gt_counts = dict.fromkeys(self.categories, 0)
        image_ids, category_ids = np.asarray(image_ids), np.asarray(category_ids)
        wanted = set(int(i) for i in images)
        by_key: dict[tuple[int, int], list[int]] = {}
        for i, (img, cat) in enumerate(zip(image_ids.tolist(), category_ids.tolist())):
            if img in wanted:
                by_key.setdefault((img, cat), []).append(i)
        for img in sorted(wanted):
            anns_of: dict[int, list[dict[str, Any]]] = {}
            for a in coco.loadAnns(coco.getAnnIds(imgIds=[img])):
                anns_of.setdefault(a["category_id"], []).append(a)
            for cat in self.categories:
                anns = anns_of.get(cat, [])
                crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], bool)
                order = np.argsort(crowd, kind="mergesort")  # COCOeval: ignored last
                anns, crowd = [anns[k] for k in order], crowd[order]
                self.gt_counts[cat] += int((~crowd).sum())
                dets = np.array(by_key.get((img, cat), []), np.int64)
                if len(dets) == 0:
                    continue
                if anns:
                    gts = [coco.annToRLE(a) for a in anns]
                    ious = np.asarray(mask_utils.iou([rles[k] for k in dets], gts,
                                                     crowd.astype(np.uint8).tolist()),
                                      np.float64).reshape(len(dets), len(anns))
                else:
                    ious = np.zeros((len(dets), 0))
                self.groups[cat].append(_Group(dets, ious, crowd.copy(), crowd))

    def ap(self, scores: np.ndarray) -> float:
        """COCO mask AP (IoU 0.50:0.95, all areas, in percent) of the detections scored by
        ``scores`` (Float[N]); categories without ground truth are left out, as COCOeval
        leaves them out."""
        scores = np.asarray(scores, np.float64)
        per_category = []
        for cat in self.categories:
            if self.gt_counts[cat] == 0:
                continue
            kept_scores, matched, ignored = [], [], []
            for g in self.groups[cat]:
                s = scores[g.dets]
                order = np.argsort(-s, kind="mergesort")[:self.max_detections]
                m, ig = self._match(g.ious[order], g.ignored, g.crowd)
                kept_scores.append(s[order])
                matched.append(m)
                ignored.append(ig)
            per_category.append(self._category_ap(kept_scores, matched, ignored,
                                                  self.gt_counts[cat]))
        return float(np.mean(per_category) * 100) if per_category else 0.0

    @staticmethod
    def _match(ious: np.ndarray, gt_ignored: np.ndarray, crowd: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
        """COCOeval's greedy matching of detections (in score order) at each threshold:
        Bool[T, d] matched, Bool[T, d] ignored (matched to a crowd region)."""
        d, g = ious.shape
        matched = np.zeros((len(THRESHOLDS), d), bool)
        ignored = np.zeros((len(THRESHOLDS), d), bool)
        if g == 0:
            return matched, ignored
        for t, thr in enumerate(THRESHOLDS):
            taken = np.zeros(g, bool)
            for i in range(d):
                best, best_iou = -1, min(thr, 1 - 1e-10)
                for j in range(g):
                    if taken[j] and not crowd[j]:
                        continue
                    if best > -1 and not gt_ignored[best] and gt_ignored[j]:
                        break
                    if ious[i, j] < best_iou:
                        continue
                    best_iou, best = ious[i, j], j
                if best > -1:
                    taken[best] = True
                    matched[t, i] = True
                    ignored[t, i] = gt_ignored[best]
        return matched, ignored

    @staticmethod
    def _category_ap(scores: list[np.ndarray], matched: list[np.ndarray],
                     ignored: list[np.ndarray], gt_count: int) -> float:
        """Mean interpolated precision over the thresholds and 101 recall points."""
        if not scores:
            return 0.0
        s = np.concatenate(scores)
        order = np.argsort(-s, kind="mergesort")
        m = np.concatenate(matched, 1)[:, order]
        ig = np.concatenate(ignored, 1)[:, order]
        tps = np.cumsum(m & ~ig, 1, dtype=np.float64)
        fps = np.cumsum(~m & ~ig, 1, dtype=np.float64)
        total = 0.0
        for tp, fp in zip(tps, fps):
            if len(tp) == 0:
                continue
            recall = tp / gt_count
            precision = tp / np.maximum(tp + fp, np.spacing(1))
            precision = np.maximum.accumulate(precision[::-1])[::-1]
            idx = np.searchsorted(recall, RECALLS, side="left")
            ok = idx < len(precision)
            total += precision[idx[ok]].sum()
        return total / (len(THRESHOLDS) * len(RECALLS))


def loop_search_weights(x: np.ndarray, table: Any, start: np.ndarray, fixed: int,
                        steps: tuple[float, ...] = (0.5, 0.25, 0.1),
                        bounds: tuple[float, float] = (-3.0, 3.0), min_gain: float = 1e-3
                        ) -> tuple[np.ndarray, float]:
    """Weights ``w`` (Float[k]) for the score ``x @ w`` (x: Float[N, k], the signals' logs)
    that raise ``table``'s AP: from ``start``, each coordinate but ``fixed`` (which sets the
    scale: AP depends only on the order) moves by a step while AP rises by more than
    ``min_gain`` points, the steps shrinking in turn. Returns (weights, their AP)."""
    w = np.asarray(start, np.float64).copy()
    best = table.ap(x @ w)
    for step in steps:
        improved = True
        while improved:
            improved = False
            for j in range(len(w)):
                if j == fixed:
                    continue
                for sign in (1.0, -1.0):
                    trial = w.copy()
                    trial[j] = float(np.clip(trial[j] + sign * step, *bounds))
                    if trial[j] == w[j]:
                        continue
                    got = table.ap(x @ trial)
                    if got > best + min_gain:
                        w, best, improved = trial, got, True
                        break
    return w, best
