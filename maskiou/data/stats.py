"""Statistics of a COCO-format instance-segmentation split, to set datasets side by side.

    python -m maskiou.data.stats shapes=DIR/annotations/instances_train.json \\
        scenes=DIR2/annotations/instances_train.json

prints one markdown column per split (the table of ``docs/generators.md``): images and their
size, classes, instances per image, empty images, box sides (in pixels and as a share of the
image side), the visible area, instances cut by the image border and the segmentation formats.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np


def split_stats(data: dict[str, Any]) -> dict[str, Any]:
    """Figures of one COCO dict (``images``, ``annotations``, ``categories``); box side =
    the longer side of ``bbox``, percentiles 5 / 50 / 95."""
    images = {img["id"]: img for img in data["images"]}
    anns = data["annotations"]
    index = {image_id: k for k, image_id in enumerate(images)}
    per_image = np.bincount([index[a["image_id"]] for a in anns], minlength=len(images))
    sides = np.array([max(a["bbox"][2:]) for a in anns], dtype=float)
    rel = np.array([max(a["bbox"][2:]) / max(images[a["image_id"]]["width"],
                                             images[a["image_id"]]["height"]) for a in anns])
    area = np.array([a["area"] for a in anns], dtype=float)

    def cut(a: dict[str, Any]) -> bool:
        x, y, w, h = a["bbox"]
        img = images[a["image_id"]]
        return x <= 0 or y <= 0 or x + w >= img["width"] or y + h >= img["height"]

    def pct(v: np.ndarray) -> list[float]:
        return [float(p) for p in np.percentile(v, [5, 50, 95])] if v.size else []

    sizes = sorted({(img["width"], img["height"]) for img in images.values()})
    return {
        "images": len(images), "image_sizes": sizes,
        "classes": [c["id"] for c in data["categories"]],
        "class_names": [c["name"] for c in data["categories"]],
        "instances_per_image_mean": float(per_image.mean()) if per_image.size else 0.0,
        "instances_per_image_max": int(per_image.max()) if per_image.size else 0,
        "empty_images": float((per_image == 0).mean()) if per_image.size else 0.0,
        "box_side_px": pct(sides), "box_side_rel": pct(rel), "sqrt_area_px": pct(np.sqrt(area)),
        "cut_by_border": float(np.mean([cut(a) for a in anns])) if anns else 0.0,
        "polygon_share": float(np.mean([isinstance(a["segmentation"], list) for a in anns]))
        if anns else 0.0,
    }


def markdown_table(stats: dict[str, dict[str, Any]]) -> str:
    """One column per named split."""
    rows = [
        ("images", lambda s: f"{s['images']} of " + ", ".join(f"{w}x{h}"
                                                             for w, h in s["image_sizes"])),
        ("classes (ids)", lambda s: f"{len(s['classes'])}: " + ", ".join(
            f"{n} ({i})" for n, i in zip(s["class_names"], s["classes"], strict=True))),
        ("instances per image, mean / max", lambda s: f"{s['instances_per_image_mean']:.2f} / "
                                                      f"{s['instances_per_image_max']}"),
        ("empty images", lambda s: f"{100 * s['empty_images']:.1f}%"),
        ("box side, px (5th / median / 95th pct)",
         lambda s: " / ".join(f"{v:.0f}" for v in s["box_side_px"])),
        ("box side / image side", lambda s: " / ".join(f"{100 * v:.0f}%"
                                                       for v in s["box_side_rel"])),
        ("sqrt(visible area), px", lambda s: " / ".join(f"{v:.1f}" for v in s["sqrt_area_px"])),
        ("cut by the image border", lambda s: f"{100 * s['cut_by_border']:.1f}%"),
        ("polygon annotations (rest RLE)", lambda s: f"{100 * s['polygon_share']:.0f}%"),
    ]
    names = list(stats)
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(fmt(stats[n]) for n in names) + " |"
              for label, fmt in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m maskiou.data.stats",
                                     description="Statistics of COCO splits, side by side.")
    parser.add_argument("splits", nargs="+", metavar="NAME=JSON",
                        help="a column name and a COCO annotation file")
    args = parser.parse_args(argv)
    stats: dict[str, dict[str, Any]] = {}
    for item in args.splits:
        name, sep, path = item.partition("=")
        if not sep or not name:
            print(f"error: {item!r}: expected NAME=JSON", file=sys.stderr)
            return 2
        try:
            stats[name] = split_stats(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"error: {path}: not a readable COCO instances file ({exc})", file=sys.stderr)
            return 2
    print(markdown_table(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
