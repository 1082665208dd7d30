"""COCO instance segmentation (a JSON and an image folder) as an ultralytics YOLO-seg dataset.

ultralytics' own ``convert_coco`` reads polygons only: an RLE mask (343 of the embedded
validation split's 839) is dropped. Here every instance goes through its mask, as
:class:`maskiou.data.coco.CocoInstanceDataset` decodes it (polygons and RLE alike, crowd and
degenerate annotations left out by the same rules), and becomes one polygon:

* the mask's contours (OpenCV, outer contours and their holes), each point the centre of a
  boundary pixel, written as ``(x + 0.5) / W, (y + 0.5) / H``: ultralytics denormalizes and
  truncates to int32 before ``cv2.fillPoly``, so every vertex lands on its own pixel;
* each hole is bridged into its outer contour (out along the shortest segment between them,
  round the hole, back the same way): even-odd filling empties the hole again;
* several parts are joined as ultralytics' ``merge_multi_segment`` joins a COCO object's
  polygons (its own function, thin connecting lines).

Classes are maskiou's: YOLO class ``k`` is maskiou label ``k + 1`` (labels are the category ids
in sorted order, background categories skipped), so the names in ``data.yaml`` are
``class_names[1:]`` and ``label_to_cat_id`` maps a YOLO class ``k`` back through ``k + 1``, as
for the other frameworks.

Layout (ultralytics finds a label by swapping ``images`` for ``labels`` in the image path)::

    root/data.yaml                       path, train/val folders, names {0: ..., ...}
    root/images/<split>/<file_name>      a symbolic link to the image (or a copy)
    root/labels/<split>/<file_name stem>.txt   one line per instance: class x1 y1 x2 y2 ...
    root/maskiou_source.json             what it was made from (skips the work when unchanged)

    python -m maskiou_integrations.ultralytics_data --output-dir runs/yolo-data   # embedded
    python -m maskiou_integrations.ultralytics_data --output-dir DIR \
        --split train train.json train/ --split val val.json val/                 # your data
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from maskiou.data.coco import CocoFormatError, CocoInstanceDataset

CONVERTER_VERSION = 1
STAMP = "maskiou_source.json"


def _bridge(outer: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """``outer`` [No, 2] with ``hole`` [Nh, 2] spliced in at their closest pair of points: out to
    the hole, once round it, and back along the same segment."""
    d = ((outer[:, None, :] - hole[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(d.argmin()), d.shape)
    return np.concatenate([outer[: i + 1], np.roll(hole, -j, axis=0), hole[j : j + 1], outer[i:]])


def _at_least_3(points: np.ndarray) -> np.ndarray:
    """A contour of 1 or 2 points (a speck, a thin line) repeated up to the 3 points a polygon
    needs; ``fillPoly`` still draws exactly its pixels."""
    return points if len(points) >= 3 else np.concatenate([points, points[-1:], points[-1:]])[:3]


def _gap(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1).min())


def _chain(parts: list[np.ndarray]) -> list[np.ndarray]:
    """The parts in the order of a greedy nearest-neighbour path from the longest contour:
    ``merge_multi_segment`` links consecutive parts, and every linking line is drawn."""
    order = [max(range(len(parts)), key=lambda k: len(parts[k]))]
    rest = [k for k in range(len(parts)) if k != order[0]]
    while rest:
        nearest = min(rest, key=lambda k: _gap(parts[order[-1]], parts[k]))
        order.append(nearest)
        rest.remove(nearest)
    return [parts[k] for k in order]


def mask_to_polygon(mask: np.ndarray) -> np.ndarray:
    """One polygon for a binary mask, holes bridged and parts joined (see the module docstring).

    Args:
        mask: UInt8 or bool [H, W].

    Returns:
        Float64 [K, 2] (x, y) in pixel indices (a vertex is the centre of a boundary pixel);
        [0, 2] for an empty mask.
    """
    m = np.pad(np.ascontiguousarray(mask, dtype=np.uint8) > 0, 1).astype(np.uint8)
    contours, hierarchy = cv2.findContours(m, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return np.zeros((0, 2))
    hierarchy = hierarchy.reshape(-1, 4)  # next, previous, first child, parent
    parts = []
    for k, contour in enumerate(contours):
        if hierarchy[k, 3] >= 0:  # a hole: spliced into its outer contour below
            continue
        poly = contour.reshape(-1, 2).astype(np.float64) - 1.0  # undo the padding
        child = hierarchy[k, 2]
        while child >= 0:
            poly = _bridge(poly, contours[child].reshape(-1, 2).astype(np.float64) - 1.0)
            child = hierarchy[child, 0]
        parts.append(_at_least_3(poly))
    if len(parts) == 1:
        return parts[0]
    parts = _chain(parts)
    from ultralytics.data.converter import merge_multi_segment

    return np.concatenate(merge_multi_segment([p.reshape(-1) for p in parts]), axis=0)


def polygon_line(label: int, polygon: np.ndarray, height: int, width: int) -> str:
    """One YOLO-seg label line: the class, then the polygon's pixel centres normalized."""
    xy = (polygon + 0.5) / np.array([width, height], dtype=np.float64)
    return f"{label} " + " ".join(f"{v:.6f}" for v in xy.reshape(-1))


def rasterize_line(line: str, height: int, width: int) -> tuple[int, np.ndarray]:
    """(class, UInt8 [H, W] mask) of one label line, rasterized as ultralytics' training data
    loader does (float32 coordinates, ``resample_segments``, ``polygon2mask`` at full size)."""
    from ultralytics.data.utils import polygon2mask
    from ultralytics.utils.ops import resample_segments

    values = line.split()
    xy = np.array(values[1:], dtype=np.float32).reshape(-1, 2) * np.array([width, height],
                                                                          dtype=np.float32)
    n = max(1000, len(xy) + 1)
    segment = resample_segments([xy], n=n)[0]
    return int(values[0]), polygon2mask((height, width), [segment.reshape(-1)])


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two binary masks of the same shape (1 when both are empty)."""
    a, b = a > 0, b > 0
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _image_name(dataset: CocoInstanceDataset, i: int) -> Path:
    return dataset.image_path(i).relative_to(dataset.image_dir)


def _write_split(dataset: CocoInstanceDataset, root: Path, split: str, link: bool) -> int:
    """Images (linked or copied) and labels of one split under ``root``; returns the number of
    instances written."""
    count = 0
    for i in range(len(dataset)):
        name = _image_name(dataset, i)
        image = root / "images" / split / name
        label = (root / "labels" / split / name).with_suffix(".txt")
        image.parent.mkdir(parents=True, exist_ok=True)
        label.parent.mkdir(parents=True, exist_ok=True)
        source = dataset.image_path(i).resolve()
        if link:
            os.symlink(source, image)
        else:
            shutil.copyfile(source, image)
        _, target = dataset[i]
        h, w = dataset.get_height_and_width(i)
        lines = [polygon_line(int(lab) - 1, mask_to_polygon(m.numpy()), h, w)
                 for m, lab in zip(target["masks"], target["labels"])]
        label.write_text("".join(line + "\n" for line in lines))
        count += len(lines)
    return count


def _class_map(datasets: dict[str, CocoInstanceDataset]) -> tuple[list[str], dict[int, int]]:
    """The class names (background first) and label_to_cat_id that every split shares."""
    (first, ds), *rest = datasets.items()
    for name, other in rest:
        if other.label_to_cat_id != ds.label_to_cat_id or other.class_names != ds.class_names:
            raise CocoFormatError(f"{other.ann_file}: the categories of split '{name}' differ "
                                  f"from those of split '{first}' ({ds.ann_file})")
    return ds.class_names, ds.label_to_cat_id


def _stamp(splits: dict[str, tuple[Path, Path]], link: bool) -> dict[str, Any]:
    from maskiou.records import file_sha1

    return {"converter": CONVERTER_VERSION, "link": link,
            "splits": {name: {"json": str(Path(j).resolve()), "json_sha1": file_sha1(j),
                              "images": str(Path(d).resolve())}
                       for name, (j, d) in sorted(splits.items())}}


def convert(output_dir: str | Path, splits: dict[str, tuple[str | Path, str | Path]],
            link: bool = True) -> Path:
    """Write the YOLO-seg dataset of ``splits`` (``{"train": (json, image folder), "val": ...}``)
    into ``output_dir`` and return its ``data.yaml``.

    Nothing is done when ``output_dir`` already holds the conversion of the same files (same
    JSON content, same folders, same converter). The folder is built beside ``output_dir`` and
    moved into place when complete, so an interrupted run leaves no half-written dataset.
    ``link``: symbolic links to the images (else copies).
    """
    import yaml

    out = Path(output_dir).resolve()
    paths = {name: (Path(j), Path(d)) for name, (j, d) in splits.items()}
    stamp = _stamp(paths, link)
    data_yaml = out / "data.yaml"
    try:
        if json.loads((out / STAMP).read_text())["source"] == stamp and data_yaml.is_file():
            return data_yaml
    except (OSError, ValueError, KeyError, TypeError):
        pass
    datasets = {name: CocoInstanceDataset(j, d) for name, (j, d) in paths.items()}
    for ds in datasets.values():
        ds.check_files()
    class_names, label_to_cat_id = _class_map(datasets)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # as mkdir would make it, not mkdtemp's 0700
    try:
        counts = {name: _write_split(ds, tmp, name, link) for name, ds in datasets.items()}
        data = {"path": str(out), **{name: f"images/{name}" for name in datasets},
                "names": dict(enumerate(class_names[1:]))}
        (tmp / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        record = {"source": stamp, "class_names": class_names,
                  "label_to_cat_id": {str(k): v for k, v in label_to_cat_id.items()},
                  "instances": counts}
        (tmp / STAMP).write_text(json.dumps(record, indent=1) + "\n")
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / "data")
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return data_yaml


def embedded_splits() -> dict[str, tuple[Path, Path]]:
    """The embedded synthetic dataset's train and val (JSON, image folder), generated into
    ``$MASKIOU_CACHE`` if absent."""
    from maskiou.models.config import resolve
    from maskiou.models.paths import resolve_split

    cfg = resolve("synthetic-cpu", {})
    return {split: resolve_split(cfg, split) for split in ("train", "val")}


def embedded_dataset(output_dir: str | Path | None = None) -> Path:
    """``data.yaml`` of the embedded dataset in YOLO-seg form (by default in
    ``$MASKIOU_CACHE/ultralytics/<the synthetic folder's name>``)."""
    splits = embedded_splits()
    if output_dir is None:
        from maskiou.models.paths import cache_dir

        output_dir = cache_dir() / "ultralytics" / splits["train"][0].parents[1].name
    return convert(output_dir, splits)


def label_ious(data_yaml: str | Path, split: str) -> np.ndarray:
    """Per instance of ``split``, the IoU of the written polygon (rasterized as ultralytics
    trains on it, :func:`rasterize_line`) with the dataset's own mask (decoded by
    :class:`CocoInstanceDataset` from the COCO JSON the folder was made from)."""
    root = Path(data_yaml).parent
    source = json.loads((root / STAMP).read_text())["source"]["splits"][split]
    dataset = CocoInstanceDataset(source["json"], source["images"])
    ious = []
    for i in range(len(dataset)):
        label = (root / "labels" / split / _image_name(dataset, i)).with_suffix(".txt")
        lines = label.read_text().splitlines()
        _, target = dataset[i]
        h, w = dataset.get_height_and_width(i)
        if len(lines) != len(target["masks"]):
            raise CocoFormatError(f"{label}: {len(lines)} lines for {len(target['masks'])} "
                                  "instances")
        for line, mask, lab in zip(lines, target["masks"], target["labels"]):
            cls, raster = rasterize_line(line, h, w)
            if cls != int(lab) - 1:
                raise CocoFormatError(f"{label}: class {cls} where the label is {int(lab)}")
            ious.append(mask_iou(raster, mask.numpy()))
    return np.asarray(ious)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", help="default: $MASKIOU_CACHE/ultralytics/<dataset>")
    p.add_argument("--split", nargs=3, action="append", metavar=("NAME", "JSON", "IMAGES"),
                   help="a split to convert (repeat); default: the embedded train and val")
    p.add_argument("--copy", action="store_true", help="copy the images (default: link them)")
    p.add_argument("--check", metavar="SPLIT", action="append", default=[],
                   help="report the round-trip IoU of SPLIT's polygons with its masks")
    args = p.parse_args(argv)
    try:
        if args.split:
            if args.output_dir is None:
                p.error("--output-dir is needed with --split")
            splits = {name: (Path(j), Path(d)) for name, j, d in args.split}
            data_yaml = convert(args.output_dir, splits, link=not args.copy)
        else:
            data_yaml = embedded_dataset(args.output_dir)
    except CocoFormatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report: dict[str, Any] = {"data": str(data_yaml)}
    for split in args.check:
        ious = label_ious(data_yaml, split)
        report[f"{split}_roundtrip_iou"] = {
            "instances": len(ious), "mean": round(float(ious.mean()), 5),
            "min": round(float(ious.min()), 5), "below_0.9": int((ious < 0.9).sum())}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
