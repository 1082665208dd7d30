"""What a detection's neighbours and its own mask say about it: signals for the final score
beyond the class score, the head's output and the maskness.

Pure tensor functions over one image's detections, scriptable with TorchScript and exportable to
ONNX (the calibration runs them inside the model's forward), and run unchanged by the add-on on
cached detections when it fits the recalibration, so the two never disagree.

- :func:`image_context` (Tensor[n, 4]): how a detection ranks among the detections of its image
  and how contested it is: the log of its class score over the image's best, the log of one
  plus its rank, and its largest box IoU with a higher-scored detection of its own class and of
  any class. A detector's NMS keeps near-duplicates below its IoU threshold and any overlap
  across classes: the lower-scored copy of a contested object is seldom the right one.
- :func:`uncontested` (Tensor[n]): 1 minus the largest box IoU with a higher-scored detection of
  the same class, the one of these the final score uses (the others were measured and did not
  help on both generators: docs/levers.md).
- :func:`mask_shape` (Tensor[n, 2]): the share of the box its mask fills, and how sharp the
  mask's probabilities are along its edge (the mean of ``|2p - 1|`` over the pixels within one
  pixel of the 0.5 contour: 1 for a mask that is certain where it ends, 0 for one that hesitates).
"""

import torch
import torch.nn.functional as F
from torch import Tensor

CONTEXT = ("gap", "rank", "overlap_same", "overlap_any")
SHAPE = ("fill", "edge_sharpness")


def box_iou(boxes: Tensor) -> Tensor:
    """Pairwise IoU of Tensor[n, 4] (x1, y1, x2, y2) boxes: Tensor[n, n]; 0 for empty boxes."""
    area = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    lt = torch.max(boxes[:, None, :2], boxes[None, :, :2])
    rb = torch.min(boxes[:, None, 2:], boxes[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area[:, None] + area[None, :] - inter
    return inter / union.clamp(min=1e-12)


def ranked_above(scores: Tensor) -> Tensor:
    """Tensor[n, n] bool: ``[i, j]`` where detection j ranks above detection i by ``scores``
    (a higher score, or the same score earlier in the detections' order), so that each
    detection's rank is its row's count. Pairwise, not a sort: a stable sort does not export
    to ONNX."""
    n = scores.shape[0]
    index = torch.arange(n, device=scores.device)
    higher = scores[None, :] > scores[:, None]
    tied_before = (scores[None, :] == scores[:, None]) & (index[None, :] < index[:, None])
    return higher | tied_before


def overlap_above(scores: Tensor, boxes: Tensor, labels: Tensor, same_class: bool) -> Tensor:
    """Tensor[n]: each detection's largest box IoU with a detection ranked above it (by
    ``scores``), of its own class with ``same_class``, else of any; 0 for the first."""
    s = scores if scores.dtype == torch.float64 else scores.float()
    if s.shape[0] == 0:
        return s
    mask = ranked_above(s).to(s.dtype)
    if same_class:
        mask = mask * (labels[:, None] == labels[None, :]).to(s.dtype)
    return (box_iou(boxes.to(s.dtype)) * mask).max(1)[0]


def uncontested(scores: Tensor, boxes: Tensor, labels: Tensor) -> Tensor:
    """1 - ``overlap_above`` of the same class: Tensor[n] in [0, 1] (1 for a detection no
    higher-scored detection of its class overlaps), one image's detections: scores Tensor[n],
    boxes Tensor[n, 4] (x1, y1, x2, y2), labels Tensor[n]."""
    return 1.0 - overlap_above(scores, boxes, labels, True)


def image_context(scores: Tensor, boxes: Tensor, labels: Tensor) -> Tensor:
    """The context signals of one image's n detections, in :data:`CONTEXT` order.

    Args:
        scores: Tensor[n], the detector's class score.
        boxes: Tensor[n, 4], (x1, y1, x2, y2) in the image's pixels.
        labels: Tensor[n] int64, predicted classes.

    Returns:
        Tensor[n, 4] (float64 for float64 scores, else float32): ``log(score / max score)``
        (clipped at 1e-4), ``log(1 + rank)`` (rank 0 is the image's highest class score, ties
        in the detections' order), and the largest box IoU with a detection ranked above it of
        the same class, then of any class (0 for the first).
    """
    s = scores if scores.dtype == torch.float64 else scores.float()
    n = s.shape[0]
    if n == 0:
        return torch.zeros((0, 4), dtype=s.dtype, device=s.device)
    gap = (s / s.max().clamp(min=1e-12)).clamp(1e-4, 1.0).log()
    return torch.stack([gap, torch.log1p(ranked_above(s).sum(1).to(s.dtype)),
                        overlap_above(s, boxes, labels, True),
                        overlap_above(s, boxes, labels, False)], 1)


def mask_shape(mask_probs: Tensor) -> Tensor:
    """The shape signals of n masks, in :data:`SHAPE` order.

    Args:
        mask_probs: Tensor[n, M, M], each detection's mask probabilities in its box (the head's
            mask input).

    Returns:
        Tensor[n, 2] float32 (float64 for float64 input): the share of the box above 0.5, and
        the mean ``|2p - 1|`` over the band of pixels whose 3 x 3 neighbourhood holds both sides
        of the 0.5 contour (1 where the mask has no edge in its box: empty or full).
    """
    p = mask_probs if mask_probs.dtype == torch.float64 else mask_probs.float()
    on = (p > 0.5).to(p.dtype)
    fill = on.mean((-2, -1))
    grid = on[:, None]
    dilated = F.max_pool2d(grid, 3, 1, 1)
    eroded = -F.max_pool2d(-grid, 3, 1, 1)
    band = (dilated - eroded)[:, 0]
    count = band.sum((-2, -1))
    certainty = ((2 * p - 1).abs() * band).sum((-2, -1))
    sharp = torch.where(count > 0, certainty / count.clamp(min=1), torch.ones_like(count))
    return torch.stack([fill, sharp], 1)
