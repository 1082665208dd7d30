"""The second generator, "scenes": determinism, exact visible-part annotations, the statistics
it changes, the config and cache plumbing, and the embedded "shapes" output left unchanged."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from scipy import ndimage

from maskiou.data import _scenes, _shapes
from maskiou.data.stats import main as stats_main
from maskiou.data.stats import split_stats
from maskiou.data.synthetic import categories, generate_synthetic_coco, main
from maskiou.evaluation.benchmark import addon_split
from maskiou.models.config import resolve
from maskiou.models.paths import (
    addon_dir,
    resolve_split,
    source_split,
    synthetic_dir,
    training_source,
)
from maskiou.options import ConfigError

SMALL = dict(num_train=16, num_val=8, seed=0, image_size=160, progress=False, generator="scenes")


@pytest.fixture(scope="module")
def scenes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scenes")
    generate_synthetic_coco(root, **SMALL)
    return root


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def _coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_same_seed_same_bytes_and_image_k_does_not_depend_on_the_others(
        scenes_dir: Path, tmp_path: Path) -> None:
    again = _files(generate_synthetic_coco(tmp_path / "again", **SMALL).root)
    ref = _files(scenes_dir)
    assert ref.keys() == again.keys() and all(ref[k] == again[k] for k in ref)
    fewer = generate_synthetic_coco(tmp_path / "fewer", **{**SMALL, "num_train": 3}).root
    for name in ("000000000001.jpg", "000000000003.jpg"):
        assert (fewer / "train" / name).read_bytes() == ref[f"train/{name}"]
    assert (fewer / "annotations/instances_val.json").read_bytes() == \
        ref["annotations/instances_val.json"]
    other = _files(generate_synthetic_coco(tmp_path / "other", **{**SMALL, "seed": 4}).root)
    assert all(other[k] != ref[k] for k in ref if k.endswith(".jpg"))


def test_every_annotation_is_the_exact_visible_part(scenes_dir: Path) -> None:
    anns = 0
    for split, count in (("train", 16), ("val", 8)):
        coco = _coco(scenes_dir / "annotations" / f"instances_{split}.json")
        assert len(coco.imgs) == count
        for image_id, img in coco.imgs.items():
            assert (img["height"], img["width"]) == (160, 160)
            with Image.open(scenes_dir / split / img["file_name"]) as im:
                assert (im.mode, im.size) == ("RGB", (160, 160))
            masks = [coco.annToMask(a) for a in coco.imgToAnns[image_id]]
            for ann, mask in zip(coco.imgToAnns[image_id], masks, strict=True):
                ys, xs = np.nonzero(mask)
                assert ann["area"] == mask.sum() >= _scenes.MIN_VISIBLE_PIXELS
                assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                                       ys.max() - ys.min() + 1]
                assert ann["iscrowd"] == 0
                anns += 1
            if masks:  # occluders subtracted: no pixel belongs to two annotations
                assert np.stack(masks).astype(int).sum(0).max() == 1
    assert anns > 100


def test_the_statistics_it_changes(scenes_dir: Path) -> None:
    data = json.loads((scenes_dir / "annotations/instances_train.json").read_text())
    ids = [c["id"] for c in data["categories"]]
    assert ids == [3, 5, 8, 13, 21] and data["categories"] == categories("scenes")
    names = {c["name"] for c in data["categories"]}
    assert not names & {c["name"] for c in _shapes.CATEGORIES}
    anns = data["annotations"]
    assert {a["category_id"] for a in anns} == set(ids)
    per_image = np.bincount([a["image_id"] for a in anns], minlength=17)[1:]
    assert per_image.max() > _shapes.MAX_INSTANCES  # more instances than the embedded data
    sides = np.array([max(a["bbox"][2:]) for a in anns])
    assert sides.max() > 0.4 * 160 and sides.min() < 0.05 * 160
    cut = [a for a in anns if a["bbox"][0] == 0 or a["bbox"][1] == 0
           or a["bbox"][0] + a["bbox"][2] == 160 or a["bbox"][1] + a["bbox"][3] == 160]
    assert len(cut) > 10  # objects cut by the border: annotated as RLE, never by polygons
    polygons = [np.array(a["segmentation"][0]) for a in anns if isinstance(a["segmentation"], list)]
    assert all(p.min() >= 0 and p.max() <= 159 for p in polygons)
    kinds = {isinstance(a["segmentation"], list) for a in anns}
    assert kinds == {True, False}
    manifest = json.loads((scenes_dir / "manifest.json").read_text())
    assert manifest["generator"] == "maskiou.data.synthetic:scenes"
    assert data["info"]["description"] == "maskiou synthetic scenes (train)"


def _square(size: int, y0: int, x0: int, side: int) -> np.ndarray:
    m = np.zeros((size, size), dtype=bool)
    m[y0:y0 + side, x0:x0 + side] = True
    return m


def test_keep_visible_subtracts_later_instances_and_drops_the_hidden() -> None:
    bottom = {"full": _square(20, 0, 0, 10)}   # 100 px
    top = {"full": _square(20, 0, 2, 10)}      # covers 80 of them: 20 left visible (20%)
    kept = _shapes.keep_visible([bottom, top], 20, 0.15, 12)
    assert [d is bottom for d, _ in kept] == [True, False]  # paint order kept
    visible = kept[0][1]
    assert visible.sum() == 20 and visible[:10, :2].all()
    assert (kept[1][1] == top["full"]).all()
    assert len(_shapes.keep_visible([bottom, top], 20, 0.3, 12)) == 1  # the embedded threshold
    assert len(_shapes.keep_visible([bottom, top], 20, 0.15, 21)) == 1  # too few pixels


def test_each_family_is_one_simple_region_of_radius_about_one() -> None:
    eight = np.ones((3, 3))  # a thin band's tip may hold on by a corner
    for cat in _scenes.CATEGORIES:
        for radius in (5.0, 30.0):
            for k in range(20):
                poly = _scenes.unit_polygon(cat["name"], np.random.default_rng(k), radius)
                assert 0.5 < np.abs(poly).max() <= 1.05
                mask = _shapes._poly_mask((poly * radius + 40.3).ravel().tolist(), 80)
                assert ndimage.label(mask, structure=eight)[1] == 1  # one piece, no hole
                assert ndimage.binary_fill_holes(mask).sum() == mask.sum()
                if radius == 30.0:  # a self-crossing outline would rasterise to less
                    assert mask.sum() == pytest.approx(_scenes._shoelace(poly) * 900, rel=0.1)


def test_the_embedded_shapes_output_is_unchanged(tmp_path: Path) -> None:
    # Hashes taken from the generator before "scenes" existed (commit 2e56ba4).
    rendered = {(0, 0): ("c147fbe6eaa3565a66c21f11ea6d003c961c1fee",
                         "812c66f3e48f666d1f5a022aff160d74a6af2c4a"),
                (0, 7): ("ab9199b9e8efa51e1d80c0f5a563a61337a5d2b4",
                         "64659d37c0067cf258fb026a3e593e68705bcd71"),
                (1, 3): ("53e1985f61c9de6c8ea681320c4e9a88e4f5769b",
                         "bcbeac99aea37cbe9c7572da1a2a5c5f34e7b3f7")}
    for (split, index), (pixels_sha1, instances_sha1) in rendered.items():
        pixels, instances = _shapes.render_image(np.random.default_rng([0, split, index]), 128)
        assert _sha1(pixels.tobytes()) == pixels_sha1
        assert _sha1(json.dumps(instances).encode()) == instances_sha1
    paths = generate_synthetic_coco(tmp_path, 20, 5, progress=False)
    assert _sha1(paths.train_json.read_bytes()) == "9ab4f7815cd59d7d75fc2962b982cd17ede84b8c"
    assert _sha1(paths.val_json.read_bytes()) == "4bc8530aa68daa4488713d067968de100f81dcce"
    assert _sha1((tmp_path / "manifest.json").read_bytes()) == \
        "005aaf598e9150439d44c5bffbad87ec453767d4"


def test_config_and_cache_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASKIOU_CACHE", str(tmp_path))
    shapes = resolve("synthetic-cpu", {})
    assert shapes.synthetic_generator == "shapes"
    assert synthetic_dir(shapes) == tmp_path / "synthetic_s128_n1000-200_seed0"
    scenes = resolve("synthetic-cpu", {"synthetic_generator": "scenes",
                                       "synthetic_image_size": 160, "synthetic_train": 2,
                                       "synthetic_val": 1})
    assert synthetic_dir(scenes) == tmp_path / "synthetic-scenes_s160_n2-1_seed0"
    assert addon_dir(2000) == tmp_path / "addon_s128_n2000_seed1"
    assert addon_dir(2000, 160, 1, "scenes") == tmp_path / "addon-scenes_s160_n2000_seed1"
    with pytest.raises(ConfigError, match="synthetic_generator"):
        resolve("synthetic-cpu", {"synthetic_generator": "blobs"})
    with pytest.raises(ValueError, match="unknown generator 'blobs'"):
        generate_synthetic_coco(tmp_path / "x", 1, 0, generator="blobs")  # type: ignore[arg-type]

    train_json, _ = resolve_split(scenes, "train", progress=False)
    assert [c["id"] for c in json.loads(train_json.read_text())["categories"]] == \
        [3, 5, 8, 13, 21]
    source = training_source(scenes)
    assert source["synthetic"]["generator"] == "scenes"
    assert source_split(source) == resolve_split(scenes, "train", progress=False)
    addon_json, _ = addon_split(2, progress=False, image_size=160, seed=1, generator="scenes")
    assert addon_json.parent.parent == tmp_path / "addon-scenes_s160_n2_seed1"
    data = json.loads(addon_json.read_text())
    assert data["images"][0]["height"] == 160 and data["categories"] == categories("scenes")


def test_cli_takes_the_generator_and_its_image_size(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--out", str(tmp_path), "--num-train", "2", "--num-val", "0", "--generator", "scenes",
            "--no-progress"]
    assert main(argv) == 0
    assert "train: 2 images" in capsys.readouterr().out
    data = json.loads((tmp_path / "annotations/instances_train.json").read_text())
    assert {(i["height"], i["width"]) for i in data["images"]} == {(160, 160)}
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path), "--generator", "blobs"])
    assert exit_info.value.code == 2


def test_split_stats_of_a_hand_built_split(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    data = {
        "images": [{"id": 4, "width": 100, "height": 100}, {"id": 9, "width": 100, "height": 100}],
        "categories": [{"id": 2, "name": "a"}, {"id": 7, "name": "b"}],
        "annotations": [
            {"image_id": 4, "bbox": [0, 10, 20, 10], "area": 100, "segmentation": [[0, 0]]},
            {"image_id": 4, "bbox": [30, 30, 40, 50], "area": 400,
             "segmentation": {"size": [100, 100], "counts": "x"}},
        ],
    }
    s = split_stats(data)
    assert (s["images"], s["image_sizes"], s["classes"]) == (2, [(100, 100)], [2, 7])
    assert (s["instances_per_image_mean"], s["instances_per_image_max"]) == (1.0, 2)
    assert s["empty_images"] == 0.5 and s["cut_by_border"] == 0.5 and s["polygon_share"] == 0.5
    assert s["box_side_px"] == [21.5, 35.0, 48.5]
    assert s["box_side_rel"] == pytest.approx([0.215, 0.35, 0.485])
    assert s["sqrt_area_px"] == [10.5, 15.0, 19.5]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(data))
    assert stats_main([f"toy={path}"]) == 0
    out = capsys.readouterr().out
    assert "| classes (ids) | 2: a (2), b (7) |" in out and "| empty images | 50.0% |" in out
    assert stats_main([str(path)]) == 2 and "expected NAME=JSON" in capsys.readouterr().err
    assert stats_main([f"toy={tmp_path / 'missing.json'}"]) == 2
