"""The masks worth keeping: each class's LRP-optimal threshold of the final score, fitted by
the add-on on its held-out detections and stored in the head
(``ScoreCalibration.class_thresholds``), applied to a model's outputs."""

from typing import Dict, List

import torch
from torch import Tensor, nn

from .attach import find_maskiou_head


def keep_worth(result: Dict[str, Tensor], thresholds: Tensor) -> Dict[str, Tensor]:
    """One image's detections (a detector output dict: ``scores``, ``labels`` Tensor[n] and
    other Tensor[n, ...] fields) whose score is at least its label's threshold
    (``thresholds`` Tensor[num_labels]); a new dict, every per-detection field filtered, the
    order kept. TorchScript-able."""
    n = result["scores"].shape[0]
    keep = result["scores"] >= thresholds.to(result["scores"].dtype)[result["labels"]]
    out: Dict[str, Tensor] = {}
    for key, value in result.items():
        out[key] = value[keep] if value.dim() > 0 and value.shape[0] == n else value
    return out


def stored_thresholds(model: nn.Module) -> Tensor | None:
    """The thresholds in ``model``'s MaskIoU head (Tensor[num_labels]), eager or scripted (a
    scripted model's head is found by its calibration's buffer), or None without a head."""
    head = find_maskiou_head(model)
    if head is not None:
        return head.calibration.class_thresholds
    for name, buffer in model.named_buffers():
        if name.endswith("maskiou_head.calibration.class_thresholds"):
            return buffer
    return None


def kept(outputs: List[Dict[str, Tensor]], model: nn.Module) -> List[Dict[str, Tensor]]:
    """``model(images)``'s outputs with only the masks worth keeping (see :func:`keep_worth`),
    by the thresholds stored in the model's MaskIoU head (a model whose add-on fitted none
    keeps every mask)."""
    thresholds = stored_thresholds(model)
    if thresholds is None:
        raise ValueError("kept: the model has no MaskIoU head, so no thresholds")
    with torch.no_grad():
        return [keep_worth(r, thresholds) for r in outputs]
