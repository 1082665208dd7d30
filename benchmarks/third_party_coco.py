"""Rewrite a COCO-format set the way third-party sets often come: every mask as polygons
(outer contours of the mask, as cv2 traces them, in whole pixels), boxes in whole pixels,
``iscrowd`` as a JSON boolean, and an unused ``background`` category with id 0.

    python benchmarks/third_party_coco.py SRC.json OUT.json   # the images stay where they are

Used by the detectron2 recipe's comparison on data it was not tuned on
(docs/frameworks/detectron2.md, "A recipe that carries").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils


def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """The outer contours of a binary ``mask`` (uint8[H, W]) as COCO polygons (x, y pairs of
    whole pixels, JSON integers as annotation tools often write them), those of fewer than 3
    points left out."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        pts = c.reshape(-1, 2)
        if len(pts) >= 3:
            polys.append([int(v) for v in pts.reshape(-1)])
    return polys


def convert(data: dict[str, Any]) -> dict[str, Any]:
    """The rewritten dataset dict (see the module docstring)."""
    images = {img["id"]: img for img in data["images"]}
    anns = []
    for ann in data["annotations"]:
        img = images[ann["image_id"]]
        h, w = int(img["height"]), int(img["width"])
        seg = ann["segmentation"]
        if isinstance(seg, dict):
            rle = mask_utils.frPyObjects(seg, h, w) if isinstance(seg["counts"], list) else seg
            polys = mask_to_polygons(mask_utils.decode(rle))
            if not polys:
                continue
            seg = polys
        else:
            seg = [[int(round(v)) for v in poly] for poly in seg]
        x, y, bw, bh = (float(v) for v in ann["bbox"])
        box = [round(x), round(y), round(x + bw) - round(x), round(y + bh) - round(y)]
        anns.append({**ann, "segmentation": seg, "bbox": box,
                     "iscrowd": bool(ann.get("iscrowd", 0))})
    cats = [{"id": 0, "name": "background", "supercategory": "none"}] + list(data["categories"])
    return {**data, "categories": cats, "annotations": anns}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src_json")
    p.add_argument("out_json")
    args = p.parse_args(argv)
    out = convert(json.loads(Path(args.src_json).read_text()))
    Path(args.out_json).write_text(json.dumps(out))
    print(json.dumps({"images": len(out["images"]), "annotations": len(out["annotations"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
