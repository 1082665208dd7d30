"""The second synthetic generator, "scenes": other statistics than "shapes" on every axis.

A proxy for data the project was not tuned on (see ``docs/generators.md``). Against the
embedded generator (``_shapes.py``) it changes:

* the shape families: irregular polygons, smooth blobs from low-frequency radial noise,
  arrows, L-shaped elbows and thin wavy bands (none of ellipse, rectangle, triangle, star,
  cross, ring, crescent); five classes with ids 3, 5, 8, 13, 21;
* the sizes: 5%-50% of the image side (log-uniform), 160-pixel images by default, and objects
  may be cut by the image border (at least half of each stays inside);
* the background: fractal noise with stripes or tiles over it, *and* clutter: 4-14 unannotated
  distractors (ellipses, rectangles, rings, straight and bent lines) painted with the same
  textures as the instances;
* the occlusion: 2-14 instances per image, an instance is kept while 15% of it stays visible
  (the embedded generator keeps 30%), drop shadows of the instances on what lies below;
* the appearance: a third of the instances are camouflaged (their fill is the background's
  own texture, shifted in colour a little), half have blurred edges.

As in ``_shapes.py`` the class is the shape alone (colours and textures are drawn per
instance), every mask is rasterised by pycocotools from the polygons that go into the JSON,
and an annotation is the *visible* part of its instance.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from maskiou.data._shapes import (
    _encode,
    _poly_mask,
    _texture,
    edge_crop,
    keep_visible,
    paint,
    rotation,
    to_pixels,
    unit_grid,
)

CATEGORIES: tuple[dict[str, Any], ...] = (
    {"id": 3, "name": "polygon", "supercategory": "angular"},
    {"id": 5, "name": "blob", "supercategory": "smooth"},
    {"id": 8, "name": "arrow", "supercategory": "angular"},
    {"id": 13, "name": "elbow", "supercategory": "angular"},
    {"id": 21, "name": "band", "supercategory": "thin"},
)
IMAGE_SIZE = 160
MIN_VISIBLE_FRACTION = 0.15  # heavier occlusion than "shapes" (0.3)
MIN_VISIBLE_PIXELS = 12
MIN_INSIDE_FRACTION = 0.5  # an object cut by the image border keeps at least half inside
INSTANCES = (2, 14)  # per image, uniform (inclusive)
DISTRACTORS = (4, 14)
SIZE_RANGE = (0.05, 0.5)  # diameter / image side, log-uniform
P_EMPTY = 0.03
P_CAMOUFLAGE = 1 / 3
P_SHADOW = 0.3


def _wavy_band(rng: np.random.Generator, radius: float) -> np.ndarray:
    """A thin band along a sine arc, x in [-1, 1], tapering at both ends; at least ~2.4 px
    wide at its widest for a shape of ``radius`` pixels."""
    x = np.linspace(-1.0, 1.0, 40)
    amp, freq, phase = rng.uniform(0.1, 0.4), rng.uniform(1.5, 3.5), rng.uniform(0, 2 * np.pi)
    y = amp * np.sin(freq * x + phase)
    dy = amp * freq * np.cos(freq * x + phase)
    normal = np.stack([-dy, np.ones_like(x)], axis=1) / np.hypot(1.0, dy)[:, None]
    half = max(rng.uniform(0.05, 0.14), 1.2 / radius) * (0.35 + 0.65 * np.sin(np.pi * (x + 1) / 2))
    centre = np.stack([x, y - y.mean()], axis=1)
    left, right = centre + normal * half[:, None], centre - normal * half[:, None]
    return np.concatenate([left, right[::-1]]) * 0.95


def unit_polygon(name: str, rng: np.random.Generator, radius: float) -> np.ndarray:
    """Float[N, 2] simple polygon of one family, radius ~1 around 0, for a shape of
    ``radius`` pixels (the band keeps a visible width at small sizes)."""
    if name == "polygon":  # star-shaped about 0, so simple: angles in order, radii at random
        k = int(rng.integers(5, 10))
        ang = (np.arange(k) + rng.uniform(-0.4, 0.4, k)) * 2 * np.pi / k
        r = rng.uniform(0.35, 1.0, k)
        r[rng.integers(k)] = 1.0
        return np.stack([r * np.cos(ang), r * np.sin(ang)], axis=1)
    if name == "blob":  # smoothed radial noise: low frequencies only
        t = np.linspace(0.0, 2 * np.pi, 64, endpoint=False)
        j = np.arange(2, 6)[:, None]
        r = 1.0 + (rng.normal(0, 0.3, (4, 1)) / j * np.cos(j * t + rng.uniform(0, 6.3, (4, 1)))
                   ).sum(0)
        r = np.clip(r, 0.3, None)
        pts = np.stack([r * np.cos(t), rng.uniform(0.55, 1.0) * r * np.sin(t)], axis=1)
        return pts / np.abs(pts).max()
    if name == "arrow":
        w, h, head = rng.uniform(0.1, 0.22), rng.uniform(0.3, 0.55), rng.uniform(0.35, 0.65)
        b = 1.0 - head
        return np.array([[-1, -w], [b, -w], [b, -h], [1, 0], [b, h], [b, w], [-1, w]]) * 0.97
    if name == "elbow":  # an L: two arms of thickness t, the second of length a
        t, a = rng.uniform(0.15, 0.35), rng.uniform(0.55, 1.0)
        q = np.array([[0, 0], [1, 0], [1, t], [t, t], [t, a], [0, a]], dtype=np.float64)
        return (q - [0.5, a / 2]) * 1.9
    if name == "band":
        return _wavy_band(rng, radius)
    raise KeyError(name)


def _fractal_noise(rng: np.random.Generator, size: int, octaves: int = 4) -> np.ndarray:
    """Float[H, W] in about [-1, 1]: bilinearly upsampled random grids, halving amplitude."""
    out = np.zeros((size, size), dtype=np.float32)
    for o in range(octaves):
        cells = 3 * 2**o
        grid = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
        up = Image.fromarray(grid, mode="F").resize((size, size), Image.Resampling.BILINEAR)
        out += np.asarray(up, dtype=np.float32) / 2**o
    return out / 1.875


def _background(rng: np.random.Generator, size: int, grid: np.ndarray) -> np.ndarray:
    """Float[H, W, 3]: two colours mixed by fractal noise, then stripes or tiles, then noise."""
    xx, yy = grid
    c0, c1 = rng.uniform(0.1, 0.9, (2, 3)).astype(np.float32)
    mix = (_fractal_noise(rng, size) * rng.uniform(0.5, 1.5) + 1) / 2
    img = c0 + (c1 - c0) * np.clip(mix, 0, 1)[..., None]
    kind = rng.integers(3)
    if kind == 0:  # warped stripes (wood-like)
        a, f = rng.uniform(0, np.pi), rng.uniform(3.0, 12.0)
        warp = _fractal_noise(rng, size, 2) * rng.uniform(0.5, 3.0)
        s = np.sin(2 * np.pi * f * (np.cos(a) * xx + np.sin(a) * yy) + warp)
        img += s[..., None] * rng.uniform(-0.15, 0.15, 3).astype(np.float32)
    elif kind == 1:  # tiles of random shade
        n = int(rng.integers(3, 9))
        shade = rng.uniform(-0.12, 0.12, (n, n, 3)).astype(np.float32)
        img += shade[(yy * n).astype(int), (xx * n).astype(int)]
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(0.01, 0.06))
    return img


def _clutter(rng: np.random.Generator, img: np.ndarray, grid: np.ndarray) -> None:
    """Paint unannotated distractors in place: ellipses, rectangles, rings and lines."""
    size = img.shape[0]
    for _ in range(int(rng.integers(DISTRACTORS[0], DISTRACTORS[1] + 1))):
        layer = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(layer)
        kind = rng.integers(4)
        c = rng.uniform(0, size, 2)
        r = size * np.exp(rng.uniform(np.log(0.025), np.log(0.12))) * np.array([1.0, 0.0])
        r[1] = r[0] * rng.uniform(0.3, 1.0)
        box = [*(c - r), *(c + r)]
        if kind == 0:
            draw.ellipse(box, fill=255)
        elif kind == 1:
            draw.rectangle(box, fill=255)
        elif kind == 2:
            draw.ellipse(box, outline=255, width=int(rng.integers(1, 4)))
        else:  # a straight or bent line, 1-3 px wide
            pts = c + np.cumsum(rng.normal(0, size * 0.15, (int(rng.integers(2, 5)), 2)), 0)
            draw.line([tuple(p) for p in pts], fill=255, width=int(rng.integers(1, 4)))
        box = layer.getbbox()
        if box is None:  # wholly outside the image
            continue
        crop = np.s_[box[1]: box[3], box[0]: box[2]]
        alpha = np.asarray(layer, dtype=np.float32)[crop][..., None] / 255
        img[crop] = img[crop] * (1 - alpha) + _texture(rng, grid[(slice(None), *crop)]) * alpha


def _shoelace(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _shadow(img: np.ndarray, full: np.ndarray, rng: np.random.Generator) -> None:
    """Darken, in place, the pixels under ``full`` shifted by a few pixels, softly."""
    dy, dx = (int(v) for v in rng.integers(2, 5, 2) * rng.choice([-1, 1], 2))
    h, w = full.shape
    shifted = np.zeros((h, w), dtype=np.uint8)
    shifted[max(dy, 0): h + min(dy, 0), max(dx, 0): w + min(dx, 0)] = \
        full[max(-dy, 0): h + min(-dy, 0), max(-dx, 0): w + min(-dx, 0)] * np.uint8(255)
    soft = Image.fromarray(shifted).filter(ImageFilter.GaussianBlur(1.5))
    a = np.asarray(soft, dtype=np.float32)[..., None] / 255 * np.float32(rng.uniform(0.3, 0.6))
    img *= 1 - a


def render_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Render one scene (same contract as ``_shapes.render_image``).

    Returns:
        pixels: UInt8[H, W, 3] RGB image.
        instances: per kept instance, in paint order, a dict with category_id, segmentation,
            area (pixel count of the visible mask) and bbox [x, y, w, h] (its tight box).
    """
    grid = unit_grid(size)
    img = _background(rng, size, grid)
    _clutter(rng, img, grid)
    n = 0 if rng.random() < P_EMPTY else int(rng.integers(INSTANCES[0], INSTANCES[1] + 1))
    drawn: list[dict[str, Any]] = []
    for _ in range(n):
        cat = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        r = size * np.exp(rng.uniform(*np.log(SIZE_RANGE))) / 2
        centre = rng.uniform(0, size, 2)
        rot = rotation(rng)
        poly = np.round(unit_polygon(cat["name"], rng, r) @ rot.T * r + centre, 2)
        full = _poly_mask(poly.ravel().tolist(), size)
        inside = int(full.sum())
        if inside == 0 or inside < MIN_INSIDE_FRACTION * _shoelace(poly):
            continue
        crop = edge_crop(full)
        if rng.random() < P_CAMOUFLAGE:  # the background's own texture, a little off in colour
            shift = rng.uniform(0.05, 0.15, 3) * rng.choice([-1.0, 1.0], 3)
            fill = img[crop] + shift.astype(np.float32)
        else:
            fill = _texture(rng, grid[(slice(None), *crop)])
        truncated = bool(poly.min() < 0 or poly.max() > size - 1)
        drawn.append({
            "cat": cat["id"], "full": full, "flats": None if truncated else [poly.ravel().tolist()],
            "crop": crop, "fill": fill, "shadow": rng.random() < P_SHADOW,
            "blur": 0.0 if rng.random() < 0.5 else rng.uniform(0.4, 1.5),
        })  # fmt: skip
    instances: list[dict[str, Any]] = []
    for d, visible in keep_visible(drawn, size, MIN_VISIBLE_FRACTION, MIN_VISIBLE_PIXELS):
        if d["shadow"]:
            _shadow(img, d["full"], rng)
        paint(img, d)
        whole = d["flats"] is not None and bool((visible == d["full"]).all())
        seg, area, bbox = _encode(rng, visible, d["flats"] if whole else None)
        instances.append({"category_id": d["cat"], "segmentation": seg, "area": area, "bbox": bbox})
    return to_pixels(img), instances
