"""The MaskIoU regression loss (paper section 3.2: L2, loss weight 1)."""

import torch
from torch import Tensor


def select_class(per_class: Tensor, labels: Tensor) -> Tensor:
    """Pick one column per row: Tensor[N, C] and Tensor[N] (int64) -> Tensor[N]."""
    idx = torch.arange(per_class.shape[0], device=per_class.device)  # pragma: no mutate (device)
    return per_class[idx, labels.to(per_class.device, torch.int64)]  # pragma: no mutate (device)


def mask_iou_loss(
    pred_ious: Tensor, labels: Tensor, targets: Tensor, weight: float = 1.0
) -> Tensor:
    """Mean squared error between predicted and target MaskIoU on the GT-class channel.

    Only RoIs with a positive target count: a predicted mask with no overlap at all carries no
    information about mask quality (paper table 6 keeps every sample with IoU > 0).

    Args:
        pred_ious: Tensor[N, C], float, the head's raw outputs.
        labels: Tensor[N], int64, GT class of each RoI.
        targets: Tensor[N], float, target IoUs from :func:`maskiou.mask_iou_targets`.
        weight: loss weight.

    Returns:
        Scalar tensor. With no RoI whose target is > 0 it is an exact 0 that still belongs to
        the autograd graph of ``pred_ious``.
    """
    keep = (targets > 0).float()  # a mask instead of indexing: no host sync on the GPU
    pred = select_class(pred_ious, labels).float()
    sq = (pred - targets.float()) ** 2 * keep
    return weight * sq.sum() / keep.sum().clamp(min=1.0)
