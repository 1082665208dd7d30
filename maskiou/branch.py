"""The MaskIoU branch as two functions an adapter calls: one for training, one for inference.

An adapter only has to find, in its detector, the RoI features of the mask branch, the mask
logits, and (in training) the proposals with their labels, GT masks and matched GT indices. The
rest is here, shared by every detector family.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .head import MaskIoUHead
from .loss import mask_iou_loss, select_class
from .targets import mask_iou_targets


@dataclass
class MaskIoUConfig:
    """Behaviour of an attached head (not its architecture: that is the head's own arguments).

    Attributes:
        rescore_outputs: replace each detection's ``scores`` by cls score x predicted IoU.
        loss_weight: weight of ``loss_maskiou``.
        detach_inputs: stop the MaskIoU loss from flowing into the RoI features and the mask
            branch (the paper trains end to end, so the default is False).
        freeze_detector: only the head trains (set by ``attach_maskiou_head``).
    """

    rescore_outputs: bool = True
    loss_weight: float = 1.0
    detach_inputs: bool = False
    freeze_detector: bool = False


def select_masks(mask_logits: Tensor, labels: Tensor) -> Tensor:
    """The mask of one class per RoI.

    Args:
        mask_logits: Tensor[N, K, M, M]; K == 1 for a class-agnostic mask predictor.
        labels: Tensor[N], int64.

    Returns:
        Tensor[N, M, M].
    """
    if mask_logits.shape[1] == 1:
        return mask_logits[:, 0]
    return select_class(mask_logits, labels)


def maskiou_training_loss(
    head: MaskIoUHead,
    roi_features: Tensor,
    mask_logits: Tensor,
    labels: list[Tensor],
    proposals: list[Tensor],
    gt_masks: list[Tensor],
    matched_idxs: list[Tensor],
    config: MaskIoUConfig | None = None,
) -> Tensor:
    """``loss_maskiou`` for a batch of positive RoIs (the RoIs of the mask loss).

    Args:
        head: the MaskIoU head.
        roi_features: Tensor[N, C, S, S], RoI features of all images, concatenated in image order.
        mask_logits: Tensor[N, K, M, M], the mask predictor's output for the same RoIs.
        labels: per image, Tensor[n_i] int64, GT class of each RoI (sum n_i == N).
        proposals: per image, Tensor[n_i, 4], boxes (x1, y1, x2, y2) in pixels.
        gt_masks: per image, Tensor[G_i, H, W], full-image GT masks.
        matched_idxs: per image, Tensor[n_i] int64, index into that image's ``gt_masks``.
        config: behaviour; defaults to :class:`MaskIoUConfig()`.

    Returns:
        Scalar tensor; exactly 0 (in the graph) when no RoI has a positive target.
    """
    config = config or MaskIoUConfig()
    all_labels = torch.cat(labels) if labels else mask_logits.new_zeros(0, dtype=torch.int64)
    logits = select_masks(mask_logits, all_labels)
    targets = [
        mask_iou_targets(lg, p, g, m)
        for lg, p, g, m in zip(logits.split([len(x) for x in labels]), proposals, gt_masks,
                               matched_idxs)
    ]
    target = torch.cat(targets) if targets else logits.new_zeros(0)
    probs = logits.sigmoid()
    if config.detach_inputs:
        roi_features, probs = roi_features.detach(), probs.detach()
    pred = head(roi_features, probs)
    return mask_iou_loss(pred, all_labels, target, config.loss_weight)


def maskiou_inference(
    head: MaskIoUHead, roi_features: Tensor, mask_logits: Tensor, labels: list[Tensor]
) -> list[Tensor]:
    """Predicted MaskIoU of each detection's predicted class.

    Args:
        head: the MaskIoU head.
        roi_features: Tensor[N, C, S, S], RoI features of the final detections of all images.
        mask_logits: Tensor[N, K, M, M], their mask logits.
        labels: per image, Tensor[n_i] int64, the predicted classes.

    Returns:
        Per image, Tensor[n_i] float32 in [0, 1].
    """
    all_labels = torch.cat(labels) if labels else mask_logits.new_zeros(0, dtype=torch.int64)
    probs = select_masks(mask_logits, all_labels).sigmoid()
    ious = select_class(head(roi_features, probs), all_labels).float().clamp(0.0, 1.0)
    return list(ious.split([len(x) for x in labels]))
