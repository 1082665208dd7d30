"""Shapes, backgrounds and compositing for the synthetic dataset (see ``synthetic.py``).

Every mask is rasterised by pycocotools from the very polygon that goes into the JSON, so the
annotation decodes to exactly the pixels that were painted.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageFilter
from pycocotools import mask as mask_utils

# Class = shape; ids are non-contiguous on purpose (the reader must map them to 1..C).
CATEGORIES: tuple[dict[str, Any], ...] = (
    {"id": 1, "name": "ellipse", "supercategory": "convex"},
    {"id": 2, "name": "rectangle", "supercategory": "convex"},
    {"id": 4, "name": "triangle", "supercategory": "convex"},
    {"id": 7, "name": "star", "supercategory": "concave"},
    {"id": 9, "name": "cross", "supercategory": "concave"},
    {"id": 12, "name": "ring", "supercategory": "holed"},
    {"id": 15, "name": "crescent", "supercategory": "thin"},
)
MIN_VISIBLE_FRACTION = 0.3  # drop instances less visible than this after occlusion ...
MIN_VISIBLE_PIXELS = 20  # ... or with fewer visible pixels than this
MAX_INSTANCES = 8
_EDGE_MARGIN = 5  # pixels around a shape reached by its blurred edge (blur sigma <= 1.5)
P_EMPTY = 0.05


def _ellipse(rng: np.random.Generator, b: float | None = None, n: int = 40) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    b = rng.uniform(0.55, 1.0) if b is None else b
    return np.stack([np.cos(t), b * np.sin(t)], axis=1)


def _unit_polygons(name: str, rng: np.random.Generator) -> list[np.ndarray]:
    """Polygons (each Float[N, 2], radius ~1, centred at 0) of one shape; [outer, hole]."""
    if name == "ellipse":
        return [_ellipse(rng)]
    if name == "rectangle":
        a = rng.uniform(0.5, 1.0)
        c = 1.0 / np.hypot(1.0, a)
        return [np.array([[-c, -a * c], [c, -a * c], [c, a * c], [-c, a * c]])]
    if name == "triangle":
        ang = np.pi / 2 + np.array([0.0, 2.0, 4.0]) * np.pi / 3 + rng.uniform(-0.35, 0.35, 3)
        r = rng.uniform(0.85, 1.0, 3)
        return [np.stack([r * np.cos(ang), r * np.sin(ang)], axis=1)]
    if name == "star":
        ang = np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.38, 0.5))
        return [np.stack([r * np.cos(ang), r * np.sin(ang)], axis=1)]
    if name == "cross":
        w = rng.uniform(0.22, 0.34)
        q = [(w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w)]
        q += [(-w, -w), (-w, -1), (w, -1), (w, -w), (1, -w), (1, w)]
        return [np.array(q, dtype=np.float64) * 0.94]
    if name == "ring":
        b = rng.uniform(0.75, 1.0)
        outer = _ellipse(rng, b)
        return [outer, outer * rng.uniform(0.45, 0.65)]
    if name == "crescent":  # outer half circle, back along a flatter half ellipse: tapering tips
        t = np.linspace(-np.pi / 2, np.pi / 2, 24)
        k = rng.uniform(0.25, 0.6)
        outer = np.stack([np.cos(t), np.sin(t)], axis=1)
        inner = np.stack([k * np.cos(t[::-1]), np.sin(t[::-1])], axis=1)
        return [(np.concatenate([outer, inner[1:-1]]) - [0.5, 0.0]) * 0.89]
    raise KeyError(name)


def unit_grid(size: int) -> np.ndarray:
    """Float32[2, size, size]: each pixel's (x, y) in [0, 1), what backgrounds and textures are
    drawn on."""
    return np.stack(np.meshgrid(*(np.arange(size, dtype=np.float32) / size,) * 2))


def rotation(rng: np.random.Generator) -> np.ndarray:
    """Float64[2, 2]: a rotation by an angle drawn uniformly (one draw of ``rng``)."""
    ang = rng.uniform(0, 2 * np.pi)
    return np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])


def edge_crop(full: np.ndarray) -> tuple[slice, slice]:
    """The crop of a non-empty Bool[H, W] mask that holds the shape and its blurred edge
    (:data:`_EDGE_MARGIN` pixels around it, cut at the image)."""
    ys, xs = np.nonzero(full)
    m = _EDGE_MARGIN
    return np.s_[max(ys.min() - m, 0): ys.max() + m + 1, max(xs.min() - m, 0): xs.max() + m + 1]


def to_pixels(img: np.ndarray) -> np.ndarray:
    """Float[H, W, 3] in [0, 1] -> UInt8[H, W, 3], rounded."""
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)


def _poly_mask(flat: list[float], size: int) -> np.ndarray:
    rles = mask_utils.frPyObjects([flat], size, size)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def _background(rng: np.random.Generator, size: int, grid: np.ndarray) -> np.ndarray:
    """Float[H, W, 3] background: flat colour + gradient/stripes/blobs + gaussian noise."""
    xx, yy = grid
    img = np.broadcast_to(rng.uniform(0.15, 0.85, 3), (size, size, 3)).astype(np.float32)
    kinds = rng.random(3) < 0.6
    if not kinds.any():
        kinds[rng.integers(3)] = True
    if kinds[0]:  # linear gradient
        a = rng.uniform(0, 2 * np.pi)
        g = np.cos(a) * xx + np.sin(a) * yy
        img += (g - g.mean())[..., None] * rng.uniform(-0.5, 0.5, 3).astype(np.float32)
    if kinds[1]:  # stripes
        a, f = rng.uniform(0, np.pi), rng.uniform(2.0, 10.0)
        s = np.sin(2 * np.pi * f * (np.cos(a) * xx + np.sin(a) * yy) + rng.uniform(0, 2 * np.pi))
        img += s[..., None] * rng.uniform(-0.15, 0.15, 3).astype(np.float32)
    if kinds[2]:  # soft blobs
        for _ in range(rng.integers(2, 7)):
            cx, cy, sig = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.25)
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sig**2))
            img += blob[..., None] * rng.uniform(-0.3, 0.3, 3).astype(np.float32)
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(0.01, 0.06))
    return img


def _texture(rng: np.random.Generator, grid: np.ndarray) -> np.ndarray:
    """Float[h, w, 3] fill of one instance on its ``grid`` crop: random colour (never the
    class) + stripes or a gradient + noise."""
    xx, yy = grid
    fill = np.broadcast_to(rng.uniform(0.05, 0.95, 3), (*xx.shape, 3)).astype(np.float32)
    kind = rng.integers(3)
    if kind == 1:  # stripes
        a, f = rng.uniform(0, np.pi), rng.uniform(4.0, 16.0)
        s = np.sin(2 * np.pi * f * (np.cos(a) * xx + np.sin(a) * yy))
        fill += s[..., None] * rng.uniform(-0.12, 0.12, 3).astype(np.float32)
    elif kind == 2:  # gradient
        a = rng.uniform(0, 2 * np.pi)
        g = (np.cos(a) * xx + np.sin(a) * yy) - 0.5
        fill += g[..., None] * rng.uniform(-0.4, 0.4, 3).astype(np.float32)
    fill += rng.standard_normal(fill.shape, dtype=np.float32) * np.float32(rng.uniform(0, 0.05))
    return fill


def _rle_uncompressed(mask: np.ndarray) -> dict[str, Any]:
    flat = mask.ravel(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    if flat[0] == 1:
        counts = [0, *counts]
    return {"size": list(mask.shape), "counts": counts}


def _encode(
    rng: np.random.Generator, visible: np.ndarray, polys: list[list[float]] | None
) -> tuple[Any, float, list[float]]:
    """(segmentation, area, bbox) of a visible mask; polygons if given and not ~10% RLE."""
    rle = mask_utils.encode(np.asfortranarray(visible.astype(np.uint8)))
    area = float(mask_utils.area(rle))
    bbox = [float(v) for v in mask_utils.toBbox(rle)]
    if polys is not None and rng.random() >= 0.1:
        return polys, area, bbox
    if rng.random() < 0.5:
        return _rle_uncompressed(visible), area, bbox
    return {"size": list(visible.shape), "counts": rle["counts"].decode("ascii")}, area, bbox


def keep_visible(drawn: list[dict[str, Any]], size: int, min_fraction: float,
                 min_pixels: int) -> list[tuple[dict[str, Any], np.ndarray]]:
    """The instances that stay visible enough, in paint order, each with its visible mask
    (Bool[H, W]).

    Occlusion: later instances lie on top. Walk from the top down, keeping an instance only if
    at least ``min_pixels`` and ``min_fraction`` of its ``full`` mask stay visible under the kept
    ones; a dropped instance is not painted at all, so it occludes nothing.
    """
    covered = np.zeros((size, size), dtype=bool)
    kept: list[tuple[dict[str, Any], np.ndarray]] = []
    for d in reversed(drawn):
        visible = d["full"] & ~covered
        full_area, vis_area = int(d["full"].sum()), int(visible.sum())
        if vis_area < min_pixels or vis_area < min_fraction * full_area:
            continue
        if visible.any(0).sum() < 2 or visible.any(1).sum() < 2:  # a reader drops w or h <= 1
            continue
        covered |= d["full"]
        kept.append((d, visible))
    kept.reverse()
    return kept


def paint(img: np.ndarray, d: dict[str, Any]) -> None:
    """Composite one instance in place: its ``fill`` (Float[h, w, 3] on its ``crop``) through
    its ``full`` mask, softened by a gaussian of sigma ``blur`` (0: a hard edge). The mask
    stays exact; only the boundary in the image is soft."""
    crop = d["crop"]
    alpha = d["full"][crop].astype(np.float32)
    if d["blur"] > 0:
        im = Image.fromarray((alpha * 255).astype(np.uint8))
        alpha = np.asarray(im.filter(ImageFilter.GaussianBlur(d["blur"])), np.float32) / 255
    a = alpha[..., None]
    img[crop] = img[crop] * (1 - a) + d["fill"] * a


def render_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Render one image.

    Returns:
        pixels: UInt8[H, W, 3] RGB image.
        instances: per kept instance, in paint order, a dict with category_id, segmentation,
            area (pixel count of the visible mask) and bbox [x, y, w, h] (its tight box).
    """
    grid = unit_grid(size)
    img = _background(rng, size, grid)
    n = 0 if rng.random() < P_EMPTY else int(rng.integers(1, MAX_INSTANCES + 1))
    drawn: list[dict[str, Any]] = []
    for _ in range(n):
        cat = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        diameter = size * np.exp(rng.uniform(np.log(0.08), np.log(0.45)))
        r = diameter / 2
        centre = rng.uniform(r + 1, size - r - 1, 2)
        rot = rotation(rng)
        flats = [
            np.round(p @ rot.T * r + centre, 2).ravel().tolist()
            for p in _unit_polygons(cat["name"], rng)
        ]
        full = _poly_mask(flats[0], size)
        for hole in flats[1:]:
            full &= ~_poly_mask(hole, size)
        if not full.any():
            continue
        crop = edge_crop(full)
        drawn.append({
            "cat": cat["id"], "full": full, "flats": flats, "crop": crop,
            "fill": _texture(rng, grid[(slice(None), *crop)]),
            "blur": 0.0 if rng.random() < 0.5 else rng.uniform(0.4, 1.5),
        })  # fmt: skip
    instances: list[dict[str, Any]] = []
    for d, visible in keep_visible(drawn, size, MIN_VISIBLE_FRACTION, MIN_VISIBLE_PIXELS):
        paint(img, d)
        whole = len(d["flats"]) == 1 and bool((visible == d["full"]).all())
        seg, area, bbox = _encode(rng, visible, d["flats"] if whole else None)
        instances.append({"category_id": d["cat"], "segmentation": seg, "area": area, "bbox": bbox})
    return to_pixels(img), instances
