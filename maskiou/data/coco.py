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
* Bad input raises ``CocoFormatError`` with one line naming the file, image id, annotation id.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
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


class CocoFormatError(ValueError):
    """Bad COCO input; the message is one line naming the file, image id and annotation id."""


class _Instance(NamedTuple):
    ann_id: Any
    label: int
    segmentation: Any  # cleaned polygons (list) or RLE dict
    box: tuple[float, float, float, float]  # xyxy, clipped to the image
    area: float


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_segmentation(seg: Any, h: int, w: int, where: str) -> Any:
    """Validate one segmentation; return it with polygons of < 3 points removed."""
    if isinstance(seg, list):
        polys = []
        for poly in seg:
            if not isinstance(poly, list):  # numbers are checked when decoded
                raise CocoFormatError(f"{where}: polygon must be a list of numbers")
            if len(poly) % 2:
                raise CocoFormatError(f"{where}: polygon has an odd number of coordinates")
            if len(poly) >= 6:
                polys.append(poly)
        return polys
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        if list(seg["size"]) != [h, w]:
            raise CocoFormatError(f"{where}: RLE size {seg['size']} != image size [{h}, {w}]")
        if not isinstance(seg["counts"], (list, str)):
            raise CocoFormatError(f"{where}: RLE counts must be a list or a string")
        return seg
    raise CocoFormatError(f"{where}: segmentation must be polygons or an RLE dict")


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

        images: dict[int, dict[str, Any]] = {}
        for k, img in enumerate(data["images"]):
            if not isinstance(img, dict) or not all(
                key in img for key in ("id", "file_name", "height", "width")
            ):
                msg = f"{name}: image #{k} needs id, file_name, height and width"
                raise CocoFormatError(msg)
            if img["id"] in images:
                raise CocoFormatError(f"{name}: duplicate image id {img['id']}")
            images[img["id"]] = img
        cats = {}
        for k, cat in enumerate(data["categories"]):
            if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
                raise CocoFormatError(f"{name}: category #{k} needs id and name")
            if cat["id"] in cats:
                raise CocoFormatError(f"{name}: duplicate category id {cat['id']}")
            cats[cat["id"]] = cat
        skipped = {c for c, cat in cats.items() if str(cat["name"]).lower() in _BACKGROUND_NAMES}
        kept = sorted(c for c in cats if c not in skipped)
        self.cat_id_to_label: dict[int, int] = {c: i + 1 for i, c in enumerate(kept)}
        self.label_to_cat_id: dict[int, int] = {i: c for c, i in self.cat_id_to_label.items()}
        self.class_names: list[str] = ["__background__"] + [str(cats[c]["name"]) for c in kept]
        self.num_classes: int = len(self.class_names)

        anns = data["annotations"]
        if anns and not any(isinstance(a, dict) and "segmentation" in a for a in anns):
            raise CocoFormatError(
                f"{name}: has no segmentation in any of its {len(anns)} annotations: "
                "this is a detection-only dataset, instance masks are required"
            )
        per_image: dict[int, list[_Instance]] = {i: [] for i in images}
        degenerate: list[Any] = []
        n_background = 0
        for k, ann in enumerate(anns):
            if not isinstance(ann, dict) or "id" not in ann:
                raise CocoFormatError(f"{name}: annotation #{k} is not an object with an 'id'")
            where = f"{name}: annotation id {ann['id']} (image id {ann.get('image_id')})"
            if ann.get("image_id") not in images:
                raise CocoFormatError(f"{where}: unknown image id {ann.get('image_id')}")
            if ann.get("category_id") not in cats:
                raise CocoFormatError(f"{where}: unknown category id {ann.get('category_id')}")
            if "segmentation" not in ann:
                raise CocoFormatError(f"{where}: has no segmentation")
            if ann.get("iscrowd", 0) not in (0, 1):  # True == 1, False == 0
                raise CocoFormatError(f"{where}: iscrowd must be 0/1 or a boolean")
            img = images[ann["image_id"]]
            h, w = int(img["height"]), int(img["width"])
            ann["iscrowd"] = int(ann.get("iscrowd", 0))
            seg = _check_segmentation(ann["segmentation"], h, w, where)
            # pycocotools cannot decode an empty polygon list: COCOeval gets an empty RLE
            ann["segmentation"] = seg if seg != [] else _empty_rle(h, w)
            if "bbox" not in ann or "area" not in ann:  # COCOeval needs both: fill them in
                rle = _to_rle(seg, h, w) if seg != [] else None
                ann.setdefault("bbox", mask_utils.toBbox(rle).tolist() if rle else [0, 0, 0, 0])
                ann.setdefault("area", float(mask_utils.area(rle)) if rle else 0.0)
            bbox = ann["bbox"]
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_num(v) for v in bbox)):
                raise CocoFormatError(f"{where}: bbox must be [x, y, w, h]")
            if ann["iscrowd"]:
                continue
            if ann["category_id"] in skipped:
                n_background += 1
                continue
            x0, y0 = min(max(bbox[0], 0), w), min(max(bbox[1], 0), h)
            x1, y1 = min(max(bbox[0] + bbox[2], 0), w), min(max(bbox[1] + bbox[3], 0), h)
            if x1 - x0 <= 1 or y1 - y0 <= 1 or float(ann["area"]) <= 0 or seg == []:
                degenerate.append(ann["id"])
                continue
            label = self.cat_id_to_label[ann["category_id"]]
            box = (float(x0), float(y0), float(x1), float(y1))
            inst = _Instance(ann["id"], label, seg, box, float(ann["area"]))
            per_image[ann["image_id"]].append(inst)
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

        self.coco: COCO = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco.createIndex()
        self._images = images
        self._instances = per_image
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
        try:
            with Image.open(path) as im:
                if im.mode.startswith("I"):  # 16/32-bit grayscale: scale to 8 bits
                    arr = np.asarray(im, dtype=np.float32) / 65535.0
                    arr = np.repeat(np.clip(arr, 0, 1)[..., None], 3, axis=2)
                else:
                    if im.mode == "P" and "transparency" in im.info:
                        im = im.convert("RGBA")
                    arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
            msg = f"{path}: cannot read image (image id {image_id}): {exc}"
            raise CocoFormatError(msg) from None
        h, w = self.get_height_and_width(i)
        if arr.shape[:2] != (h, w):
            raise CocoFormatError(
                f"{path}: image is {arr.shape[1]}x{arr.shape[0]} but the JSON says {w}x{h} "
                f"(image id {image_id})"
            )
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))

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
