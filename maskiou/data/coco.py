"""COCO-format instance-segmentation reader in torchvision's detection format.

Conventions:

* Labels are contiguous 1..C in sorted category-id order; 0 is the implicit background.
  ``label_to_cat_id`` maps back for writing results.
* A category *named* "background" or "__background__" (any id, usually 0) is not a class: it is
  skipped with a warning and annotations that use it are dropped. Any other category, including
  one with id 0, is mapped like the rest (id 0 gets label 1 if it is the smallest), so no
  category collides with label 0. The decision depends on the categories only, so every split
  of a dataset gets the same label map.
* Crowd regions (``iscrowd`` 1 or true) never become targets; they stay in ``self.coco`` for
  evaluation. Annotations whose box (clipped to the image) has w or h <= 1 px or whose mask is
  empty are dropped with one warning line per file.
* Every annotation is checked when the file is loaded, before any image is read: an RLE's
  counts must be non-negative and add up to height x width (pycocotools would decode a short
  one into uninitialised memory), polygon coordinates must be finite numbers at most one image
  size outside the image; an image's height and width positive whole numbers of at most
  :func:`max_pixels` pixels. A split with no usable annotation is refused by
  :func:`require_annotations`.
* Image files are opened header first: one over :func:`max_pixels` pixels (``MASKIOU_MAX_PIXELS``,
  default 8192 x 8192) or of another size than the JSON says is refused before it is decoded.
* Bad input raises ``CocoFormatError`` with one line naming the file, image id, annotation id.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch import Tensor

from maskiou.data.transforms import Transform

logger = logging.getLogger(__name__)
_BACKGROUND_NAMES = ("background", "__background__")
MAX_PIXELS_ENV = "MASKIOU_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 8192 * 8192  # 67 Mpx: a float32 RGB tensor of 805 MB


class CocoFormatError(ValueError):
    """Bad COCO input; the message is one line naming the file, image id and annotation id."""


class Instance(NamedTuple):
    """One usable annotation of an image, as the dataset's targets are made of it."""

    ann_id: Any
    label: int  # contiguous, 1..C
    segmentation: Any  # cleaned polygons (list) or RLE dict, checked
    box: tuple[float, float, float, float]  # xyxy, clipped to the image
    area: float


class CategoryMap(NamedTuple):
    """The dataset's category ids -> contiguous labels, computed once by :func:`category_map`."""

    cat_id_to_label: dict[int, int]
    label_to_cat_id: dict[int, int]
    class_names: list[str]  # background first, then the classes in label order
    skipped: set[int]  # category ids named as a background: not classes


def category_map(categories: dict[int, dict[str, Any]]) -> CategoryMap:
    """The one class mapping of a COCO file (``{category id: category}``): a category named
    "background" or "__background__" (any case) is skipped; the others, sorted by id, get labels
    1..C (0 is the implicit background). Every framework's training and loading goes through
    it (detectron2's datasets are registered with it)."""
    skipped = {c for c, cat in categories.items()
               if str(cat["name"]).lower() in _BACKGROUND_NAMES}
    kept = sorted(c for c in categories if c not in skipped)
    to_label = {c: i + 1 for i, c in enumerate(kept)}
    names = ["__background__"] + [str(categories[c]["name"]) for c in kept]
    return CategoryMap(to_label, {i: c for c, i in to_label.items()}, names, skipped)


def one_line(error: BaseException) -> str:
    """An error's message on one line, as the CLIs print it after ``error:``."""
    return " ".join(str(error).splitlines()) or type(error).__name__


_max_pixels: int | None = None  # set_max_pixels (a CLI's --max-pixels): ahead of the variable


def max_pixels() -> int:
    """The largest image, in pixels (width x height), that is read: what :func:`set_max_pixels`
    set in this process (the CLIs' ``--max-pixels``), else ``MASKIOU_MAX_PIXELS``, else
    :data:`DEFAULT_MAX_PIXELS`."""
    if _max_pixels is not None:
        return _max_pixels
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(f"{MAX_PIXELS_ENV}={raw!r}: must be a positive whole number of pixels")
    return value


def set_max_pixels(value: int | None) -> None:
    """Set the pixel limit of this process (None: leave it as it is); DataLoader workers, forked
    from it, keep it. The environment is left as it is (``MASKIOU_MAX_PIXELS`` is the user's)."""
    global _max_pixels
    if value is None:
        return
    if value <= 0:
        raise ValueError(f"--max-pixels {value}: must be a positive whole number of pixels")
    _max_pixels = int(value)


def pixel_limit_problem(width: int, height: int) -> str | None:
    """Why a ``width`` x ``height`` image is too large to read, or None."""
    limit = max_pixels()
    if width * height <= limit:
        return None
    return (f"{width}x{height} px ({width * height / 1e6:.1f} Mpx), over the limit of "
            f"{limit:,} px per image (raise it with --max-pixels or {MAX_PIXELS_ENV})")


class ImageTooLargeError(ValueError):
    """An image over :func:`max_pixels`; the message says its size and the limit (no file)."""


def open_image(fp: Any) -> Image.Image:
    """``Image.open`` (which reads the header only) of an image within :func:`max_pixels`;
    raises :class:`ImageTooLargeError` for a larger one, before it is decoded."""
    limit = max_pixels()
    if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit  # a raised limit: PIL's own bomb check follows it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(fp)
        except Image.DecompressionBombError as e:
            raise ImageTooLargeError(f"over the limit of {limit:,} px per image ({e})") from None
    problem = pixel_limit_problem(*im.size)
    if problem:
        im.close()
        raise ImageTooLargeError(problem)
    return im


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_whole(v: Any) -> bool:
    return _is_num(v) and math.isfinite(v) and float(v).is_integer()


def _compressed_counts(counts: str) -> list[int] | None:
    """The run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``), or None
    where the string is not one."""
    out: list[int] = []
    p = 0
    while p < len(counts):
        x, k, more = 0, 0, True
        while more:
            if p >= len(counts):
                return None
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def _check_rle(seg: dict[str, Any], h: int, w: int, where: str) -> None:
    """Refuse an RLE whose run lengths are not non-negative and do not add up to h x w."""
    counts = seg["counts"]
    if isinstance(counts, list):
        if not all(_is_whole(c) and c >= 0 for c in counts):
            raise CocoFormatError(f"{where}: RLE counts must be non-negative whole numbers")
        runs = [int(c) for c in counts]
    else:
        runs = _compressed_counts(counts)
        if runs is None:
            raise CocoFormatError(f"{where}: RLE counts is not a compressed COCO RLE string")
        if any(c < 0 for c in runs):
            raise CocoFormatError(f"{where}: compressed RLE has a negative run length")
    if sum(runs) != h * w:
        raise CocoFormatError(f"{where}: RLE counts add up to {sum(runs)} pixels, not height x "
                              f"width = {h * w}")


def _check_polygon(poly: Any, h: int, w: int, where: str) -> None:
    """Refuse a polygon that is not an even list of finite numbers near the image (at most one
    image size outside it: farther points are an error, and cost pycocotools' rasteriser time
    in proportion to their distance)."""
    if not isinstance(poly, list) or not all(_is_num(v) for v in poly):
        raise CocoFormatError(f"{where}: polygon must be a list of numbers")
    if len(poly) % 2:
        raise CocoFormatError(f"{where}: polygon has an odd number of coordinates")
    if not all(math.isfinite(v) for v in poly):
        raise CocoFormatError(f"{where}: polygon has a NaN or infinite coordinate")
    xs, ys = poly[0::2], poly[1::2]
    if xs and (min(xs) < -w or max(xs) > 2 * w or min(ys) < -h or max(ys) > 2 * h):
        raise CocoFormatError(
            f"{where}: polygon reaches ({min(xs):g}..{max(xs):g}, {min(ys):g}..{max(ys):g}), "
            f"more than one image size outside the {w}x{h} image")


def _check_segmentation(seg: Any, h: int, w: int, where: str) -> Any:
    """Validate one segmentation; return it with polygons of < 3 points removed."""
    if isinstance(seg, list):
        for poly in seg:
            _check_polygon(poly, h, w, where)
        return [poly for poly in seg if len(poly) >= 6]
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        if not (isinstance(seg["size"], list) and all(_is_int(v) for v in seg["size"])
                and seg["size"] == [h, w]):
            raise CocoFormatError(f"{where}: RLE size {seg['size']} != image size [{h}, {w}]")
        if not isinstance(seg["counts"], (list, str)):
            raise CocoFormatError(f"{where}: RLE counts must be a list or a string")
        _check_rle(seg, h, w, where)
        return seg
    raise CocoFormatError(f"{where}: segmentation must be polygons or an RLE dict")


def _image_size(img: dict[str, Any], where: str) -> tuple[int, int]:
    """(height, width) of an image entry: positive whole numbers within the pixel limit."""
    h, w = img["height"], img["width"]
    if not (_is_whole(h) and _is_whole(w) and h > 0 and w > 0):
        raise CocoFormatError(f"{where}: height and width must be positive whole numbers, "
                              f"got {h!r} x {w!r}")
    problem = pixel_limit_problem(int(w), int(h))
    if problem:
        raise CocoFormatError(f"{where}: {problem}")
    return int(h), int(w)


def _empty_rle(h: int, w: int) -> dict[str, Any]:
    """Compressed RLE of an all-zero H x W mask (``counts`` as str)."""
    rle = mask_utils.encode(np.zeros((h, w, 1), dtype=np.uint8, order="F"))[0]
    return {"size": [h, w], "counts": rle["counts"].decode("ascii")}


def _to_rle(seg: Any, h: int, w: int) -> dict[str, Any]:
    """Polygons / uncompressed RLE / compressed RLE -> one compressed RLE."""
    if isinstance(seg, list):
        return mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    if isinstance(seg["counts"], list):
        return mask_utils.frPyObjects(seg, h, w)
    counts = seg["counts"]
    return {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def _decode(seg: Any, h: int, w: int) -> np.ndarray:
    """UInt8[H, W] mask of a checked segmentation."""
    if isinstance(seg, list) and not seg:
        return np.zeros((h, w), dtype=np.uint8)
    return mask_utils.decode(_to_rle(seg, h, w))


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CocoFormatError(f"{path}: annotation file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        msg = f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        raise CocoFormatError(msg) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CocoFormatError(f"{path}: cannot read annotation file: {exc}") from None
    if not isinstance(data, dict):
        raise CocoFormatError(f"{path}: top level must be a JSON object")
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise CocoFormatError(f"{path}: missing top-level key(s) {', '.join(missing)}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list):
            raise CocoFormatError(f"{path}: '{key}' must be a list")
    return data


def _read_images(data: dict[str, Any], name: str) -> dict[int, dict[str, Any]]:
    """The image entries of a COCO file by id, each checked: id, file name, and a size within
    the pixel limit (:func:`_image_size`); ``name`` is the file's name for the messages."""
    images: dict[int, dict[str, Any]] = {}
    for k, img in enumerate(data["images"]):
        if not isinstance(img, dict) or not all(
            key in img for key in ("id", "file_name", "height", "width")
        ):
            msg = f"{name}: image #{k} needs id, file_name, height and width"
            raise CocoFormatError(msg)
        if not (_is_int(img["id"]) and isinstance(img["file_name"], str)):
            raise CocoFormatError(f"{name}: image #{k}: id must be an integer and "
                                  f"file_name a string, got {img['id']!r}, "
                                  f"{img['file_name']!r}")
        if img["id"] in images:
            raise CocoFormatError(f"{name}: duplicate image id {img['id']}")
        _image_size(img, f"{name}: image id {img['id']} ({img['file_name']})")
        images[img["id"]] = img
    return images


def _read_categories(data: dict[str, Any], name: str) -> dict[int, dict[str, Any]]:
    """The categories of a COCO file by id, each with an integer id and a name."""
    cats: dict[int, dict[str, Any]] = {}
    for k, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            raise CocoFormatError(f"{name}: category #{k} needs id and name")
        if not _is_int(cat["id"]):
            raise CocoFormatError(f"{name}: category #{k}: id must be an integer, got "
                                  f"{cat['id']!r}")
        if cat["id"] in cats:
            raise CocoFormatError(f"{name}: duplicate category id {cat['id']}")
        cats[cat["id"]] = cat
    return cats


def _require_masks(anns: list[Any], name: str) -> None:
    """Refuse a detection-only file: annotations, none of them with a segmentation."""
    if anns and not any(isinstance(a, dict) and "segmentation" in a for a in anns):
        raise CocoFormatError(
            f"{name}: has no segmentation in any of its {len(anns)} annotations: "
            "this is a detection-only dataset, instance masks are required"
        )


def _check_annotation_keys(ann: Any, k: int, name: str, images: dict[int, Any],
                           cats: dict[int, Any], seen: set[Any]) -> str:
    """Check annotation #``k``'s id (new to ``seen``, which it joins), image id, category id,
    segmentation key and iscrowd; returns the place to name in its messages."""
    if not isinstance(ann, dict) or not isinstance(ann.get("id"), (int, str)):
        raise CocoFormatError(f"{name}: annotation #{k} is not an object with an 'id'")
    where = f"{name}: annotation id {ann['id']} (image id {ann.get('image_id')})"
    if ann["id"] in seen:  # COCOeval's index would keep one of them
        raise CocoFormatError(f"{where}: duplicate annotation id")
    seen.add(ann["id"])
    if not _is_int(ann.get("image_id")) or ann["image_id"] not in images:
        raise CocoFormatError(f"{where}: unknown image id {ann.get('image_id')}")
    if not _is_int(ann.get("category_id")) or ann["category_id"] not in cats:
        raise CocoFormatError(f"{where}: unknown category id {ann.get('category_id')}")
    if "segmentation" not in ann:
        raise CocoFormatError(f"{where}: has no segmentation")
    if ann.get("iscrowd", 0) not in (0, 1):  # True == 1, False == 0
        raise CocoFormatError(f"{where}: iscrowd must be 0/1 or a boolean")
    return where


def _repair_annotation(ann: dict[str, Any], h: int, w: int, where: str) -> Any:
    """Make a checked annotation of an ``h`` x ``w`` image one COCOeval reads, in place:
    iscrowd an int, a checked segmentation (an empty RLE for no polygon), bbox and area filled
    in from the mask where missing, then checked. Returns the cleaned segmentation (``[]``
    where no polygon is left)."""
    ann["iscrowd"] = int(ann.get("iscrowd", 0))
    seg = _check_segmentation(ann["segmentation"], h, w, where)
    # pycocotools cannot decode an empty polygon list: COCOeval gets an empty RLE
    ann["segmentation"] = seg if seg != [] else _empty_rle(h, w)
    if "bbox" not in ann or "area" not in ann:  # COCOeval needs both: fill them in
        rle = _to_rle(seg, h, w) if seg != [] else None
        ann.setdefault("bbox", mask_utils.toBbox(rle).tolist() if rle else [0, 0, 0, 0])
        ann.setdefault("area", float(mask_utils.area(rle)) if rle else 0.0)
    bbox = ann["bbox"]
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_num(v) for v in bbox)
            and all(math.isfinite(v) for v in bbox)):
        raise CocoFormatError(f"{where}: bbox must be [x, y, w, h], finite numbers")
    if not (_is_num(ann["area"]) and math.isfinite(ann["area"])):
        raise CocoFormatError(f"{where}: area must be a finite number")
    return seg


def _usable_box(ann: dict[str, Any], seg: Any, h: int, w: int
                ) -> tuple[float, float, float, float] | None:
    """The xyxy box of a repaired annotation clipped to the ``h`` x ``w`` image, or None where
    it is degenerate (w or h <= 1 px, area <= 0, or no polygon)."""
    bbox = ann["bbox"]
    x0, y0 = min(max(bbox[0], 0), w), min(max(bbox[1], 0), h)
    x1, y1 = min(max(bbox[0] + bbox[2], 0), w), min(max(bbox[1] + bbox[3], 0), h)
    if x1 - x0 <= 1 or y1 - y0 <= 1 or float(ann["area"]) <= 0 or seg == []:
        return None
    return (float(x0), float(y0), float(x1), float(y1))


class _Sorted(NamedTuple):
    """The annotations of a file sorted out by :func:`_sort_annotations`."""

    per_image: dict[int, list[Instance]]  # image id -> its usable instances
    degenerate: list[Any]  # annotation ids left out for a degenerate box or mask
    n_background: int  # left out: of a category named as a background
    n_crowd: int  # left out: crowd regions


def _sort_annotations(anns: list[Any], name: str, images: dict[int, dict[str, Any]],
                      cats: dict[int, Any], mapping: CategoryMap) -> _Sorted:
    """Check and repair every annotation (in place), then keep the usable ones per image with
    their contiguous labels and count what is left out (crowd, background, degenerate)."""
    per_image: dict[int, list[Instance]] = {i: [] for i in images}
    degenerate: list[Any] = []
    n_background = n_crowd = 0
    ann_ids: set[Any] = set()
    for k, ann in enumerate(anns):
        where = _check_annotation_keys(ann, k, name, images, cats, ann_ids)
        img = images[ann["image_id"]]
        h, w = int(img["height"]), int(img["width"])  # checked by _read_images
        seg = _repair_annotation(ann, h, w, where)
        if ann["iscrowd"]:
            n_crowd += 1
            continue
        if ann["category_id"] in mapping.skipped:
            n_background += 1
            continue
        box = _usable_box(ann, seg, h, w)
        if box is None:
            degenerate.append(ann["id"])
            continue
        label = mapping.cat_id_to_label[ann["category_id"]]
        per_image[ann["image_id"]].append(Instance(ann["id"], label, seg, box,
                                                   float(ann["area"])))
    return _Sorted(per_image, degenerate, n_background, n_crowd)


def _log_left_out(name: str, cats: dict[int, Any], skipped: set[int], n_background: int,
                  degenerate: list[Any]) -> None:
    """One warning for the background categories skipped, one for the degenerate annotations
    dropped (the first ten ids)."""
    if skipped:
        names = ", ".join(f"id {c} '{cats[c]['name']}'" for c in sorted(skipped))
        dropped = f" and dropped its {n_background} annotations" if n_background else ""
        logger.warning(
            "%s: skipped background category %s (label 0 is the implicit background)%s",
            name, names, dropped,
        )  # fmt: skip
    if degenerate:
        ids = ", ".join(map(str, degenerate[:10])) + (", ..." if len(degenerate) > 10 else "")
        logger.warning(
            "%s: dropped %d annotations with degenerate boxes (w or h <= 1 px) or empty "
            "masks (ids %s)", name, len(degenerate), ids,
        )  # fmt: skip


def _coco_index(data: dict[str, Any]) -> COCO:
    """pycocotools' ``COCO`` of already loaded data, without its prints."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class CocoInstanceDataset(torch.utils.data.Dataset):
    """Instance segmentation from any COCO-format JSON + image folder.

    ``dataset[i]`` is ``(image, target)`` with
        image: Tensor[3, H, W] float32 in [0, 1], RGB (grayscale/RGBA/palette files converted);
        target: "boxes" Tensor[K, 4] float32 xyxy pixels, "labels" Tensor[K] int64 in 1..C,
            "masks" Tensor[K, H, W] uint8, "image_id" int, "area" Tensor[K] float32,
            "iscrowd" Tensor[K] int64 (all 0: crowd regions are excluded).
    Images without (usable) annotations are kept as negatives with K = 0 unless ``drop_empty``.
    """

    def __init__(
        self,
        ann_file: str | Path,
        image_dir: str | Path,
        transforms: Transform | None = None,
        drop_empty: bool = False,
    ) -> None:
        self.ann_file = Path(ann_file)
        self.image_dir = Path(image_dir)
        self.transforms = transforms
        name = self.ann_file.name
        data = _load_json(self.ann_file)
        images = _read_images(data, name)
        cats = _read_categories(data, name)
        mapping = category_map(cats)
        self.cat_id_to_label: dict[int, int] = mapping.cat_id_to_label
        self.label_to_cat_id: dict[int, int] = mapping.label_to_cat_id
        self.class_names: list[str] = mapping.class_names
        self.num_classes: int = len(self.class_names)

        anns = data["annotations"]
        _require_masks(anns, name)
        sorted_out = _sort_annotations(anns, name, images, cats, mapping)
        _log_left_out(name, cats, mapping.skipped, sorted_out.n_background,
                      sorted_out.degenerate)
        per_image = sorted_out.per_image

        self.coco: COCO = _coco_index(data)
        self._images = images
        self._instances = per_image
        # what the annotations gave: usable instances, and what was left out and why
        self.num_annotations = len(anns)
        self.num_instances = sum(len(v) for v in per_image.values())
        self.left_out = {"crowd": sorted_out.n_crowd, "background": sorted_out.n_background,
                         "degenerate": len(sorted_out.degenerate)}
        self.image_ids: list[int] = sorted(
            i for i in images if not (drop_empty and not per_image[i])
        )

    def __len__(self) -> int:
        return len(self.image_ids)

    def get_height_and_width(self, i: int) -> tuple[int, int]:
        """(H, W) of item ``i`` from the JSON, without decoding the image."""
        img = self._images[self.image_ids[i]]
        return int(img["height"]), int(img["width"])

    def image_path(self, i: int) -> Path:
        """Path of the image file of item ``i``."""
        return self.image_dir / str(self._images[self.image_ids[i]]["file_name"])

    def check_files(self) -> None:
        """Raise CocoFormatError if any image file is missing or empty (no decoding)."""
        bad = [(self.image_ids[i], self.image_path(i)) for i in range(len(self))]
        bad = [(i, p) for i, p in bad if not p.is_file() or p.stat().st_size == 0]
        if bad:
            (image_id, path), more = bad[0], len(bad) - 1
            raise CocoFormatError(
                f"{self.ann_file.name}: {len(bad)} image files missing or empty, e.g. {path} "
                f"(image id {image_id})" + (f" and {more} more" if more else "")
            )

    def _load_image(self, i: int) -> Tensor:
        image_id, path = self.image_ids[i], self.image_path(i)
        if not path.is_file():
            raise CocoFormatError(
                f"{path}: image file not found (image id {image_id}, in {self.ann_file.name})"
            )
        h, w = self.get_height_and_width(i)
        try:
            with open_image(path) as im:  # the header only: size checked before decoding
                if im.size != (w, h):
                    raise CocoFormatError(
                        f"{path}: image is {im.size[0]}x{im.size[1]} but the JSON says {w}x{h} "
                        f"(image id {image_id})")
                if im.mode.startswith("I"):  # 16/32-bit grayscale: scale to 8 bits
                    arr = np.asarray(im, dtype=np.float32) / 65535.0
                    arr = np.repeat(np.clip(arr, 0, 1)[..., None], 3, axis=2)
                else:
                    if im.mode == "P" and "transparency" in im.info:
                        im = im.convert("RGBA")
                    arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        except CocoFormatError:
            raise
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
            msg = f"{path}: cannot read image (image id {image_id}): {exc}"
            raise CocoFormatError(msg) from None
        if arr.shape[:2] != (h, w):
            raise CocoFormatError(
                f"{path}: image is {arr.shape[1]}x{arr.shape[0]} but the JSON says {w}x{h} "
                f"(image id {image_id})"
            )
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))

    def instances(self, i: int) -> list[Instance]:
        """The usable annotations of item ``i`` (crowd, background and degenerate ones left
        out), with their contiguous labels: what its target is made of."""
        return list(self._instances[self.image_ids[i]])

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Any]]:
        image = self._load_image(i)
        h, w = self.get_height_and_width(i)
        instances = self._instances[self.image_ids[i]]
        masks = np.zeros((len(instances), h, w), dtype=np.uint8)
        for k, inst in enumerate(instances):
            try:
                masks[k] = _decode(inst.segmentation, h, w)
            except (TypeError, ValueError, OverflowError) as exc:
                msg = f"{self.ann_file.name}: annotation id {inst.ann_id} (image id "
                msg += f"{self.image_ids[i]}): cannot decode segmentation: {exc}"
                raise CocoFormatError(msg) from None
        keep = masks.reshape(len(instances), h * w).any(axis=1)  # polygons may rasterise to nothing
        target = {
            "boxes": torch.tensor([x.box for x in instances], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([x.label for x in instances], dtype=torch.int64),
            "masks": torch.from_numpy(masks),
            "image_id": int(self.image_ids[i]),
            "area": torch.tensor([x.area for x in instances], dtype=torch.float32),
            "iscrowd": torch.zeros(len(instances), dtype=torch.int64),
        }
        if not keep.all():
            sel = torch.from_numpy(keep)
            target = {k: v[sel] if isinstance(v, Tensor) else v for k, v in target.items()}
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def require_annotations(dataset: CocoInstanceDataset, what: str) -> CocoInstanceDataset:
    """``dataset`` if it has at least one usable annotation, else CocoFormatError (one line
    saying what was left out): ``what`` says what the split is for ("the add-on images")."""
    if dataset.num_instances:
        return dataset
    why = ", ".join(f"{n} {k}" for k, n in dataset.left_out.items() if n)
    raise CocoFormatError(
        f"{dataset.ann_file}: no usable annotation for {what} ({len(dataset)} images, "
        f"{dataset.num_annotations} annotations" + (f": {why}" if why else "") + "); nothing "
        "to learn from or measure")


def coco_root_paths(root: str | Path, split: str) -> tuple[Path, Path]:
    """(annotation file, image folder) of the standard layout
    ``root/annotations/instances_{split}2017.json`` + ``root/{split}2017/``."""
    root = Path(root)
    ann_file = root / "annotations" / f"instances_{split}2017.json"
    image_dir = root / f"{split}2017"
    layout = f"expected {root}/annotations/instances_{split}2017.json and {root}/{split}2017/"
    if not root.is_dir():
        raise CocoFormatError(f"{root}: COCO root folder not found")
    if not ann_file.is_file():
        raise CocoFormatError(f"{ann_file}: annotation file not found ({layout})")
    if not image_dir.is_dir():
        raise CocoFormatError(f"{image_dir}: image folder not found ({layout})")
    return ann_file, image_dir


def collate_fn(batch: list[tuple[Tensor, dict[str, Any]]]) -> tuple[tuple[Any, ...], ...]:
    """Detection collate: ``[(img, tgt), ...] -> ((img, ...), (tgt, ...))``."""
    return tuple(zip(*batch))
