"""The embedded synthetic dataset: determinism, exact annotations, content, cache."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from scipy import ndimage

from maskiou.data.synthetic import CATEGORIES, generate_synthetic_coco, main

SMALL = dict(num_train=20, num_val=100, seed=0, progress=False)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_coco(root, **SMALL)
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def _all_anns(root: Path) -> list[tuple[COCO, dict]]:
    out = []
    for split in ("train", "val"):
        coco = _coco(root / "annotations" / f"instances_{split}.json")
        out += [(coco, a) for a in coco.dataset["annotations"]]
    return out


def test_same_seed_same_bytes_other_seed_differs(data_dir: Path, tmp_path: Path) -> None:
    again = generate_synthetic_coco(tmp_path / "again", **SMALL).root
    ref, new = _files(data_dir), _files(again)
    assert ref.keys() == new.keys()
    assert len([k for k in ref if k.endswith(".jpg")]) == 120
    assert all(ref[k] == new[k] for k in ref)
    other = generate_synthetic_coco(tmp_path / "other", **{**SMALL, "seed": 1}).root
    other_files = _files(other)
    assert other_files["annotations/instances_val.json"] != ref["annotations/instances_val.json"]
    differ = [k for k in ref if k.endswith(".jpg") and ref[k] != other_files[k]]
    assert len(differ) == 120


def test_val_split_does_not_depend_on_train_size(data_dir: Path, tmp_path: Path) -> None:
    small = generate_synthetic_coco(tmp_path, num_train=3, num_val=100, progress=False)
    assert small.val_json.read_bytes() == (data_dir / "annotations/instances_val.json").read_bytes()


def test_area_and_bbox_are_exact_for_every_annotation(data_dir: Path) -> None:
    anns = _all_anns(data_dir)
    assert len(anns) > 300
    for coco, ann in anns:
        mask = coco.annToMask(ann)
        ys, xs = np.nonzero(mask)
        assert ann["area"] == mask.sum() >= 20
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert ann["iscrowd"] == 0
        img = coco.imgs[ann["image_id"]]
        assert mask.shape == (img["height"], img["width"]) == (128, 128)


def test_visible_masks_are_disjoint_and_images_match_json(data_dir: Path) -> None:
    coco = _coco(data_dir / "annotations" / "instances_val.json")
    for image_id, img in coco.imgs.items():
        with Image.open(data_dir / "val" / img["file_name"]) as im:
            assert (im.mode, im.size, im.format) == ("RGB", (128, 128), "JPEG")
        anns = coco.imgToAnns[image_id]
        if anns:  # occluded instances are annotated by their visible part only
            stack = np.stack([coco.annToMask(a) for a in anns]).astype(int)
            assert stack.sum(0).max() == 1


def test_content_covers_the_hard_cases(data_dir: Path) -> None:
    anns = _all_anns(data_dir)
    kinds = {"polygon": 0, "rle_list": 0, "rle_string": 0}
    holes = 0
    for coco, ann in anns:
        seg = ann["segmentation"]
        kind = "polygon" if isinstance(seg, list) else f"rle_{type(seg['counts']).__name__}"
        kinds[kind.replace("rle_str", "rle_string")] += 1
        mask = coco.annToMask(ann).astype(bool)
        holes += int(ndimage.binary_fill_holes(mask).sum() > mask.sum())
    assert kinds["polygon"] > len(anns) / 2  # mostly polygons ...
    assert kinds["rle_list"] > 10 and kinds["rle_string"] > 10  # ... and both RLE flavours
    assert holes > 10
    cat_ids = sorted({a["category_id"] for _, a in anns})
    assert cat_ids == sorted(c["id"] for c in CATEGORIES)
    assert len(cat_ids) >= 6 and cat_ids != list(range(1, len(cat_ids) + 1))
    sides = np.array([max(a["bbox"][2:]) for _, a in anns]) / 128
    assert sides.max() <= 0.46 and np.percentile(sides, 90) > 0.25 and sides.min() < 0.1
    coco = _coco(data_dir / "annotations" / "instances_val.json")
    per_image = [len(coco.imgToAnns[i]) for i in coco.imgs]
    assert 1 <= per_image.count(0) <= 12 and max(per_image) >= 6
    assert coco.dataset["categories"] == CATEGORIES


def test_cache_reused_until_parameters_change(tmp_path: Path) -> None:
    paths = generate_synthetic_coco(tmp_path, num_train=4, num_val=2, progress=False)
    old = 1_000_000_000
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    for p in files:
        os.utime(p, (old, old))
    assert generate_synthetic_coco(tmp_path, num_train=4, num_val=2, progress=False) == paths
    assert all(p.stat().st_mtime == old for p in files)  # nothing rewritten

    generate_synthetic_coco(tmp_path, num_train=4, num_val=2, seed=3, progress=False)
    assert paths.train_json.stat().st_mtime != old
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["params"] == {"num_train": 4, "num_val": 2, "seed": 3, "image_size": 128}

    generate_synthetic_coco(tmp_path, num_train=2, num_val=2, seed=3, progress=False)
    assert len(list(paths.train_images.glob("*.jpg"))) == 2  # stale images removed


def test_interrupted_run_is_not_reused(tmp_path: Path) -> None:
    paths = generate_synthetic_coco(tmp_path, num_train=2, num_val=1, progress=False)
    (tmp_path / "manifest.json").unlink()  # as if killed before the manifest was written
    os.utime(paths.val_json, (1_000_000_000, 1_000_000_000))
    generate_synthetic_coco(tmp_path, num_train=2, num_val=1, progress=False)
    assert paths.val_json.stat().st_mtime != 1_000_000_000
    assert (tmp_path / "manifest.json").is_file()
    os.utime(paths.val_json, (1_000_000_000, 1_000_000_000))
    generate_synthetic_coco(tmp_path, num_train=2, num_val=1, progress=False, force=True)
    assert paths.val_json.stat().st_mtime != 1_000_000_000


def test_image_size_parameter(tmp_path: Path) -> None:
    paths = generate_synthetic_coco(tmp_path, num_train=3, num_val=0, image_size=64, progress=False)
    data = json.loads(paths.train_json.read_text())
    assert {(i["height"], i["width"]) for i in data["images"]} == {(64, 64)}
    assert data["annotations"] and json.loads(paths.val_json.read_text())["images"] == []
    with Image.open(paths.train_images / data["images"][0]["file_name"]) as im:
        assert im.size == (64, 64)


def test_cli_writes_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--out", str(tmp_path), "--num-train", "3", "--num-val", "2", "--seed", "5"]
    assert main([*argv, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "train: 3 images" in out and "val: 2 images" in out
    assert str(tmp_path / "annotations" / "instances_train.json") in out
    assert main([*argv, "--no-progress"]) == 0
    assert "reused (same parameters)" in capsys.readouterr().out
    assert main(["--out", str(tmp_path), "--num-train", "-1"]) == 2
    assert "num_train" in capsys.readouterr().err
