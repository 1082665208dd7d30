"""The steps of ultralytics' YOLO-seg predictor that the adapter's one prediction function,
:func:`maskiou_integrations.ultralytics_yolo.detect`, reproduces, kept soft where a mask-quality
score needs it:

- :func:`preprocess`: its ``LetterBox`` (as its predictor pads one image: to a multiple of the
  stride), uint8 RGB to float in [0, 1];
- :func:`split_output`: the predictions and prototypes of the model's eval-mode output, in the
  formats of ultralytics 8.0 to 8.4;
- :func:`soft_masks`: the masks of its ``process_mask(..., upsample=True)`` (the predictor's
  default) kept soft::

    logits = coefficients @ protos          # [n, 32] @ [32, h/4 * w/4]
    logits = bilinear upsampling to the network input, then ``scale_masks`` to the image
    mask = logits > 0 inside the box        # ultralytics' binary mask, exactly
    probs = sigmoid(logits) inside the box  # the soft mask (0 outside the box), > 0.5 on mask

On an image that needs no letterbox padding (the embedded data: 128 x 128 at ``imgsz`` 128) the
masks are bit for bit those of ``process_mask``; with padding they are upsampled to the input
and then mapped to the image, as ``Results`` masks are, rather than by ``process_mask_native``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def preprocess(image: np.ndarray, imgsz: int, stride: int) -> Tensor:
    """UInt8 [H, W, 3] RGB -> float32 [1, 3, h, w] in [0, 1], letterboxed as ultralytics'
    predictor does one image (scaled to fit ``imgsz``, padded with 114 to a stride multiple)."""
    from ultralytics.data.augment import LetterBox

    boxed = LetterBox(new_shape=(imgsz, imgsz), auto=True, stride=stride)(image=image)
    x = torch.from_numpy(np.ascontiguousarray(boxed.transpose(2, 0, 1)))
    return x[None].float() / 255.0


def split_output(output: Any) -> tuple[Tensor, Tensor]:
    """(predictions [B, 4 + nc + nm, A], protos [B, nm, h/4, w/4]) of a ``SegmentationModel``'s
    eval-mode output, as its predictor reads it: ``((predictions, protos), raw head dict)`` in
    ultralytics 8.4; ``(predictions, (P3-P5 list, coefficients, protos))`` before it."""
    first, second = output[0], output[1]
    if isinstance(first, tuple):
        return first[0], first[1]
    return first, second[-1] if isinstance(second, (tuple, list)) else second


def soft_masks(protos: Tensor, coefficients: Tensor, boxes: Tensor, input_shape: tuple[int, int],
               image_shape: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """(binary masks bool [n, H, W], soft masks float32 [n, H, W]) in the image's pixels.

    Args:
        protos: [nm, mh, mw] of one image.
        coefficients: [n, nm], the kept detections' mask coefficients.
        boxes: [n, 4] xyxy in the image's pixels (scaled back from the input).
        input_shape: (h, w) of the network input; image_shape: (H, W) of the image.
    """
    from ultralytics.utils import ops

    c, mh, mw = protos.shape
    n = len(coefficients)
    if n == 0:
        empty = torch.zeros((0, *image_shape), device=protos.device)
        return empty.bool(), empty
    logits = (coefficients @ protos.float().view(c, -1)).view(n, mh, mw)
    logits = F.interpolate(logits[None], input_shape, mode="bilinear")[0]
    logits = ops.scale_masks(logits[None], image_shape)[0]
    h, w = image_shape
    x1, y1, x2, y2 = torch.chunk(boxes[:, :, None], 4, 1)  # as ops.crop_mask compares
    cols = torch.arange(w, dtype=x1.dtype, device=x1.device)[None, None, :]
    rows = torch.arange(h, dtype=x1.dtype, device=x1.device)[None, :, None]
    inside = (cols >= x1) & (cols < x2) & (rows >= y1) & (rows < y2)
    binary = (logits > 0) & inside
    probs = torch.sigmoid(logits) * inside
    # a logit in (0, 3e-8) has a float32 sigmoid of exactly 0.5: keep probs > 0.5 == binary
    half = torch.tensor(0.5, device=probs.device)
    above = torch.nextafter(half, torch.ones_like(half))
    return binary, torch.where(binary, probs.clamp(min=above), probs)
