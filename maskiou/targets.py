"""MaskIoU regression targets: the IoU of the whole instance, computed on the RoI grid.

The predicted mask lives on an M x M grid over its proposal box; the ground truth is projected on
the same grid exactly as torchvision's mask loss does (``roi_align`` of the full-image GT mask).
The part of the GT mask that lies outside the box cannot be seen on the grid, but it belongs to
the instance, so it is added to the union (the paper's "area ratio"): its pixel count comes from
an integral image of the GT mask and is converted to grid cells with the box's cells-per-pixel
scale. Everything is batched on the inputs' device: no loop over RoIs, no host transfer.
"""

from typing import Tuple

import torch
from torch import Tensor
from torchvision.ops import roi_align


def gt_area_in_boxes(gt_masks: Tensor, boxes: Tensor, gt_idxs: Tensor) -> Tuple[Tensor, Tensor]:
    """Pixel area of each box's matched GT mask, inside the box and in total.

    One pass over the masks: a cumulative sum along each row (float32, exact for rows shorter
    than 2**24 pixels), then, per box, the row sums between its two columns are gathered
    (Tensor[N, H]) and added over its rows. No integral image, no loop over boxes.

    Args:
        gt_masks: Tensor[G, H, W], binary (0/1) uint8/bool/float, full-image masks.
        boxes: Tensor[N, 4], float (x1, y1, x2, y2) in pixels; rounded to whole pixels.
        gt_idxs: Tensor[N], int64, index into ``gt_masks`` for each box.

    Returns:
        (inside, total): two Tensor[N], float32.
    """
    used, local = torch.unique(gt_idxs, return_inverse=True)
    return _areas(gt_masks[used].float(), boxes, local)


def _areas(masks: Tensor, boxes: Tensor, idxs: Tensor) -> Tuple[Tensor, Tensor]:
    """:func:`gt_area_in_boxes` on float32 masks that ``idxs`` index directly."""
    _, h, w = masks.shape
    rows = masks.new_zeros((len(masks), h, w + 1))  # float32, on the masks' device
    torch.cumsum(masks, dim=2, out=rows[:, :, 1:])
    b = boxes.detach().round().to(torch.int64)
    # Columns index the cumulative sums, so they are clamped to [0, W] (a box left of the
    # image gets x2 = x1); rows are only compared with, so they need no clamp.
    x1 = b[:, 0].clamp(0, w)
    x2 = torch.maximum(b[:, 2].clamp(max=w), x1)
    y1, y2 = b[:, 1], b[:, 3]
    ys = torch.arange(h, device=rows.device)  # pragma: no mutate (device: CPU-only here)
    i = idxs[:, None]
    per_row = rows[i, ys[None], x2[:, None]] - rows[i, ys[None], x1[:, None]]  # [N, H]
    in_rows = (ys[None] >= y1[:, None]) & (ys[None] < y2[:, None])
    inside = (per_row * in_rows).sum(1)
    total = rows[:, :, -1].sum(1)[idxs]
    return inside, total


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
    rois = torch.cat([gt_idxs.to(boxes)[:, None], boxes], dim=1)  # pragma: no mutate (cat promotes)
    return roi_align(gt_masks[:, None].to(boxes), rois, (size, size))[:, 0]


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
    m = mask_logits.shape[-1]  # pragma: no mutate (a square grid: shape[-2] is the same)
    boxes = proposals.detach().float()
    idx = matched_idxs.to(mask_logits.device)  # pragma: no mutate (device: CPU-only here)
    # one float copy of the GT masks these RoIs use, shared by the projection and the areas
    used, local = torch.unique(idx, return_inverse=True)
    masks = gt_masks[used].float()
    gt_grid = project_masks(masks, boxes, local, m) >= 0.5
    pred = mask_logits.detach() > 0

    inter = (pred & gt_grid).sum((1, 2)).float()
    pred_area = pred.sum((1, 2)).float()
    gt_in_grid = gt_grid.sum((1, 2)).float()

    inside, total = _areas(masks, boxes, local)
    box_area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=1e-6)
    cells_per_pixel = (m * m) / box_area
    gt_outside_grid = (total - inside).clamp(min=0) * cells_per_pixel

    union = pred_area + gt_in_grid + gt_outside_grid - inter
    # inter <= union, and inter is a whole number of cells: where it is >= 1 so is the union,
    # where the union is below 1 inter is 0 and so is the IoU (never NaN)
    return inter / union.clamp(min=1.0)
