"""A COCO-format split enlarged to other statistics, written the way third-party sets come.

    python research/enlarge_coco.py SRC.json SRC_IMAGES/ OUT_DIR/ --size 600

Every image resized (PIL, bilinear) so that its longer side is ``--size`` px, its polygons and
boxes scaled by the same factor (RLE masks resized bilinearly and cut at 0.5), then rewritten
by ``benchmarks/third_party_coco.py``'s ``convert`` (polygons and boxes in whole pixels,
boolean ``iscrowd``, an unused ``background`` category with id 0). Writes
``OUT_DIR/images/`` and ``OUT_DIR/instances.json``. The detectron2 page's fine-tuning rows
("A recipe that carries to other data") enlarge the embedded splits to 600 px with it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from third_party_coco import convert  # noqa: E402


def scale_mask(seg: dict[str, Any], height: int, width: int, size: tuple[int, int]
               ) -> dict[str, Any]:
    """An RLE mask of a ``height`` x ``width`` image resized to ``size`` (h, w): bilinear on
    the 0/1 mask, kept where >= 0.5; a compressed RLE with ``counts`` a string."""
    rle = mask_utils.frPyObjects(seg, height, width) if isinstance(seg["counts"], list) else seg
    mask = mask_utils.decode(rle).astype(np.float32)
    resized = cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) >= 0.5
    out = mask_utils.encode(np.asfortranarray(resized.astype(np.uint8)))
    return {"size": out["size"], "counts": out["counts"].decode("ascii")}


def scale_annotation(ann: dict[str, Any], factor: float, image: dict[str, Any],
                     size: tuple[int, int]) -> dict[str, Any]:
    """``ann`` (of ``image``, the source's entry) with its polygons (or RLE mask, resized to
    ``size`` (h, w)), box and area scaled by ``factor`` (floats)."""
    seg = ann["segmentation"]
    if isinstance(seg, dict):
        seg = scale_mask(seg, int(image["height"]), int(image["width"]), size)
    else:
        seg = [[v * factor for v in poly] for poly in seg]
    return {**ann, "segmentation": seg,
            "bbox": [v * factor for v in ann["bbox"]],
            "area": float(ann.get("area", 0.0)) * factor * factor}


def enlarge(data: dict[str, Any], images: Path, out_images: Path, size: int) -> dict[str, Any]:
    """The dataset dict with every image resized to a longer side of ``size`` px (written to
    ``out_images``) and its annotations scaled to match, before :func:`convert`."""
    out_images.mkdir(parents=True, exist_ok=True)
    factors, sources, sizes, new_images = {}, {}, {}, []
    for img in data["images"]:
        h, w = int(img["height"]), int(img["width"])
        factor = size / max(h, w)
        nw, nh = round(w * factor), round(h * factor)
        with Image.open(images / img["file_name"]) as im:
            im.convert("RGB").resize((nw, nh), Image.BILINEAR).save(out_images / img["file_name"])
        factors[img["id"]], sources[img["id"]], sizes[img["id"]] = factor, img, (nh, nw)
        new_images.append({**img, "width": nw, "height": nh})
    anns = [scale_annotation(a, factors[a["image_id"]], sources[a["image_id"]],
                             sizes[a["image_id"]]) for a in data["annotations"]]
    return {**data, "images": new_images, "annotations": anns}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src_json")
    p.add_argument("src_images")
    p.add_argument("out_dir")
    p.add_argument("--size", type=int, default=600)
    args = p.parse_args(argv)
    out = Path(args.out_dir)
    data = enlarge(json.loads(Path(args.src_json).read_text()), Path(args.src_images),
                   out / "images", args.size)
    rewritten = convert(data)
    (out / "instances.json").write_text(json.dumps(rewritten))
    print(json.dumps({"images": len(rewritten["images"]),
                      "annotations": len(rewritten["annotations"]), "size": args.size}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
