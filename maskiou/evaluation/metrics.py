"""Pure functions over detection arrays: the three scorings, correlation and calibration."""

from __future__ import annotations

import numpy as np
from scipy import stats

SCORINGS = ("cls", "rescored", "oracle")


def scorings(cls_scores: np.ndarray, pred_ious: np.ndarray, true_ious: np.ndarray
             ) -> dict[str, np.ndarray]:
    """The three scores of the same detections (paper table 7).

    Args:
        cls_scores, pred_ious, true_ious: float arrays [N].

    Returns:
        ``cls``: the classification score (Mask R-CNN); ``rescored``: cls x predicted MaskIoU
        (MS R-CNN); ``oracle``: cls x true MaskIoU where the true MaskIoU is > 0, else
        cls x predicted MaskIoU, so unmatched false positives are not promoted above matched
        ones.
    """
    pred = np.clip(pred_ious, 0.0, 1.0)
    oracle_iou = np.where(true_ious > 0, true_ious, pred)
    return {"cls": cls_scores, "rescored": cls_scores * pred, "oracle": cls_scores * oracle_iou}


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN when fewer than 2 points or a constant input."""
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation; NaN when undefined."""
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(stats.spearmanr(x, y).statistic)


def expected_calibration_error(scores: np.ndarray, truth: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error of a score in [0, 1] against a quality in [0, 1].

    Detections are put in ``bins`` equal-width score bins; the ECE is the count-weighted mean of
    ``|mean score - mean truth|`` over the bins. A perfectly calibrated score gives 0.
    """
    scores = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    truth = np.asarray(truth, dtype=np.float64)
    if len(scores) == 0:
        return float("nan")
    idx = np.minimum((scores * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            total += sel.sum() * abs(scores[sel].mean() - truth[sel].mean())
    return float(total / len(scores))


def binned_means(truth: np.ndarray, scores: np.ndarray, bins: int = 10
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean score per true-MaskIoU bin (paper figure 2c).

    Returns:
        (bin centres [bins], mean score per bin [bins] (NaN where empty), count per bin [bins]).
    """
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.minimum((np.clip(truth, 0, 1) * bins).astype(int), bins - 1)
    means = np.full(bins, np.nan)
    counts = np.bincount(idx, minlength=bins)
    for b in range(bins):
        if counts[b]:
            means[b] = scores[idx == b].mean()
    return (edges[:-1] + edges[1:]) / 2, means, counts


def correlation_summary(cls_scores: np.ndarray, pred_ious: np.ndarray, true_ious: np.ndarray
                        ) -> dict[str, float]:
    """Pearson/Spearman of predicted vs true MaskIoU, Pearson of the classification score, and
    the ECE of the classification and rescored scores against the true MaskIoU. ``*_matched``:
    the same correlations over the detections that overlap a GT of their class (true > 0)."""
    rescored = cls_scores * np.clip(pred_ious, 0, 1)
    m = true_ious > 0
    return {
        "pearson_matched": pearson(pred_ious[m], true_ious[m]),
        "cls_pearson_matched": pearson(cls_scores[m], true_ious[m]),
        "matched_fraction": float(m.mean()) if len(m) else float("nan"),
        "pearson": pearson(pred_ious, true_ious),
        "spearman": spearman(pred_ious, true_ious),
        "cls_pearson": pearson(cls_scores, true_ious),
        "cls_spearman": spearman(cls_scores, true_ious),
        "ece_cls": expected_calibration_error(cls_scores, true_ious),
        "ece_rescored": expected_calibration_error(rescored, true_ious),
    }
