"""Pure functions over detection arrays: the three scorings, correlation and calibration."""

from __future__ import annotations

import numpy as np
from scipy import stats

SCORINGS = ("cls", "maskness", "rescored", "recalibrated", "oracle")
"""Every scoring of the same detections, in the order the tables show them."""


def scorings(cls_scores: np.ndarray, pred_ious: np.ndarray | None, maskness: np.ndarray,
             true_ious: np.ndarray, recalibrated: np.ndarray | None = None
             ) -> dict[str, np.ndarray]:
    """The scores each scoring gives the same detections (float arrays [N]).

    Returns:
        ``cls``: the classification score (Mask R-CNN); ``maskness``: cls x maskness, free
        (SOLOv2, Mask2Former); ``rescored``: cls x predicted MaskIoU (MS R-CNN; only with a
        head, ``pred_ious`` not None); ``recalibrated``: the recalibration model's score (only
        when given); ``oracle``: cls x true MaskIoU for every detection, 0 for one that overlaps
        no GT of its class (the paper's table 7 upper bound).
    """
    out = {"cls": cls_scores, "maskness": cls_scores * np.clip(maskness, 0.0, 1.0)}
    if pred_ious is not None:
        out["rescored"] = cls_scores * np.clip(pred_ious, 0.0, 1.0)
    if recalibrated is not None:
        out["recalibrated"] = np.asarray(recalibrated, dtype=np.float64)
    out["oracle"] = cls_scores * np.clip(true_ious, 0.0, 1.0)
    return out


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


def correlation_summary(cls_scores: np.ndarray, pred_ious: np.ndarray | None,
                        maskness: np.ndarray, true_ious: np.ndarray,
                        recalibrated: np.ndarray | None = None) -> dict[str, float]:
    """How well each signal predicts the true MaskIoU of the detections (the paper's figure 5).

    Pearson (and Spearman) of the head's predicted MaskIoU, the maskness and the classification
    score against the true MaskIoU, over all detections and (``*_matched``) over those that
    overlap a GT of their class (true > 0); the expected calibration error of each final score
    against the true MaskIoU.
    """
    m = true_ious > 0
    out: dict[str, float] = {"matched_fraction": float(m.mean()) if len(m) else float("nan")}
    signals = {"cls": cls_scores, "maskness": maskness}
    if pred_ious is not None:
        signals = {"head": pred_ious, **signals}
    for name, x in signals.items():
        out[f"{name}_pearson"] = pearson(x, true_ious)
        out[f"{name}_spearman"] = spearman(x, true_ious)
        out[f"{name}_pearson_matched"] = pearson(x[m], true_ious[m])
    finals = scorings(cls_scores, pred_ious, maskness, true_ious, recalibrated)
    for name, score in finals.items():
        if name != "oracle":
            out[f"ece_{name}"] = expected_calibration_error(score, true_ious)
    return out


def target_of(true_ious: np.ndarray, target: str) -> np.ndarray:
    """What a score of a head with ``target`` estimates, from the true MaskIoU Float[N]: the
    IoU itself (``"iou"``), or the share of COCO's thresholds it passes (``"coco"``); the same
    function the add-on trains on (:func:`maskiou.addon.fit.regression_target`)."""
    import torch

    from maskiou.addon.fit import regression_target

    truth = torch.as_tensor(np.asarray(true_ious, dtype=np.float32))
    return regression_target(truth, target).double().numpy()


def final_score_calibration(scores: np.ndarray, true_ious: np.ndarray, target: str,
                            bins: int = 10) -> dict[str, object]:
    """How well the final score estimates what it claims to (its head's ``target``, see
    :func:`target_of`): the expected calibration error and the reliability diagram (per
    equal-width score bin: mean score, mean truth, count; bins without detections left out)."""
    truth = target_of(true_ious, target)
    s = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    idx = np.minimum((s * bins).astype(int), bins - 1)
    rows = [{"score": float(s[idx == b].mean()), "truth": float(truth[idx == b].mean()),
             "count": int((idx == b).sum())} for b in range(bins) if (idx == b).any()]
    return {"target": target, "ece": expected_calibration_error(s, truth, bins),
            "bins": rows}
