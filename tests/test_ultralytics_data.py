"""COCO -> YOLO-seg conversion: masks to one polygon each (holes bridged, parts joined), checked
by rasterizing the written labels back the way ultralytics' data loader does; classes in
maskiou's label order; a conversion that is atomic and skipped when up to date."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from offline_ultralytics import require_offline_ultralytics
from PIL import Image
from pycocotools import mask as mask_utils

require_offline_ultralytics()  # a skip without ultralytics; no network attempt, ever

from maskiou_integrations import ultralytics_data as ud  # noqa: E402


def roundtrip(mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    line = ud.polygon_line(0, ud.mask_to_polygon(mask), h, w)
    return ud.rasterize_line(line, h, w)[1]


def square_with_hole() -> np.ndarray:
    m = np.zeros((24, 24), np.uint8)
    m[4:20, 4:20] = 1  # 256 pixels
    m[9:15, 8:14] = 0  # a 6 x 6 hole: 220 left
    return m


def test_a_hole_survives_the_round_trip():
    mask = square_with_hole()
    back = roundtrip(mask)
    # without the bridge the hole would be filled: IoU 220 / 256 = 0.86
    assert ud.mask_iou(back, mask) >= 0.99
    assert back[9:15, 8:14].sum() == 0


def test_two_parts_are_joined_by_one_thin_line():
    mask = np.zeros((10, 20), np.uint8)
    mask[2:6, 2:6] = 1
    mask[2:6, 12:16] = 1  # 32 pixels, 6 empty columns between the parts
    back = roundtrip(mask)
    assert (back >= mask).all()  # both parts whole
    extra = int(back.sum() - mask.sum())
    assert 1 <= extra <= 6  # the connecting line: one row across the gap at most
    assert ud.mask_iou(back, mask) >= 32 / 38


def test_a_single_pixel_and_its_normalized_centre():
    mask = np.zeros((4, 8), np.uint8)
    mask[1, 3] = 1
    line = ud.polygon_line(2, ud.mask_to_polygon(mask), 4, 8)
    values = [float(v) for v in line.split()]
    assert values[0] == 2 and len(values) == 7  # class, then 3 points (a polygon's minimum)
    assert values[1:3] == [3.5 / 8, 1.5 / 4]  # the pixel's centre
    assert np.array_equal(ud.rasterize_line(line, 4, 8)[1], mask)


def test_an_empty_mask_has_no_polygon():
    assert ud.mask_to_polygon(np.zeros((5, 5), np.uint8)).shape == (0, 2)


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def write_coco(root: Path, name: str = "train") -> tuple[Path, Path]:
    """Two 24 x 24 images: the square with a hole as an RLE of category 7, a polygon square of
    category 2, a crowd region (left out), and a background category (skipped)."""
    images = root / name
    images.mkdir(parents=True)
    for k in (1, 2):
        Image.new("RGB", (24, 24), (40 * k, 80, 120)).save(images / f"im{k}.png")
    data = {
        "images": [{"id": k, "file_name": f"im{k}.png", "height": 24, "width": 24}
                   for k in (1, 2)],
        "categories": [{"id": 7, "name": "seven"}, {"id": 0, "name": "background"},
                       {"id": 2, "name": "two"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "iscrowd": 0,
             "segmentation": _rle(square_with_hole())},
            {"id": 2, "image_id": 1, "category_id": 2, "iscrowd": 0,
             "segmentation": [[1, 1, 4, 1, 4, 4, 1, 4]]},
            {"id": 3, "image_id": 2, "category_id": 2, "iscrowd": 1,
             "segmentation": [[10, 10, 20, 10, 20, 20, 10, 20]]},
        ],
    }
    ann = root / f"{name}.json"
    ann.write_text(json.dumps(data))
    return ann, images


def test_conversion_names_classes_in_maskious_label_order(tmp_path):
    splits = {"train": write_coco(tmp_path / "src", "train")}
    data_yaml = ud.convert(tmp_path / "yolo", splits)
    import yaml

    data = yaml.safe_load(data_yaml.read_text())
    # categories sorted by id, the background category skipped: 2 -> class 0, 7 -> class 1
    assert data["names"] == {0: "two", 1: "seven"}
    assert data["path"] == str((tmp_path / "yolo").resolve()) and data["train"] == "images/train"
    lines = (tmp_path / "yolo" / "labels" / "train" / "im1.txt").read_text().splitlines()
    assert sorted(line.split()[0] for line in lines) == ["0", "1"]
    assert (tmp_path / "yolo" / "labels" / "train" / "im2.txt").read_text() == ""  # crowd only
    image = tmp_path / "yolo" / "images" / "train" / "im1.png"
    assert image.is_symlink() and image.resolve() == (tmp_path / "src" / "train" / "im1.png")
    ious = ud.label_ious(data_yaml, "train")
    assert len(ious) == 2 and ious.min() >= 0.99


def test_conversion_is_skipped_when_up_to_date_and_redone_when_not(tmp_path, monkeypatch):
    ann, images = write_coco(tmp_path / "src")
    ud.convert(tmp_path / "yolo", {"train": (ann, images)})
    calls = []
    real = ud._write_split
    monkeypatch.setattr(ud, "_write_split", lambda *a: calls.append(a[2]) or real(*a))
    ud.convert(tmp_path / "yolo", {"train": (ann, images)})
    assert calls == []
    data = json.loads(ann.read_text())
    data["annotations"] = data["annotations"][1:]
    ann.write_text(json.dumps(data))
    ud.convert(tmp_path / "yolo", {"train": (ann, images)})
    assert calls == ["train"]
    assert len((tmp_path / "yolo" / "labels" / "train" / "im1.txt").read_text().splitlines()) == 1


def test_an_interrupted_conversion_leaves_the_previous_one(tmp_path, monkeypatch):
    ann, images = write_coco(tmp_path / "src")
    ud.convert(tmp_path / "yolo", {"train": (ann, images)})
    before = sorted(p.name for p in tmp_path.iterdir())
    ann.write_text(ann.read_text().replace('"seven"', '"eight"'))

    def fail(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(ud, "_write_split", fail)
    with pytest.raises(KeyboardInterrupt):
        ud.convert(tmp_path / "yolo", {"train": (ann, images)})
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary folder left
    assert "seven" in (tmp_path / "yolo" / "data.yaml").read_text()



def test_the_folder_has_the_permissions_of_a_plain_mkdir(tmp_path):
    ann, images = write_coco(tmp_path / "src")
    ud.convert(tmp_path / "yolo", {"train": (ann, images)})
    (tmp_path / "plain").mkdir()
    mode = (tmp_path / "yolo").stat().st_mode & 0o777
    assert mode == (tmp_path / "plain").stat().st_mode & 0o777  # not mkdtemp's 0700


def test_splits_with_other_categories_are_refused(tmp_path, capsys):
    train = write_coco(tmp_path / "a", "train")
    ann, images = write_coco(tmp_path / "b", "val")
    ann.write_text(ann.read_text().replace('"seven"', '"eight"'))
    code = ud.main(["--output-dir", str(tmp_path / "yolo"), "--split", "train", *map(str, train),
                    "--split", "val", str(ann), str(images)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "val.json" in err and "differ" in err
