"""Localisation Recall Precision error (LRP, Oksuz et al., "One Metric to Measure them All",
TPAMI 2021), its optimal threshold per class (oLRP) and the class mean (moLRP), for masks.

For one class, keeping the detections scored at least ``s``, with TP threshold ``tau``:

    LRP(s) = (sum over TPs of (1 - IoU) / (1 - tau) + N_FP + N_FN) / (N_TP + N_FP + N_FN)

where ``N_TP + N_FN`` is the number of GT instances ``G``, so the denominator is
``N_FP + G``. LRP is in [0, 1]: 0 for every GT found with a perfect mask and no false
positive, 1 with nothing kept. ``oLRP`` is the minimum over the thresholds, reached at the
LRP-optimal threshold ``s*`` (keep a detection when its score >= ``s*``); moLRP is the mean of
oLRP over the classes with at least one GT. TPs and their IoUs come from
:func:`maskiou.quality.matching.match_all` at ``tau`` (0.5, the paper's): COCO's greedy
matching by score, so the matching of the detections above any threshold is the top of the
matching of all of them, and one matching serves every threshold.

Thresholds (``grid``): by default every distinct score of the class (the exact minimum); a
``grid`` such as ``np.linspace(0, 1, 101)`` evaluates only those thresholds.

:func:`common_threshold` is the one threshold for every class whose mean LRP over the classes
is lowest: what the add-on stores for the masks worth keeping (one value fitted on all the
held-out detections varies less from one set of images to the next than each class's own
optimum; measured in docs/outputs.md).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

TAU = 0.5


class OptimalLRP(NamedTuple):
    """One class at its LRP-optimal threshold: ``lrp`` (oLRP), ``threshold`` (keep scores >=
    it; ``inf`` when keeping nothing is best), and the counts ``tp``, ``fp``, ``fn`` there."""

    lrp: float
    threshold: float
    tp: int
    fp: int
    fn: int


def optimal_lrp(scores: np.ndarray, matched_iou: np.ndarray, num_gt: int, tau: float = TAU,
                grid: np.ndarray | None = None) -> OptimalLRP:
    """oLRP of one class.

    Args:
        scores: Float[n], the class's detections' scores.
        matched_iou: Float[n], each detection's matched GT IoU at ``tau`` (>= tau for a TP, 0 for
            a false positive).
        num_gt: the class's GT instances (> 0).
        tau: the TP threshold the matching used.
        grid: Float[k], the thresholds to try; None: every distinct score.

    Returns:
        :class:`OptimalLRP`; among equal LRPs the highest threshold (the fewest detections).
    """
    s = np.asarray(scores, dtype=np.float64)
    q = np.asarray(matched_iou, dtype=np.float64)
    if len(s) != len(q):
        raise ValueError(f"optimal_lrp: {len(s)} scores but {len(q)} matched IoUs")
    if num_gt <= 0:
        raise ValueError(f"optimal_lrp: LRP needs at least one GT instance, got num_gt={num_gt}")
    if not 0 < tau < 1:
        raise ValueError(f"optimal_lrp: the TP threshold tau must be in (0, 1), got {tau}")
    order = np.argsort(-s, kind="stable")
    s, q = s[order], q[order]
    if grid is None:  # cut after the last of each run of equal scores
        cut = np.flatnonzero(np.append(s[1:] != s[:-1], True)) if len(s) else np.zeros(0, int)
        thresholds = s[cut]
    else:  # keeping scores >= t: the first k of the descending scores
        thresholds = np.sort(np.asarray(grid, dtype=np.float64))[::-1]
        k = np.searchsorted(-s, -thresholds, side="right")
        keep = k > 0
        thresholds, cut = thresholds[keep], k[keep] - 1
    lrp, tp, fp = _lrp_of_top(q, cut + 1, num_gt, tau)
    if len(lrp) == 0 or lrp.min() >= 1.0:
        return OptimalLRP(1.0, float("inf"), 0, 0, int(num_gt))
    best = int(np.argmin(lrp))  # the first minimum: the highest threshold
    return OptimalLRP(float(lrp[best]), float(thresholds[best]), int(tp[best]), int(fp[best]),
                      int(num_gt - tp[best]))


def _lrp_of_top(q: np.ndarray, kept: np.ndarray, num_gt: int, tau: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LRP of one class keeping the first ``kept`` (Int[k], 0 = none) of its detections in
    descending score order, whose matched IoUs are ``q`` (Float[n], 0 for a false positive):
    (LRP Float[k], TPs Int[k], FPs Int[k])."""
    tp = np.concatenate([[0], np.cumsum(q > 0)])[kept]
    loc = np.concatenate([[0.0], np.cumsum(np.where(q > 0, 1.0 - q, 0.0))])[kept] / (1.0 - tau)
    fp = kept - tp
    return (loc + fp + (num_gt - tp)) / (fp + num_gt), tp, fp


def molrp(scores: np.ndarray, labels: np.ndarray, matched_iou: np.ndarray,
          num_gt: dict[int, int], tau: float = TAU, grid: np.ndarray | None = None
          ) -> tuple[float, dict[int, OptimalLRP]]:
    """moLRP: the mean oLRP over the classes of ``num_gt`` with at least one GT.

    Args:
        scores, labels, matched_iou: Float[N], Int[N], Float[N] over all detections.
        num_gt: ``{class: GT instances}``; a class without detections has oLRP 1, a class with
            no GT (or not in ``num_gt``) is left out.
        tau, grid: as :func:`optimal_lrp`.

    Returns:
        (moLRP (NaN when no class has a GT), ``{class: OptimalLRP}``).
    """
    scores, labels = np.asarray(scores), np.asarray(labels)
    matched_iou = np.asarray(matched_iou)
    per_class = {int(c): optimal_lrp(scores[labels == c], matched_iou[labels == c], int(g), tau,
                                     grid)
                 for c, g in sorted(num_gt.items()) if g > 0}
    mean = float(np.mean([r.lrp for r in per_class.values()])) if per_class else float("nan")
    return mean, per_class


def lrp_at(scores: np.ndarray, matched_iou: np.ndarray, num_gt: int, threshold: float,
           tau: float = TAU) -> float:
    """LRP of one class keeping the detections scored at least ``threshold`` (``inf``: none):
    1 with nothing kept.

    Args:
        scores, matched_iou: Float[n] each, as :func:`optimal_lrp`.
        num_gt: the class's GT instances (> 0).
    """
    s = np.asarray(scores, dtype=np.float64)
    q = np.asarray(matched_iou, dtype=np.float64)
    if num_gt <= 0:
        raise ValueError(f"lrp_at: LRP needs at least one GT instance, got num_gt={num_gt}")
    keep = s >= threshold
    tp = int((q[keep] > 0).sum())
    fp = int(keep.sum()) - tp
    loc = float(np.sum(1.0 - q[keep & (q > 0)])) / (1.0 - tau)
    return (loc + fp + (num_gt - tp)) / (fp + num_gt)


def mlrp_at(scores: np.ndarray, labels: np.ndarray, matched_iou: np.ndarray,
            num_gt: dict[int, int], thresholds: dict[int, float], tau: float = TAU) -> float:
    """Mean over the classes with GT of :func:`lrp_at` at each class's threshold (a class
    missing from ``thresholds`` keeps every detection)."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    matched_iou = np.asarray(matched_iou)
    vals = [lrp_at(scores[labels == c], matched_iou[labels == c], g,
                   thresholds.get(c, -np.inf), tau) for c, g in sorted(num_gt.items()) if g > 0]
    return float(np.mean(vals)) if vals else float("nan")


COMMON_GRID = np.linspace(0.0, 1.0, 1001)


def common_threshold(scores: np.ndarray, labels: np.ndarray, matched_iou: np.ndarray,
                     num_gt: dict[int, int], tau: float = TAU,
                     grid: np.ndarray = COMMON_GRID) -> tuple[float, float]:
    """One threshold for every class: the value of ``grid`` at which the mean over the classes
    of ``num_gt`` with at least one GT of :func:`lrp_at` is lowest (the highest such value
    among equals: the fewest detections kept).

    Args:
        scores, labels, matched_iou: Float[N], Int[N], Float[N] over all detections, as
            :func:`molrp`.
        num_gt: ``{class: GT instances}``; classes without GT are left out.
        grid: Float[k], the thresholds tried.

    Returns:
        (the threshold, the mean LRP there); ``(inf, 1.0)`` without any class with GT.
    """
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    matched_iou = np.asarray(matched_iou, dtype=np.float64)
    classes = [(int(c), int(g)) for c, g in sorted(num_gt.items()) if g > 0]
    if not classes:
        return float("inf"), 1.0
    t = np.sort(np.asarray(grid, dtype=np.float64))[::-1]  # highest first: argmin keeps it
    total = np.zeros(len(t))
    for c, g in classes:
        s, q = scores[labels == c], matched_iou[labels == c]
        order = np.argsort(-s, kind="stable")
        kept = np.searchsorted(-s[order], -t, side="right")  # detections kept at each threshold
        total += _lrp_of_top(q[order], kept, g, tau)[0]
    best = int(np.argmin(total))
    return float(t[best]), float(total[best] / len(classes))
