"""COCO mask AP of many scorings of the same detections, fast, and the search for the exponents
of the final score that maximize it.

A logistic fit of the final score's weights minimizes a log loss over every detection, and
most detections are low-scored false positives: on YOLO-seg (about 26 detections an image) the
fitted weights ranked the held-out detections 2.2 AP below the head's plain rescoring, which the
same family contains (weights 1, 1, 0, 0). AP depends only on the order of the detections of
each class, so here the weights are chosen for that order: :class:`MatchTable` computes the
IoU of every detection with the ground truth of its image and class once (what COCOeval
recomputes on every call), after which the AP of any score vector costs a greedy matching and a
sort; :func:`search_weights` walks the weights from the rescoring's, one coordinate at a time,
keeping a step only where AP rises.

:class:`MatchTable` reproduces pycocotools' ``COCOeval`` for ``iouType="segm"`` at the "all"
area range and 100 detections per image (its AP, the first number of ``summarize``):
crowd regions are ignored and may match several detections, ties keep the order of the
detections (merge sort, as COCOeval sorts); ``tests/test_apsearch.py`` checks it against
pycocotools.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALLS = np.linspace(0.0, 1.0, 101)


@dataclass
class _Group:
    """One image's detections of one class against its ground truth of that class."""

    dets: np.ndarray  # Int[d] indices into the score vector
    ious: np.ndarray  # Float[d, g], ground truth sorted: not ignored first
    ignored: np.ndarray  # Bool[g]: crowd regions
    crowd: np.ndarray  # Bool[g]


class MatchTable:
    """The detections of some images, their IoUs with the ground truth computed once.

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


def search_weights(x: np.ndarray, table: MatchTable, start: np.ndarray,
                   fixed: int, steps: tuple[float, ...] = (0.5, 0.25, 0.1),
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
