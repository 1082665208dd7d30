"""MaskIoU regression targets: the IoU of the whole instance, computed on the RoI grid.

The predicted mask lives on an M x M grid over its proposal box; the ground truth is projected on
the same grid exactly as torchvision's mask loss does (``roi_align`` of the full-image GT mask).
The part of the GT mask that lies outside the box cannot be seen on the grid, but it belongs to
the instance, so it is added to the union (the paper's "area ratio"): its pixel count comes from
an integral image of the GT mask and is converted to grid cells with the box's cells-per-pixel
scale. Everything is batched on the inputs' device: no loop over RoIs, no host transfer.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import roi_align


def _integral_images(masks: Tensor) -> Tensor:
    """Tensor[G, H, W] (any dtype, nonzero = inside) -> Tensor[G, H + 1, W + 1] int32 sums."""
    g, h, w = masks.shape
    out = torch.zeros((g, h + 1, w + 1), dtype=torch.int32, device=masks.device)
    out[:, 1:, 1:] = (masks != 0).cumsum(1, dtype=torch.int32)
    out.cumsum_(2)  # in place: one full-resolution int32 copy per mask, not three
    return out


def gt_area_in_boxes(gt_masks: Tensor, boxes: Tensor, gt_idxs: Tensor) -> tuple[Tensor, Tensor]:
    """Pixel area of each box's matched GT mask, inside the box and in total.

    Args:
        gt_masks: Tensor[G, H, W], uint8/bool/float, full-image masks.
        boxes: Tensor[N, 4], float (x1, y1, x2, y2) in pixels; rounded to whole pixels.
        gt_idxs: Tensor[N], int64, index into ``gt_masks`` for each box.

    Returns:
        (inside, total): two Tensor[N], float32.
    """
    _, h, w = gt_masks.shape
    used, local = torch.unique(gt_idxs, return_inverse=True)
    sums = _integral_images(gt_masks[used]).flatten(1)  # [U, (H+1)(W+1)]
    b = boxes.detach().round().to(torch.int64)
    x1 = b[:, 0].clamp(0, w)
    y1 = b[:, 1].clamp(0, h)
    x2 = torch.maximum(b[:, 2].clamp(0, w), x1)
    y2 = torch.maximum(b[:, 3].clamp(0, h), y1)

    def at(y: Tensor, x: Tensor) -> Tensor:
        return sums[local, y * (w + 1) + x]

    inside = at(y2, x2) - at(y1, x2) - at(y2, x1) + at(y1, x1)
    total = sums[local, -1]
    return inside.float(), total.float()


def project_masks(gt_masks: Tensor, boxes: Tensor, gt_idxs: Tensor, size: int) -> Tensor:
    """GT masks resampled on each box's size x size grid, as torchvision's mask loss does.

    Args:
        gt_masks: Tensor[G, H, W], full-image masks.
        boxes: Tensor[N, 4], float (x1, y1, x2, y2) in pixels.
        gt_idxs: Tensor[N], int64, index into ``gt_masks``.
        size: M.

    Returns:
        Tensor[N, M, M], float in [0, 1].
    """
    idx = gt_idxs.to(device=boxes.device, dtype=boxes.dtype)
    rois = torch.cat([idx[:, None], boxes], dim=1)
    return roi_align(gt_masks[:, None].to(boxes.dtype), rois, (size, size), 1.0)[:, 0]


@torch.no_grad()
def mask_iou_targets(
    mask_logits: Tensor, proposals: Tensor, gt_masks: Tensor, matched_idxs: Tensor
) -> Tensor:
    """Full-instance IoU between each binarized predicted mask and its matched GT mask.

    Args:
        mask_logits: Tensor[N, M, M], float, logits of the GT class (binarized at logit > 0,
            i.e. probability > 0.5).
        proposals: Tensor[N, 4], float (x1, y1, x2, y2) in image pixels.
        gt_masks: Tensor[G, H, W], full-image GT masks (uint8, bool or float).
        matched_idxs: Tensor[N], int64, the GT index of each proposal.

    Returns:
        Tensor[N], float32 in [0, 1].
    """
    n, m = mask_logits.shape[0], mask_logits.shape[-1]
    device = mask_logits.device
    if n == 0:
        return torch.zeros(0, dtype=torch.float32, device=device)
    boxes = proposals.detach().float()
    idx = matched_idxs.to(device=device, dtype=torch.int64)
    gt_grid = project_masks(gt_masks, boxes, idx, m) >= 0.5
    pred = mask_logits.detach() > 0

    inter = (pred & gt_grid).sum((1, 2)).float()
    pred_area = pred.sum((1, 2)).float()
    gt_in_grid = gt_grid.sum((1, 2)).float()

    inside, total = gt_area_in_boxes(gt_masks, boxes, idx)
    box_area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=1e-6)
    cells_per_pixel = (m * m) / box_area
    gt_outside_grid = (total - inside).clamp(min=0) * cells_per_pixel

    union = pred_area + gt_in_grid + gt_outside_grid - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1e-6), torch.zeros_like(union))
    return iou.clamp(0.0, 1.0)


def mask_iou_targets_reference(
    mask_logits: Tensor, proposals: Tensor, gt_masks: Tensor, matched_idxs: Tensor
) -> Tensor:
    """The same targets computed one RoI at a time on the CPU, the way public ports do.

    Slow on purpose: it is the reference the vectorized version is checked and timed against.
    Shapes as in :func:`mask_iou_targets`.
    """
    m = mask_logits.shape[-1]
    out = []
    masks = gt_masks.cpu()
    h, w = masks.shape[-2:]
    for logits, box, g in zip(mask_logits.cpu(), proposals.cpu().float(), matched_idxs.cpu()):
        gt = masks[int(g)]
        proj = project_masks(gt[None], box[None], torch.zeros(1, dtype=torch.int64), m)[0] >= 0.5
        pred = logits > 0
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        x1, y1 = min(max(x1, 0), w), min(max(y1, 0), h)
        x2, y2 = max(min(max(x2, 0), w), x1), max(min(max(y2, 0), h), y1)
        total = float((gt != 0).sum())
        inside = float((gt[y1:y2, x1:x2] != 0).sum())
        box_area = max(float((box[2] - box[0]) * (box[3] - box[1])), 1e-6)
        inter = float((pred & proj).sum())
        union = float(pred.sum()) + float(proj.sum()) + (total - inside) * m * m / box_area - inter
        out.append(inter / union if union > 0 else 0.0)
    return torch.tensor(out, dtype=torch.float32).clamp(0.0, 1.0)
