"""Where the learned score matters: the images whose ranking it fixes most.

For the demo's first screen the benchmark ranks the validation images by how much the learned
score repairs the order of their detections: a pair of detections counts when their true
MaskIoUs differ by at least ``min_gap``, the classification score orders them the wrong way
round and the learned score the right way; it weighs the gap in true MaskIoU.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def fixed_pairs(cls: np.ndarray, learned: np.ndarray, true: np.ndarray, min_gap: float = 0.3
                ) -> tuple[int, float]:
    """(number of pairs the learned score puts right, their summed true-MaskIoU gap) for the
    detections of one image (arrays [n])."""
    gap = true[:, None] - true[None, :]  # > 0: i is the better mask
    wrong_by_cls = (cls[:, None] < cls[None, :]) & (gap >= min_gap)
    right_by_learned = learned[:, None] > learned[None, :]
    fixed = wrong_by_cls & right_by_learned
    return int(fixed.sum()), float(gap[fixed].sum())


def rank_change_gallery(image_ids: np.ndarray, cls: np.ndarray, learned: np.ndarray,
                        true: np.ndarray, k: int = 8, min_gap: float = 0.3
                        ) -> list[dict[str, Any]]:
    """The ``k`` images whose within-image order the learned score fixes most (summed gap,
    then pair count), best first: ``[{"image_id", "fixed_pairs", "fixed_gap"}]``; images it
    fixes nothing in are left out."""
    rows = []
    for image_id in np.unique(image_ids):
        sel = image_ids == image_id
        n, g = fixed_pairs(cls[sel], learned[sel], true[sel], min_gap)
        if n:
            rows.append({"image_id": int(image_id), "fixed_pairs": n, "fixed_gap": round(g, 4)})
    rows.sort(key=lambda r: (-r["fixed_gap"], -r["fixed_pairs"], r["image_id"]))
    return rows[:k]
