"""COCO-style matching of detections to ground truth at one IoU threshold, the matching that
LaECE and LRP count true positives with.

Pure numpy. Within one (image, class) group the detections are taken by decreasing score (a
stable sort: equal scores keep their order, as pycocotools' ``mergesort``); each takes, among
the GT instances not yet taken, the one of highest IoU if that IoU is at least ``tau`` (equal
IoUs: the later GT, as pycocotools); a detection that takes none is a false positive. Every GT
is taken at most once. Crowd GT regions are not part of the groups: a detection on a crowd
region is a false positive here, where pycocotools would ignore it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

IoUGroup = tuple[np.ndarray, np.ndarray]
"""(indices of the group's detections Int[n] into the flat arrays, their mask IoU with the
group's GT instances Float[n, g])."""


def greedy_match(scores: np.ndarray, ious: np.ndarray, tau: float) -> np.ndarray:
    """The IoU of the GT each detection of one (image, class) group is matched to.

    Args:
        scores: Float[n], the detections' scores (the order of the matching).
        ious: Float[n, g], IoU of each detection with each GT instance of the group.
        tau: the TP threshold: a match needs IoU >= tau (tau > 0).

    Returns:
        Float[n]: the matched GT's IoU (>= tau) for a true positive, 0 for a false positive.
    """
    scores = np.asarray(scores, dtype=np.float64)
    ious = np.asarray(ious, dtype=np.float64).reshape(len(scores), -1)
    if not tau > 0:
        raise ValueError(f"greedy_match: the TP threshold tau must be > 0, got {tau}")
    out = np.zeros(len(scores))
    free = np.ones(ious.shape[1], dtype=bool)
    for d in np.argsort(-scores, kind="stable"):
        cand = np.where(free & (ious[d] >= tau), ious[d], -1.0)
        if cand.max(initial=-1.0) < 0:
            continue
        g = len(cand) - 1 - int(np.argmax(cand[::-1]))  # the last of equal best IoUs
        free[g] = False
        out[d] = ious[d, g]
    return out


def match_all(scores: np.ndarray, groups: Sequence[IoUGroup], tau: float) -> np.ndarray:
    """:func:`greedy_match` of every (image, class) group of a split.

    Args:
        scores: Float[N], the score of every detection.
        groups: the groups with at least one GT (detections outside every group overlap no GT of
            their class in their image: false positives).
        tau: the TP threshold.

    Returns:
        Float[N]: matched IoU per detection, 0 for a false positive.
    """
    scores = np.asarray(scores, dtype=np.float64)
    out = np.zeros(len(scores))
    for index, ious in groups:
        out[index] = greedy_match(scores[index], ious, tau)
    return out
