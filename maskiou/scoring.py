"""Rescoring: classification confidence x predicted mask IoU (paper section 3.3)."""

from __future__ import annotations

import torch
from torch import Tensor


def rescore(cls_scores: Tensor, mask_ious: Tensor) -> Tensor:
    """``cls_scores * clamp(mask_ious, 0, 1)``; both Tensor[N] -> Tensor[N]."""
    return cls_scores * mask_ious.clamp(0.0, 1.0).to(cls_scores.dtype)


def add_maskiou_outputs(
    result: dict[str, Tensor], mask_ious: Tensor, rescore_outputs: bool
) -> None:
    """Add ``cls_scores`` and ``mask_ious`` to one image's detections, in place.

    With ``rescore_outputs`` the ``scores`` become :func:`rescore` of the two and every
    per-detection field is re-sorted by the new score, highest first (as a detector's output is).

    Args:
        result: a detector output dict with ``scores`` Tensor[n] and other Tensor[n, ...] fields.
        mask_ious: Tensor[n], predicted IoU of each detection, in [0, 1].
    """
    cls_scores = result["scores"]
    result["cls_scores"] = cls_scores
    result["mask_ious"] = mask_ious
    if not rescore_outputs:
        return
    scores = rescore(cls_scores, mask_ious)
    order = torch.argsort(scores, descending=True, stable=True)
    n = len(scores)
    for key, value in list(result.items()):
        if isinstance(value, Tensor) and value.dim() > 0 and len(value) == n:
            result[key] = value[order]
    result["scores"] = scores[order]
