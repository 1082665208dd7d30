"""Masks drawn so that they read on any image: a filled mask at low opacity, a solid contour
(dark-edged, so that it shows on light and dark backgrounds), the box, and a label with the
scores at the box. Pure numpy + PIL: arrays in, an RGB array out."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
           "#bfef45", "#fabed4", "#469990", "#dcbeff", "#9a6324", "#fffac8", "#800000",
           "#aaffc3", "#808000", "#ffd8b1", "#000075", "#a9a9a9", "#ffe119"]
FILL_ALPHA = 0.35
DIMMED_ALPHA = 0.12  # a detection the stored thresholds drop: faint, grey
DROPPED_COLOR = "#9e9e9e"
SCALE_TO = 384  # small images are enlarged (nearest neighbour) so that labels stay readable


@dataclass
class Shape:
    """One thing to draw: mask Bool[H, W], box (x1, y1, x2, y2) in pixels, colour "#rrggbb",
    a label, whether it is ground truth (dashed white contour, no fill), and whether it is
    dimmed (a fainter fill: a detection the model's thresholds drop)."""

    mask: np.ndarray
    box: tuple[float, float, float, float]
    color: str
    label: str
    ground_truth: bool = False
    dimmed: bool = False


def color(i: int) -> str:
    """The colour of detection ``i`` (the same in every panel)."""
    return PALETTE[i % len(PALETTE)]


def _rgb(hex_color: str) -> np.ndarray:
    return np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.float64)


def contour(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Bool[H, W]: the pixels of ``mask`` within ``width`` px of its border."""
    m = mask.astype(bool)
    inner = m.copy()
    for _ in range(width):
        shrunk = inner.copy()
        shrunk[1:, :] &= inner[:-1, :]
        shrunk[:-1, :] &= inner[1:, :]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        inner = shrunk
    return m & ~inner


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def draw(image: np.ndarray, shapes: list[Shape]) -> np.ndarray:
    """``image`` UInt8[H, W, 3] with ``shapes`` drawn on it (enlarged to at least
    :data:`SCALE_TO` px on the long side). Returns UInt8[H', W', 3]."""
    h, w = image.shape[:2]
    k = max(1, int(np.ceil(SCALE_TO / max(h, w))))
    canvas = np.repeat(np.repeat(image.astype(np.float64), k, 0), k, 1)
    line = max(1, k // 2)
    for s in shapes:
        m = np.repeat(np.repeat(s.mask.astype(bool), k, 0), k, 1)
        rgb = _rgb(s.color)
        if not s.ground_truth:
            alpha = DIMMED_ALPHA if s.dimmed else FILL_ALPHA
            canvas[m] = (1 - alpha) * canvas[m] + alpha * rgb
        edge = contour(m, line + 1)
        canvas[edge] = 0.0  # a dark rim under the coloured line: readable on light images
        canvas[contour(m, line)] = 255.0 if s.ground_truth else rgb
    out = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    pen = ImageDraw.Draw(out)
    font = _font(max(11, 4 * k + 4))
    for s in shapes:
        if s.ground_truth:
            continue
        x1, y1, x2, y2 = (v * k for v in s.box)
        pen.rectangle([x1, y1, x2, y2], outline=s.color, width=1)
        tx, ty = x1, max(0.0, y1 - font.size - 4)
        left, top, right, bottom = pen.textbbox((tx, ty), s.label, font=font)
        pen.rectangle([left - 2, top - 1, right + 2, bottom + 1], fill=(0, 0, 0))
        pen.text((tx, ty), s.label, fill=s.color, font=font)
    return np.asarray(out)
