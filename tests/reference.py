"""Independent references for the tests: plain numpy, one RoI at a time, no project function.

- :func:`roi_align_1ch`: torchvision's ``roi_align`` (aligned=False, spatial scale 1, adaptive
  sampling ratio), written from its definition: each of the M x M bins averages
  ceil(h / M) x ceil(w / M) bilinear samples; a sample more than one pixel outside the map counts
  as 0, one within a pixel of the border is clamped to it.
- :func:`grid_mask_iou`: the MaskIoU target as the paper defines it on the RoI grid: the
  predicted mask (logit > 0) against the projected GT (>= 0.5), with the GT pixels outside the box
  added to the union, converted to grid cells.
- :func:`pasted_mask_iou`: the IoU of a predicted grid mask pasted into the image by hand
  (for boxes whose cells are whole pixels) with the full-image GT mask.
"""

from __future__ import annotations

import math

import numpy as np


def _bilinear(img: np.ndarray, y: float, x: float) -> float:
    h, w = img.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    hy, hx = 1.0 - ly, 1.0 - lx
    return (hy * hx * img[y0, x0] + hy * lx * img[y0, x1] + ly * hx * img[y1, x0]
            + ly * lx * img[y1, x1])


def roi_align_1ch(img: np.ndarray, box: np.ndarray, m: int) -> np.ndarray:
    """Float64[m, m]: one map, one box (x1, y1, x2, y2), as torchvision computes it."""
    x1, y1, x2, y2 = (float(v) for v in box)
    rw, rh = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    bw, bh = rw / m, rh / m
    gw, gh = math.ceil(rw / m), math.ceil(rh / m)
    out = np.zeros((m, m))
    img = img.astype(np.float64)
    for ph in range(m):
        for pw in range(m):
            total = 0.0
            for iy in range(gh):
                y = y1 + ph * bh + (iy + 0.5) * bh / gh
                for ix in range(gw):
                    x = x1 + pw * bw + (ix + 0.5) * bw / gw
                    total += _bilinear(img, y, x)
            out[ph, pw] = total / max(gh * gw, 1)
    return out


def grid_mask_iou(logits: np.ndarray, box: np.ndarray, gt: np.ndarray) -> float:
    """The full-instance MaskIoU target of one RoI (see the module docstring)."""
    m = logits.shape[-1]
    pred = logits > 0
    proj = roi_align_1ch(gt, box, m) >= 0.5
    h, w = gt.shape
    x1, y1, x2, y2 = (int(round(float(v))) for v in box)
    x1, y1 = min(max(x1, 0), w), min(max(y1, 0), h)
    x2, y2 = max(min(x2, w), x1), max(min(y2, h), y1)
    outside = float(gt.sum() - gt[y1:y2, x1:x2].sum())
    area = max(float((box[2] - box[0]) * (box[3] - box[1])), 1e-6)
    inter = float((pred & proj).sum())
    union = float(pred.sum()) + float(proj.sum()) + outside * m * m / area - inter
    return inter / union if union > 0 else 0.0


def pasted_mask_iou(logits: np.ndarray, box: tuple[int, int, int, int], gt: np.ndarray) -> float:
    """Paste a grid mask whose cells are whole pixels into the image and measure its IoU."""
    m = logits.shape[-1]
    x1, y1, x2, y2 = box
    sy, sx = (y2 - y1) // m, (x2 - x1) // m
    assert sy * m == y2 - y1 and sx * m == x2 - x1, "cells must be whole pixels"
    pasted = np.zeros(gt.shape, dtype=bool)
    pasted[y1:y2, x1:x2] = np.kron(logits > 0, np.ones((sy, sx), dtype=bool))
    g = gt.astype(bool)
    union = (pasted | g).sum()
    return float((pasted & g).sum() / union) if union else 0.0
