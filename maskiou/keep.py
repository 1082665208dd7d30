"""The masks worth keeping: a threshold of the final score per label, stored in the head
(``ScoreCalibration.class_thresholds``) and applied to a model's outputs. The add-on fits one
LRP-optimal value for every class on its held-out detections
(:func:`maskiou.quality.lrp.common_threshold`); any per-label values work.

Two ways to use them:

- the model's own switch, :func:`set_keep` (or ``attach_maskiou_head(..., keep="worth")``):
  ``model(images)`` then returns only the kept masks, filtered inside its forward as tensor
  operations, so a scripted or ONNX-exported model does the same. The switch is a buffer of
  the head (``calibration.keep_worth_only``): it is saved in the state dict and scripted with
  the model. Default ``"all"``: outputs as without it;
- afterwards, :func:`kept` on outputs (torchvision's dicts and maskiou's records, detectron2's
  ``[{"instances": Instances}]``, ultralytics' ``Results``).
"""

from typing import Any, Dict, List

import torch
from torch import Tensor, nn

from .attach import find_maskiou_head
from .configs import KEEP_CHOICES


def worth(scores: Tensor, labels: Tensor, thresholds: Tensor) -> Tensor:
    """Whether each score (Tensor[n]) is at least its label's threshold (``labels`` Tensor[n]
    int64 indexing ``thresholds`` Tensor[num_labels]): Tensor[n] bool."""
    return scores >= thresholds.to(scores.dtype)[labels]


def worth_rows(scores: Tensor, labels: Tensor, thresholds: Tensor) -> Tensor:
    """The rows :func:`worth` keeps: Tensor[k] int64, in order. TorchScript-able and exported
    to ONNX as Gather, GreaterOrEqual and NonZero."""
    return torch.where(worth(scores, labels, thresholds))[0]


def select_rows(result: Dict[str, Tensor], rows: Tensor) -> Dict[str, Tensor]:
    """A new dict: every per-detection field of ``result`` (a Tensor[n, ...] with n the length
    of ``result["scores"]``) at ``rows`` (Tensor[k] int64), every other field as it is."""
    n = result["scores"].shape[0]
    out: Dict[str, Tensor] = {}
    for key, value in result.items():
        out[key] = value[rows] if value.dim() > 0 and value.shape[0] == n else value
    return out


def keep_worth(result: Dict[str, Tensor], thresholds: Tensor) -> Dict[str, Tensor]:
    """One image's detections (a detector output dict: ``scores``, ``labels`` Tensor[n] and
    other Tensor[n, ...] fields) whose score is at least its label's threshold
    (``thresholds`` Tensor[num_labels]); a new dict, every per-detection field filtered, the
    order kept. TorchScript-able."""
    return select_rows(result, worth_rows(result["scores"], result["labels"], thresholds))


def keep_as_switched(result: Dict[str, Tensor], thresholds: Tensor, worth_only: Tensor
                     ) -> Dict[str, Tensor]:
    """:func:`keep_worth` where ``worth_only`` (Tensor[] bool, the head's
    ``calibration.keep_worth_only``) is true, else every detection (the same values, bit for
    bit). No Python branch on a tensor: the same graph scripts and exports to ONNX, and the
    switch can change after scripting. The adapters call it in the model's forward."""
    return select_rows(result, switched_rows(result["scores"], result["labels"], thresholds,
                                             worth_only))


def switched_rows(scores: Tensor, labels: Tensor, thresholds: Tensor, worth_only: Tensor
                  ) -> Tensor:
    """The rows the switch keeps (Tensor[k] int64, in order): :func:`worth_rows` where
    ``worth_only`` (Tensor[] bool) is true, else every row; no Python branch on a tensor."""
    return torch.where(worth(scores, labels, thresholds) | ~worth_only)[0]


def set_keep(model: nn.Module, keep: str) -> nn.Module:
    """The model's own switch: with ``keep="worth"``, ``model(images)`` (eager, scripted after
    this call, or exported to ONNX after it) returns only the masks worth keeping, those whose
    final score is at least their class's stored threshold; ``"all"`` (the default of
    ``attach_maskiou_head``) returns every detection. Stored in the head's state dict, so a
    checkpoint keeps it. Needs the head's rescoring (``rescore_outputs``, on by default): the
    thresholds are of the final score. Returns ``model``.

    A model whose add-on fitted no thresholds keeps every mask either way. (ultralytics'
    ``YOLO`` predicts with a copy of its model made when its predictor is set up: set
    ``yolo.predictor = None`` after switching, as after any change to the model.)"""
    if keep not in KEEP_CHOICES:
        raise ValueError(f"set_keep: keep must be one of {', '.join(KEEP_CHOICES)}, got "
                         f"{keep!r}")
    head = find_maskiou_head(model)
    if head is None:
        raise ValueError("set_keep: the model has no MaskIoU head (attach_maskiou_head)")
    holders = [m for m in model.modules() if getattr(m, "maskiou_head", None) is head]
    if keep == "worth" and any(not getattr(m, "maskiou_rescore", True) for m in holders):
        raise ValueError("set_keep: 'worth' needs the head's rescoring (this model was "
                         "attached with rescore_outputs=False; the thresholds are of the "
                         "final score)")
    head.calibration.keep_worth_only.fill_(keep == "worth")
    return model


def keep_setting(model: nn.Module) -> str:
    """The model's switch (:func:`set_keep`): ``"worth"`` or ``"all"``."""
    head = find_maskiou_head(model)
    if head is None:
        raise ValueError("keep_setting: the model has no MaskIoU head (attach_maskiou_head)")
    return "worth" if bool(head.calibration.keep_worth_only) else "all"


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


_RESULTS_FIELDS = ("cls_scores", "mask_quality", "maskness")  # maskiou's fields on Results


def _kept_one(out: Any, thresholds: Tensor) -> Any:
    """One image's output of any supported kind, only its masks worth keeping."""
    if isinstance(out, dict) and "instances" in out:  # detectron2: labels are classes + 1
        inst = out["instances"]
        rows = worth_rows(inst.scores, inst.pred_classes.long() + 1, thresholds.to(
            inst.scores.device))
        return {**out, "instances": inst[rows]}
    if isinstance(out, dict) and "scores" in out and "labels" in out:
        return keep_worth(out, thresholds.to(out["scores"].device))
    boxes = getattr(out, "boxes", None)  # ultralytics' Results: YOLO class k is label k + 1
    if boxes is not None and hasattr(boxes, "conf") and hasattr(boxes, "cls"):
        rows = worth_rows(boxes.conf, boxes.cls.long() + 1, thresholds.to(boxes.conf.device))
        kept_result = out[rows]
        for name in _RESULTS_FIELDS:  # Results' indexing drops attributes it does not know
            value = getattr(out, name, None)
            if value is not None:
                setattr(kept_result, name, value[rows])
        return kept_result
    raise TypeError(f"kept: an output of type {type(out).__name__} is none of a detection dict "
                    "(scores, labels), detectron2's {'instances': Instances} or ultralytics' "
                    "Results")


def kept(outputs: List[Any], model: nn.Module) -> List[Any]:
    """``model(images)``'s outputs with only the masks worth keeping (see :func:`keep_worth`),
    by the thresholds stored in the model's MaskIoU head (a model whose add-on fitted none
    keeps every mask). Per image: a detection dict (torchvision's, maskiou's records),
    detectron2's ``{"instances": Instances}`` (``pred_classes`` c is label c + 1) or
    ultralytics' ``Results`` (``boxes.cls`` k is label k + 1; ``boxes.conf`` the final score;
    ``cls_scores``, ``mask_quality`` and ``maskness`` kept with their rows)."""
    thresholds = stored_thresholds(model)
    if thresholds is None:
        raise ValueError("kept: the model has no MaskIoU head, so no thresholds")
    with torch.no_grad():
        return [_kept_one(r, thresholds) for r in outputs]
