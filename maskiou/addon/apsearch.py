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
pycocotools and against the loops it replaced (``tests/reference.py``).

How it stays fast at COCO size (500,000 detections, 80 classes, 5,000 images: one AP in a
fraction of a second, pure numpy):

- IoUs: one pycocotools call per image (every detection of a class the image has objects of
  against every ground-truth mask of the image, the crowd rule included), of which only the
  pairs of the same class with IoU >= 0.5 are kept. A detection without such a pair matches
  nothing at any threshold: a false positive whatever its score.
- Sorting: three stable sorts of the whole score vector per call (the scores, then by class,
  then by image; the last two are radix sorts of small integers) give both orders COCOeval
  uses: by score within each (image, class), and by score within each class with ties in
  image order, then detection order.
- Matching: the greedy matching runs for every (image, class) and all ten thresholds at once,
  one step per rank within the image's class (at most ``max_detections`` steps), over the
  candidate pairs alone. Each detection's pairs are kept ordered by COCOeval's preference (a
  ground truth that is not a crowd first, then higher IoU, then the later ground truth on
  equal IoU, as its loop keeps the last), so its match is its last pair still free.
- Accumulation: cumulative true and false positives of every threshold per class, the
  precision envelope and the 101 recall points, one class at a time (80 iterations of array
  work).
"""

from __future__ import annotations

from typing import Any

import numpy as np

THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALLS = np.linspace(0.0, 1.0, 101)
# COCOeval starts each detection's search at min(threshold, 1 - 1e-10) and keeps IoU >= it
_FLOORS = np.minimum(THRESHOLDS, 1 - 1e-10)


def _small_int(a: np.ndarray) -> np.ndarray:
    """``a`` (non-negative ints) as the narrowest type numpy radix-sorts when it fits."""
    top = int(a.max()) if len(a) else 0
    return a.astype(np.uint16 if top < 2**16 else np.int64)


def _stable(key: np.ndarray) -> np.ndarray:
    return np.argsort(key, kind="stable")


class MatchTable:
    """The detections of some images, their IoUs with the ground truth computed once.

    Args:
        coco: a pycocotools ``COCO`` with the ground truth.
        images: the image ids evaluated (those without detections count too).
        image_ids, category_ids: Int[N] per detection (a detection of another image or of a
            category ``coco`` does not have is left out, as COCOeval leaves it out).
        rles: N COCO RLEs, each detection's mask.
        max_detections: per image and class, as COCOeval's ``maxDets`` (the highest scored
            are kept).

    Attributes: ``n`` (N, the length of a score vector), ``categories`` (sorted ids),
    ``images`` (sorted ids), ``gt_counts`` (category id -> ground-truth instances that are
    not crowd regions: a category with none is left out of the AP).
    """

    def __init__(self, coco: Any, images: list[int], image_ids: np.ndarray,
                 category_ids: np.ndarray, rles: list[dict[str, Any]],
                 max_detections: int = 100) -> None:
        from pycocotools import mask as mask_utils

        image_ids = np.asarray(image_ids, np.int64).reshape(-1)
        category_ids = np.asarray(category_ids, np.int64).reshape(-1)
        if not len(image_ids) == len(category_ids) == len(rles):
            raise ValueError(f"MatchTable: {len(image_ids)} image ids, {len(category_ids)} "
                             f"category ids and {len(rles)} masks: need one each a detection")
        cats = np.array(sorted(coco.getCatIds()), np.int64)
        imgs = np.unique(np.asarray([int(i) for i in images], np.int64))
        img_pos, cat_pos = _positions(imgs, image_ids), _positions(cats, category_ids)
        rows = np.flatnonzero((img_pos >= 0) & (cat_pos >= 0))
        rows = rows[_stable(img_pos[rows])]  # by image, then detection order
        det_img, det_cat = img_pos[rows], cat_pos[rows]
        cut = np.searchsorted(det_img, np.arange(len(imgs) + 1))
        cat_index = {int(c): k for k, c in enumerate(cats)}
        gt_img, gt_cat, gt_crowd = [], [], []
        pair_det, pair_gt, pair_iou = [], [], []
        for p, img in enumerate(imgs.tolist()):
            anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=[img]))
                    if a["category_id"] in cat_index]
            first = len(gt_img)
            crowd = [bool(a.get("iscrowd", 0)) for a in anns]
            gt_img += [p] * len(anns)
            gt_cat += [cat_index[a["category_id"]] for a in anns]
            gt_crowd += crowd
            lo, hi = int(cut[p]), int(cut[p + 1])
            if hi == lo or not anns:
                continue
            classes = np.asarray(gt_cat[first:], np.int64)
            dets = lo + np.flatnonzero(np.isin(det_cat[lo:hi], classes))  # a class it has
            if len(dets) == 0:
                continue
            ious = np.asarray(mask_utils.iou([rles[k] for k in rows[dets]],
                                             [coco.annToRLE(a) for a in anns],
                                             [int(c) for c in crowd]), np.float64)
            ious = ious.reshape(len(dets), len(anns))
            same = det_cat[dets, None] == classes[None, :]
            d, g = np.nonzero(same & (ious >= THRESHOLDS[0]))
            pair_det.append(dets[d])
            pair_gt.append(g + first)
            pair_iou.append(ious[d, g])
        self._setup(len(image_ids), image_ids, imgs, cats, rows, det_img, det_cat,
                    np.asarray(gt_img, np.int64), np.asarray(gt_cat, np.int64),
                    np.asarray(gt_crowd, bool), _join(pair_det, np.int64),
                    _join(pair_gt, np.int64), _join(pair_iou, np.float64), max_detections)

    def _setup(self, n: int, image_ids: np.ndarray, imgs: np.ndarray, cats: np.ndarray,
               rows: np.ndarray, det_img: np.ndarray, det_cat: np.ndarray,
               gt_img: np.ndarray, gt_cat: np.ndarray, gt_crowd: np.ndarray,
               pair_det: np.ndarray, pair_gt: np.ndarray, pair_iou: np.ndarray,
               max_detections: int) -> None:
        """Store the table, its detections (``rows`` Int[M] into the score vector, sorted by
        image then row, with their image and class positions) ordered for :meth:`ap`; the
        ground truth Int/Bool[G] (in each image's annotation order); the candidate pairs
        Int/Int/Float[P] (detection position, ground-truth index, IoU >= 0.5)."""
        self.n, self.max_detections = n, int(max_detections)
        self._image_ids = image_ids
        self.images, self._cats = imgs, cats
        self.categories = [int(c) for c in cats]
        self._rows, self._img, self._cat = rows, _small_int(det_img), _small_int(det_cat)
        group = det_img * len(cats) + det_cat  # (image, class): the order of ap()'s last sort
        self._group_start = np.searchsorted(np.sort(group), group)
        self._gt_cat, self._gt_crowd = gt_cat, gt_crowd
        counts = np.bincount(gt_cat[~gt_crowd], minlength=len(cats))
        self.gt_counts = {int(c): int(k) for c, k in zip(cats, counts)}
        self._gt_img = gt_img
        # per category: its columns in the [T, objects] precision table of _mean_ap, and the
        # index of each recall point there: COCOeval's searchsorted(tp / npig, RECALLS) lands
        # on the first detection where tp reaches the least count k with k / npig >= the
        # point, i.e. on the k-th true positive (the first detection for k = 0)
        self._columns = np.r_[0, np.cumsum(counts)]
        self._recall_at = [np.maximum(np.searchsorted(np.arange(k + 1) / k, RECALLS), 1) - 1
                           if k else None for k in counts.tolist()]
        # each detection's pairs in COCOeval's preference, the preferred last
        order = np.lexsort((pair_gt, pair_iou, ~gt_crowd[pair_gt], pair_det))
        self._pair_det, self._pair_gt = pair_det[order], pair_gt[order]
        self._pair_iou = pair_iou[order]
        self._pair_crowd = gt_crowd[self._pair_gt]
        self._pair_ok = self._pair_iou[:, None] >= _FLOORS[None, :]  # Bool[P, T]

    def subset(self, rows: np.ndarray) -> MatchTable:
        """The table of the detections ``rows`` (Int[R], distinct indices into this table's
        score vector) on the images they are in: what ``MatchTable`` of those detections and
        images would build, without computing an IoU again. Its score vector has R entries."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.n
                          or np.bincount(rows, minlength=self.n).max() > 1):
            raise ValueError(f"MatchTable.subset: rows must be distinct indices below {self.n}")
        at = _positions(self.images, self._image_ids[rows])
        present = np.zeros(len(self.images), bool)
        present[at[at >= 0]] = True
        imgs = self.images[present]
        new_img = np.full(len(self.images), -1)
        new_img[np.searchsorted(self.images, imgs)] = np.arange(len(imgs))
        new_row = np.full(self.n, -1)
        new_row[rows] = np.arange(len(rows))
        det_row = new_row[self._rows]
        det_img = new_img[self._img.astype(np.int64)]
        keep = (det_row >= 0) & (det_img >= 0)
        order = np.lexsort((det_row[keep], det_img[keep]))
        kept = np.flatnonzero(keep)[order]
        new_det = np.full(len(self._rows), -1)
        new_det[kept] = np.arange(len(kept))
        gt_keep = new_img[self._gt_img] >= 0
        new_gt = np.cumsum(gt_keep) - 1
        pairs = new_det[self._pair_det] >= 0
        table = MatchTable.__new__(MatchTable)
        table._setup(len(rows), self._image_ids[rows], imgs, self._cats, det_row[kept],
                     det_img[kept], self._cat[kept].astype(np.int64),
                     new_img[self._gt_img[gt_keep]], self._gt_cat[gt_keep],
                     self._gt_crowd[gt_keep], new_det[self._pair_det[pairs]],
                     new_gt[self._pair_gt[pairs]], self._pair_iou[pairs], self.max_detections)
        return table

    def ap(self, scores: np.ndarray) -> float:
        """COCO mask AP (IoU 0.50:0.95, all areas, in percent) of the detections scored by
        ``scores`` (Float[N]); categories without ground truth are left out, as COCOeval
        leaves them out."""
        scores = np.asarray(scores, np.float64)
        if scores.shape != (self.n,):
            raise ValueError(f"MatchTable.ap: scores of shape {scores.shape}, expected "
                             f"({self.n},): one per detection of the table")
        s = scores[self._rows]
        by_score = _stable(-s)  # ties: image order, then detection order (rows' order)
        by_class = by_score[_stable(self._cat[by_score])]
        by_group = by_class[_stable(self._img[by_class])]  # (image, class), score, row
        rank = np.empty(len(s), np.int64)
        rank[by_group] = np.arange(len(s)) - self._group_start[by_group]
        seq = by_class[rank[by_class] < self.max_detections]  # COCOeval's order of a class
        position = np.empty(len(s), np.int64)
        position[seq] = np.arange(len(seq))
        (tp_t, tp_det), (ig_t, ig_det) = self._match(rank)
        return self._mean_ap(self._cat[seq], tp_t, position[tp_det], ig_t, position[ig_det])

    def _match(self, rank: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray],
                                                tuple[np.ndarray, np.ndarray]]:
        """COCOeval's greedy matching, every (image, class) and threshold at once, given each
        detection's rank within its image and class (Int[M]): the true positives as
        (threshold index, detection) Int[P] each, and the same of the detections matched to a
        crowd region (ignored); every other detection kept is a false positive."""
        t_count = len(THRESHOLDS)
        pair_rank = rank[self._pair_det]
        live = np.flatnonzero(pair_rank < self.max_detections)
        live = live[_stable(_small_int(pair_rank[live]))]  # by rank, then det and preference
        cuts = np.searchsorted(pair_rank[live], np.arange(self.max_detections + 1))
        taken = np.zeros((len(self._gt_cat), t_count), bool)
        hits: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for r in np.flatnonzero(np.diff(cuts)):
            ps = live[cuts[r]:cuts[r + 1]]  # the pairs of the detections of rank r
            det, gt, crowd = self._pair_det[ps], self._pair_gt[ps], self._pair_crowd[ps]
            free = self._pair_ok[ps] & (crowd[:, None] | ~taken[gt])
            starts = np.flatnonzero(np.r_[True, det[1:] != det[:-1]])
            last = np.maximum.reduceat(np.where(free, np.arange(len(ps))[:, None], -1),
                                       starts, axis=0)  # [detections, T]: its chosen pair
            i, t = np.nonzero(last >= 0)
            chosen = last[i, t]
            solid = ~crowd[chosen]
            taken[gt[chosen[solid]], t[solid]] = True
            hits.append((t, det[starts][i], solid))
        t = _join([h[0] for h in hits], np.int64)
        det = _join([h[1] for h in hits], np.int64)
        solid = _join([h[2] for h in hits], bool)
        return (t[solid], det[solid]), (t[~solid], det[~solid])

    def _mean_ap(self, cat: np.ndarray, tp_t: np.ndarray, tp_at: np.ndarray,
                 ig_t: np.ndarray, ig_at: np.ndarray) -> float:
        """Mean over the categories with ground truth of COCOeval's interpolated precision at
        the 101 recall points and every threshold, in percent. ``cat`` Int[K]: the class
        position of each kept detection in COCOeval's order (by class, then score); the true
        positives and the ignored detections as (threshold index, place in that order).

        The precision envelope at a recall point is the best precision at or after the
        detection where recall reaches it, and precision only rises at a true positive: so
        only the true positives' precisions are computed, k / (k + false positives before),
        in a [T, objects] table (the k-th true positive of class c at column c's first + k-1,
        0 where there is none), each class's envelope a reversed running maximum."""
        t_count, k = len(THRESHOLDS), len(cat)
        cuts = np.searchsorted(cat, np.arange(len(self._cats) + 1))
        mark = np.zeros((t_count, k), bool)
        mark[tp_t, tp_at] = True
        t, at = np.nonzero(mark)  # by threshold, then place
        c = cat[at].astype(np.int64)
        segment = t * len(self._cats) + c
        nth = np.arange(len(t)) - np.searchsorted(segment, segment) + 1  # k-th of its class
        ignored = 0
        if len(ig_t):
            keys = np.sort(ig_t * k + ig_at)
            ignored = (np.searchsorted(keys, t * k + at)
                       - np.searchsorted(keys, t * k + cuts[c]))
        false = (at - cuts[c] + 1 - nth - ignored).astype(np.float64)
        tps = nth.astype(np.float64)
        table = np.zeros((t_count, int(self._columns[-1])))
        table[t, self._columns[c] + nth - 1] = tps / (false + tps + np.spacing(1))
        per_category = []
        for ci, recall_at in enumerate(self._recall_at):
            if recall_at is None:
                continue
            block = table[:, self._columns[ci]:self._columns[ci + 1]]
            envelope = np.maximum.accumulate(block[:, ::-1], axis=1)[:, ::-1]
            per_category.append(float(envelope[:, recall_at].sum())
                                / (t_count * len(RECALLS)))
        return float(np.mean(per_category) * 100) if per_category else 0.0


def _positions(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Int[N]: each of ``ids`` as its index in ``sorted_ids``, -1 where it is not there."""
    if len(sorted_ids) == 0:
        return np.full(len(ids), -1)
    at = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return np.where(sorted_ids[at] == ids, at, -1)


def _join(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)


def search_weights(x: np.ndarray, table: MatchTable, start: np.ndarray,
                   fixed: int, steps: tuple[float, ...] = (0.5, 0.25, 0.1),
                   bounds: tuple[float, float] = (-3.0, 3.0), min_gain: float = 1e-3
                   ) -> tuple[np.ndarray, float]:
    """Weights ``w`` (Float[k]) for the score ``x @ w`` (x: Float[N, k], the signals' logs)
    that raise ``table``'s AP: from ``start``, each coordinate but ``fixed`` (which sets the
    scale: AP depends only on the order) moves by a step while AP rises by more than
    ``min_gain`` points, the steps shrinking in turn. Returns (weights, their AP). A weight
    vector met again (a step back to where the walk came from) is not evaluated again."""
    w = np.asarray(start, np.float64).copy()
    seen: dict[tuple[float, ...], float] = {}

    def ap_of(v: np.ndarray) -> float:
        key = tuple(v.tolist())
        if key not in seen:
            seen[key] = table.ap(x @ v)
        return seen[key]

    best = ap_of(w)
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
                    got = ap_of(trial)
                    if got > best + min_gain:
                        w, best, improved = trial, got, True
                        break
    return w, best
