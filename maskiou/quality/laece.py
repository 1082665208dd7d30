"""Localisation-aware expected calibration error (LaECE, Oksuz et al., CVPR 2023), for masks.

A score is calibrated in this sense when, among the detections of a class that it scores ``p``,
precision x mean IoU of the true positives is ``p``. Per class ``c`` the detections are put in
``num_bins`` equal-width score bins over [0, 1]; in bin ``j`` the target is

    precision_j x mean TP IoU_j = (sum of the TPs' IoUs in the bin) / (detections in the bin)

(a false positive adds 0), and the class's error is the detection-weighted mean gap

    LaECE_c = sum_j (|bin_j| / N_c) x |mean score in bin_j - target_j|.

LaECE is the mean of LaECE_c over the classes with at least one detection. Pure numpy; the TPs
and their IoUs come from :func:`maskiou.quality.matching.match_all`.
"""

from __future__ import annotations

import numpy as np

NUM_BINS = 25  # the paper's


def score_bins(scores: np.ndarray, num_bins: int = NUM_BINS) -> np.ndarray:
    """The equal-width bin of each score in [0, 1] (clipped): Int[n] in [0, num_bins); a score
    of exactly 1 is in the last bin."""
    s = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    return np.minimum((s * num_bins).astype(np.int64), num_bins - 1)


def class_laece(scores: np.ndarray, matched_iou: np.ndarray, num_bins: int = NUM_BINS) -> float:
    """LaECE of one class's detections.

    Args:
        scores: Float[n] in [0, 1] (clipped).
        matched_iou: Float[n], the IoU of each detection's matched GT, 0 for a false positive.

    Returns:
        The class's error in [0, 1]; NaN for no detections.
    """
    s = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    q = np.asarray(matched_iou, dtype=np.float64)
    if len(s) != len(q):
        raise ValueError(f"class_laece: {len(s)} scores but {len(q)} matched IoUs")
    if len(s) == 0:
        return float("nan")
    idx = score_bins(s, num_bins)
    count = np.bincount(idx, minlength=num_bins).astype(np.float64)
    score_sum = np.bincount(idx, weights=s, minlength=num_bins)
    iou_sum = np.bincount(idx, weights=q, minlength=num_bins)
    # |bin| / N x |score_sum / |bin| - iou_sum / |bin|| = |score_sum - iou_sum| / N
    return float(np.abs(score_sum - iou_sum)[count > 0].sum() / len(s))


def laece(scores: np.ndarray, labels: np.ndarray, matched_iou: np.ndarray,
          num_bins: int = NUM_BINS) -> tuple[float, dict[int, float]]:
    """LaECE over classes.

    Args:
        scores: Float[N] in [0, 1] (clipped).
        labels: Int[N], each detection's class.
        matched_iou: Float[N], matched GT IoU per detection, 0 for a false positive.

    Returns:
        (the mean over the classes that have detections (NaN for none), ``{class: LaECE_c}``).
    """
    labels = np.asarray(labels)
    per_class = {int(c): class_laece(np.asarray(scores)[labels == c],
                                     np.asarray(matched_iou)[labels == c], num_bins)
                 for c in np.unique(labels)}
    mean = float(np.mean(list(per_class.values()))) if per_class else float("nan")
    return mean, per_class


def reliability_bins(scores: np.ndarray, matched_iou: np.ndarray, num_bins: int = NUM_BINS
                     ) -> list[dict[str, float]]:
    """The reliability diagram LaECE reads, all classes pooled: per equal-width score bin with
    detections, the mean score (``score``), the target precision x mean TP IoU (``truth``: the
    sum of matched IoUs over the detections in the bin) and ``count``."""
    s = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    q = np.asarray(matched_iou, dtype=np.float64)
    idx = score_bins(s, num_bins)
    return [{"score": float(s[idx == b].mean()), "truth": float(q[idx == b].mean()),
             "count": int((idx == b).sum())} for b in range(num_bins) if (idx == b).any()]
