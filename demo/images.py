"""Turn whatever a user hands the demo into an 8-bit RGB array, or one clear line saying why not.

Accepted: any file PIL can read (PNG, JPEG, WebP, TIFF, BMP, GIF, ...), a PIL image, or a numpy
array. Grayscale, palette, CMYK, RGBA (flattened onto white), 16-bit and float images are
converted; images whose long side is over :data:`MAX_SIDE` px are downscaled. Each conversion
adds a short note for the page. Images under :data:`MIN_SIDE` px on a side, images over the
pixel limit (:func:`maskiou.data.coco.max_pixels`, checked from a file's header before it is
decoded), non-image files and unreadable arrays raise :class:`ImageInputError`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from maskiou.data.coco import ImageTooLargeError, open_image, pixel_limit_problem

MAX_SIDE = 1333  # torchvision's default max_size: larger inputs only cost time
MIN_SIDE = 16

ImageSource = str | Path | bytes | Image.Image | np.ndarray


class ImageInputError(ValueError):
    """An input the demo cannot use; the message is one line meant for the page."""


@dataclass
class LoadedImage:
    """array: UInt8[H, W, 3] RGB; notes: what was converted, one short sentence each."""

    array: np.ndarray
    notes: list[str] = field(default_factory=list)
    name: str = "image"


def load_image(source: ImageSource, name: str | None = None) -> LoadedImage:
    """Read ``source`` and return it as an 8-bit RGB array of at most ``MAX_SIDE`` px.

    Args:
        source: a file path, the file's bytes, a PIL image, or an array
            (UInt8/UInt16/bool/float[H, W] or [H, W, 1|3|4]).
        name: how to call the input in messages (default: the file name).

    Raises:
        ImageInputError: not an image, unreadable, smaller than ``MIN_SIDE`` px on a side, or
            over the pixel limit.
    """
    if isinstance(source, (str, Path)):
        name = name or Path(source).name
        if not Path(source).is_file():
            raise ImageInputError(f"{name}: file not found")
        image, notes = _from_pil(_open(source, name), name)
    elif isinstance(source, bytes):
        name = name or "upload"
        image, notes = _from_pil(_open(io.BytesIO(source), name), name)
    elif isinstance(source, Image.Image):
        name = name or "image"
        _check_pixels(*source.size, name)
        image, notes = _from_pil(source, name)
    elif isinstance(source, np.ndarray):
        name = name or "array"
        if source.ndim >= 2:
            _check_pixels(source.shape[1], source.shape[0], name)
        image, notes = _from_array(source, name)
    else:
        raise ImageInputError(f"{name or 'input'}: expected an image file or array, "
                              f"got {type(source).__name__}")
    image, more = _fit_size(image, name)
    return LoadedImage(np.ascontiguousarray(image), notes + more, name)


def _check_pixels(width: int, height: int, name: str) -> None:
    problem = pixel_limit_problem(width, height)
    if problem:
        raise ImageInputError(f"{name}: the image is {problem}")


def _open(fp: str | Path | io.BytesIO, name: str) -> Image.Image:
    try:
        im = open_image(fp)  # its header only: refused over the pixel limit before decoding
        im.load()
    except ImageTooLargeError as e:
        raise ImageInputError(f"{name}: the image is {e}") from None
    except UnidentifiedImageError:
        raise ImageInputError(f"{name}: not an image file (PNG, JPEG, WebP, TIFF, BMP, ...) "
                              "that PIL can read") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageInputError(f"{name}: the image file is damaged or truncated ({e})") from None
    try:
        return ImageOps.exif_transpose(im) or im
    except Exception:  # noqa: BLE001 - a broken EXIF block must not reject a readable image
        return im


def _from_pil(im: Image.Image, name: str) -> tuple[np.ndarray, list[str]]:
    mode, notes = im.mode, []
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(im)
        return _from_array(arr.astype(np.uint16 if mode != "I" else arr.dtype), name)
    if mode == "F":
        return _from_array(np.asarray(im), name)
    if "A" in mode or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        notes.append(f"{mode} image: transparency flattened onto white")
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB")), notes
    if mode in ("L", "1"):
        notes.append("grayscale image: copied to the three RGB channels")
    elif mode != "RGB":
        notes.append(f"{mode} image converted to RGB")
    return np.asarray(im.convert("RGB")), notes


def _from_array(arr: np.ndarray, name: str) -> tuple[np.ndarray, list[str]]:
    notes: list[str] = []
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ImageInputError(f"{name}: array of shape {tuple(arr.shape)} is not an image "
                              "(expected [H, W], [H, W, 3] or [H, W, 4])")
    if arr.size == 0:
        raise ImageInputError(f"{name}: the image is empty ({arr.shape[1]}x{arr.shape[0]} px)")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint16 or (arr.dtype.kind in "iu" and arr.max() > 255):
        notes.append("16-bit image scaled to 8 bits")
        arr = (np.clip(arr.astype(np.float64), 0, 65535) / 257.0).round().astype(np.uint8)
    elif arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise ImageInputError(f"{name}: the image has NaN or infinite pixel values")
        scale = 255.0 if arr.max() <= 1.0 else 1.0
        arr = np.clip(arr.astype(np.float64) * scale, 0, 255).round().astype(np.uint8)
    elif arr.dtype.kind in "iu":
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    else:
        raise ImageInputError(f"{name}: pixel type {arr.dtype} is not an image type")
    if arr.ndim == 2:
        notes.append("grayscale image: copied to the three RGB channels")
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.shape[2] == 4:
        alpha = arr[:, :, 3:4].astype(np.float64) / 255.0
        arr = (arr[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)
        notes.append("RGBA image: transparency flattened onto white")
    return arr, notes


def _fit_size(arr: np.ndarray, name: str) -> tuple[np.ndarray, list[str]]:
    h, w = arr.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ImageInputError(f"{name}: the image is {w}x{h} px, too small to find objects in; "
                              f"use one of at least {MIN_SIDE}x{MIN_SIDE} px")
    if max(h, w) <= MAX_SIDE:
        return arr, []
    scale = MAX_SIDE / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if min(nw, nh) < MIN_SIDE:
        raise ImageInputError(f"{name}: the image is {w}x{h} px; scaled to {MAX_SIDE} px on the "
                              f"long side it would be {nw}x{nh} px, too thin to find objects in")
    small = np.asarray(Image.fromarray(arr).resize((nw, nh), Image.Resampling.LANCZOS))
    return small, [f"large image ({w}x{h} px) downscaled to {nw}x{nh} px "
                   f"(long side at most {MAX_SIDE} px)"]
