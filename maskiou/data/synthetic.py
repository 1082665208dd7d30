"""Synthetic COCO-format instance-segmentation datasets: the embedded one ("shapes") and a
second generator with other statistics ("scenes", ``_scenes.py``; ``generator="scenes"``).

Built around the Mask Scoring R-CNN premise: how good a mask can be is not the same thing as how
easy the object is to classify. The class is given by the *shape* alone (colours and textures are
drawn per instance, independently of the class), so every class is about equally easy to
recognise once seen; mask difficulty then comes from two independent sources:

* the class itself: convex (ellipse, rectangle, triangle), concave (star, cross), a hole (ring),
  thin with tapering tips (crescent);
* per-instance factors drawn independently of the class: scale (8%-45% of the image side),
  occlusion by later instances (the annotation is the *visible* part), soft or blurred edges, and
  low contrast against a textured, noisy background.

Layout written under ``out_dir``::

    train/000000000001.jpg ...     JPEG q95, RGB, image_size x image_size
    val/000000000001.jpg ...
    annotations/instances_train.json, annotations/instances_val.json
    manifest.json                  generator version + parameters, written last

Annotations: polygons where the mask is a plain polygon, RLE (uncompressed ``counts`` list or
compressed string) for occluded instances, rings (holes) and about 10% of the rest. For every
annotation ``area`` is the pixel count of the decoded mask and ``bbox`` its tight box [x, y, w, h].
Each image is rendered from its own seed (seed, split, index), so the output is identical for
identical parameters, whatever the order of rendering.

The "scenes" generator (``docs/generators.md``) writes the same layout with its own classes,
shapes, backgrounds and occlusion; its manifest names it (``"generator":
"maskiou.data.synthetic:scenes"``), the embedded one's manifest is what it always was.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from tqdm import tqdm

from maskiou.data import _scenes, _shapes

GENERATOR_VERSION = 1
CATEGORIES: list[dict[str, Any]] = [dict(c) for c in _shapes.CATEGORIES]
"""COCO category dicts (id, name, supercategory); ids are deliberately non-contiguous."""

Generator = Literal["shapes", "scenes"]
GENERATORS: dict[str, Any] = {"shapes": _shapes, "scenes": _scenes}
"""Each generator's module: ``CATEGORIES`` and ``render_image(rng, size)``."""
SCENES_VERSION = 1
DEFAULT_IMAGE_SIZE: dict[str, int] = {"shapes": 128, "scenes": _scenes.IMAGE_SIZE}


def categories(generator: Generator = "shapes") -> list[dict[str, Any]]:
    """The COCO category dicts of ``generator``'s datasets."""
    return [dict(c) for c in _generator(generator).CATEGORIES]


def _generator(name: str) -> Any:
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; choose one of {', '.join(GENERATORS)}")
    return GENERATORS[name]


def _identity(generator: Generator) -> dict[str, Any]:
    """What the manifest says wrote the data (the embedded generator's entry is unchanged)."""
    if generator == "shapes":
        return {"generator": "maskiou.data.synthetic", "version": GENERATOR_VERSION}
    return {"generator": f"maskiou.data.synthetic:{generator}", "version": SCENES_VERSION}

_IMAGE_NAME = re.compile(r"^\d{12}\.jpg$")


@dataclass(frozen=True)
class SyntheticPaths:
    """Where a generated dataset lives (the standard reader arguments for each split)."""

    root: Path
    train_json: Path
    train_images: Path
    val_json: Path
    val_images: Path


def _paths(root: Path) -> SyntheticPaths:
    return SyntheticPaths(
        root=root,
        train_json=root / "annotations" / "instances_train.json",
        train_images=root / "train",
        val_json=root / "annotations" / "instances_val.json",
        val_images=root / "val",
    )


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _render_split(
    split: str, num: int, seed: int, image_size: int, image_dir: Path, bar: tqdm,
    generator: Generator = "shapes",
) -> dict[str, Any]:
    """Render and write one split; return its COCO dict."""
    module = _generator(generator)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    split_code = {"train": 0, "val": 1}[split]
    for index in range(num):
        image_id = index + 1
        rng = np.random.default_rng([seed, split_code, index])
        pixels, instances = module.render_image(rng, image_size)
        file_name = f"{image_id:012d}.jpg"
        Image.fromarray(pixels).save(image_dir / file_name, quality=95, subsampling=0)
        images.append(
            {"id": image_id, "file_name": file_name, "height": image_size, "width": image_size}
        )
        for inst in instances:
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, **inst, "iscrowd": 0}
            )
        bar.update(1)
    return {
        "info": {
            "description": f"maskiou synthetic {generator} ({split})",
            "version": str(_identity(generator)["version"]),
            "seed": seed,
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories(generator),
    }


def _clear_outputs(root: Path) -> None:
    """Remove what an earlier run wrote (only our own file names) before regenerating."""
    (root / "manifest.json").unlink(missing_ok=True)
    for split in ("train", "val"):
        d = root / split
        if d.is_dir():
            for p in d.iterdir():
                if _IMAGE_NAME.match(p.name) and p.is_file():
                    p.unlink()
    for name in ("instances_train.json", "instances_val.json"):
        (root / "annotations" / name).unlink(missing_ok=True)


def _read_manifest(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def generate_synthetic_coco(
    out_dir: str | Path,
    num_train: int = 1000,
    num_val: int = 200,
    seed: int = 0,
    image_size: int = 128,
    force: bool = False,
    progress: bool = True,
    generator: Generator = "shapes",
) -> SyntheticPaths:
    """Write (or reuse) the synthetic COCO-format dataset under ``out_dir``.

    Args:
        out_dir: output folder; created if missing.
        num_train, num_val: number of images per split (>= 0).
        seed: base seed (>= 0); image ``i`` of a split depends only on (seed, split, i).
        image_size: side of the square RGB images in pixels (>= 32).
        force: regenerate even if ``out_dir/manifest.json`` matches these parameters.
        progress: show a tqdm progress bar.
        generator: ``"shapes"`` (the embedded data) or ``"scenes"`` (the second generator: other
            shapes, sizes, backgrounds, occlusion and classes; 160-px images are its default
            size elsewhere, e.g. ``TrainConfig``, but any ``image_size`` works).

    Returns:
        SyntheticPaths with the annotation files and image folders of both splits.

    A dataset whose manifest records the same generator version and parameters is reused
    without touching any file. The manifest is written last, so an interrupted run is never
    mistaken for a complete one.
    """
    if num_train < 0 or num_val < 0:
        raise ValueError(f"num_train and num_val must be >= 0, got {num_train}, {num_val}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    _generator(generator)
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    root = Path(out_dir)
    paths = _paths(root)
    params = {"num_train": num_train, "num_val": num_val, "seed": seed, "image_size": image_size}
    wanted = {**_identity(generator), "params": params}
    manifest = _read_manifest(root)
    if (
        not force
        and manifest is not None
        and {k: manifest.get(k) for k in wanted} == wanted
        and paths.train_json.is_file()
        and paths.val_json.is_file()
    ):
        return paths

    _clear_outputs(root)
    for d in (paths.train_images, paths.val_images, root / "annotations"):
        d.mkdir(parents=True, exist_ok=True)
    counts: dict[str, dict[str, int]] = {}
    with tqdm(total=num_train + num_val, desc=generator, disable=not progress) as bar:
        for split, num, image_dir, json_path in (
            ("train", num_train, paths.train_images, paths.train_json),
            ("val", num_val, paths.val_images, paths.val_json),
        ):
            dataset = _render_split(split, num, seed, image_size, image_dir, bar, generator)
            _write_atomic(json_path, json.dumps(dataset, separators=(",", ":")))
            counts[split] = {
                "images": len(dataset["images"]),
                "annotations": len(dataset["annotations"]),
            }
    _write_atomic(root / "manifest.json", json.dumps({**wanted, "counts": counts}, indent=2))
    return paths


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m maskiou.data.synthetic --out DIR [--num-train N] ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m maskiou.data.synthetic",
        description="Write a synthetic COCO-format dataset (reused if already there).",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--num-train", type=int, default=1000)
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=None,
                        help="image side in pixels (default: 128 for shapes, 160 for scenes)")
    parser.add_argument("--generator", choices=list(GENERATORS), default="shapes",
                        help="shapes: the embedded data; scenes: the second generator")
    parser.add_argument("--force", action="store_true", help="regenerate even if cached")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    manifest = Path(args.out) / "manifest.json"
    before = manifest.stat().st_mtime_ns if manifest.is_file() else None
    try:
        size = args.image_size or DEFAULT_IMAGE_SIZE[args.generator]
        paths = generate_synthetic_coco(
            args.out, args.num_train, args.num_val, args.seed, size,
            force=args.force, progress=not args.no_progress, generator=args.generator,
        )  # fmt: skip
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = json.loads((paths.root / "manifest.json").read_text(encoding="utf-8"))["counts"]
    reused = before is not None and manifest.stat().st_mtime_ns == before
    how = (
        "reused (same parameters)" if reused else f"written in {time.perf_counter() - start:.1f} s"
    )
    print(f"synthetic COCO dataset in {paths.root}: {how}")
    for split in ("train", "val"):
        c = counts[split]
        ann, img = getattr(paths, f"{split}_json"), getattr(paths, f"{split}_images")
        print(f"  {split}: {c['images']} images in {img}, {c['annotations']} annotations in {ann}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
