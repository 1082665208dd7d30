"""COCO reader on hand-written JSON and tiny PNGs with known answers."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from maskiou.data import (
    CocoFormatError,
    CocoInstanceDataset,
    RandomHorizontalFlip,
    coco_root_paths,
    collate_fn,
    generate_synthetic_coco,
)

H, W = 10, 12


def _ring() -> np.ndarray:
    m = np.zeros((H, W), dtype=np.uint8)
    m[4:9, 5:10] = 1
    m[6, 7] = 0  # the hole
    return m


def _dataset_dict() -> dict[str, Any]:
    ring = mask_utils.encode(np.asfortranarray(_ring()))
    return {
        "images": [
            {"id": 1, "file_name": "rgb.png", "height": H, "width": W},
            {"id": 2, "file_name": "gray.png", "height": H, "width": W},
            {"id": 3, "file_name": "empty.png", "height": H, "width": W},
            {"id": 4, "file_name": "palette.png", "height": H, "width": W},
        ],
        "categories": [
            {"id": 12, "name": "c", "supercategory": "x"},
            {"id": 0, "name": "background", "supercategory": "x"},
            {"id": 7, "name": "a", "supercategory": "x"},
            {"id": 2, "name": "b", "supercategory": "x"},
        ],
        "annotations": [
            # polygon: rows 2..5, cols 2..7 in pycocotools' rasterisation
            {"id": 10, "image_id": 1, "category_id": 7, "iscrowd": 0, "area": 24.0,
             "bbox": [2, 2, 6, 4], "segmentation": [[2, 2, 8, 2, 8, 6, 2, 6]]},
            # uncompressed RLE (column-major): rows 0..1 of columns 0..2
            {"id": 11, "image_id": 1, "category_id": 2, "iscrowd": False, "area": 6.0,
             "bbox": [0, 0, 3, 2],
             "segmentation": {"size": [H, W], "counts": [0, 2, 8, 2, 8, 2, 98]}},
            # compressed RLE with a hole
            {"id": 12, "image_id": 2, "category_id": 12, "iscrowd": 0, "area": 24.0,
             "bbox": [5, 4, 5, 5],
             "segmentation": {"size": [H, W], "counts": ring["counts"].decode()}},
            # crowd region (bool): never a target
            {"id": 13, "image_id": 2, "category_id": 7, "iscrowd": True, "area": 20.0,
             "bbox": [0, 0, 4, 5],
             "segmentation": {"size": [H, W], "counts": [0, 5, 5, 5, 5, 5, 5, 5, 85]}},
            # only a crowd region on image 4
            {"id": 14, "image_id": 4, "category_id": 2, "iscrowd": 1, "area": 4.0,
             "bbox": [0, 0, 2, 2], "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2]]},
        ],
    }  # fmt: skip


def _write(root: Path, data: dict[str, Any], images: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if images:
        rgb = np.zeros((H, W, 3), dtype=np.uint8)
        rgb[..., 0], rgb[..., 1], rgb[..., 2] = 255, 51, 0
        Image.fromarray(rgb).save(root / "rgb.png")
        Image.fromarray(np.full((H, W), 102, dtype=np.uint8), mode="L").save(root / "gray.png")
        rgba = np.zeros((H, W, 4), dtype=np.uint8)
        rgba[..., 3] = 10
        Image.fromarray(rgba, mode="RGBA").save(root / "empty.png")
        pal = Image.new("P", (W, H), 0)
        pal.putpalette([0, 0, 255] + [0, 0, 0] * 255)
        pal.save(root / "palette.png")
    ann = root / "instances_test.json"
    ann.write_text(json.dumps(data))
    return ann


@pytest.fixture
def ann_file(tmp_path: Path) -> Path:
    return _write(tmp_path, _dataset_dict())


def test_targets_for_polygon_and_uncompressed_rle(ann_file: Path) -> None:
    ds = CocoInstanceDataset(ann_file, ann_file.parent)
    assert len(ds) == 4 and ds.image_ids == [1, 2, 3, 4]
    image, target = ds[0]
    assert image.shape == (3, H, W) and image.dtype == torch.float32
    assert torch.allclose(image[:, 0, 0], torch.tensor([1.0, 0.2, 0.0]))
    assert target["image_id"] == 1
    assert target["labels"].tolist() == [ds.cat_id_to_label[7], ds.cat_id_to_label[2]] == [2, 1]
    assert target["boxes"].tolist() == [[2, 2, 8, 6], [0, 0, 3, 2]]
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    expected = torch.zeros(2, H, W, dtype=torch.uint8)
    expected[0, 2:6, 2:8] = 1
    expected[1, 0:2, 0:3] = 1
    assert target["masks"].dtype == torch.uint8 and torch.equal(target["masks"], expected)
    assert target["area"].tolist() == [24.0, 6.0]
    assert target["iscrowd"].tolist() == [0, 0]


def test_compressed_rle_with_hole_and_crowd_excluded(ann_file: Path) -> None:
    image, target = CocoInstanceDataset(ann_file, ann_file.parent)[1]
    assert torch.allclose(image, torch.full((3, H, W), 0.4))  # grayscale -> RGB
    assert target["labels"].tolist() == [3]  # the crowd annotation (id 13) is not a target
    assert torch.equal(target["masks"][0], torch.from_numpy(_ring()))
    assert target["boxes"].tolist() == [[5, 4, 10, 9]]


def test_empty_images_kept_as_negatives_or_dropped(ann_file: Path) -> None:
    ds = CocoInstanceDataset(ann_file, ann_file.parent)
    for i, rgb in ((2, [0.0, 0.0, 0.0]), (3, [0.0, 0.0, 1.0])):  # RGBA, palette -> RGB
        image, target = ds[i]
        assert torch.equal(image[:, 5, 5], torch.tensor(rgb))
        assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
        assert target["masks"].shape == (0, H, W) and target["masks"].dtype == torch.uint8
        assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64
        assert target["area"].shape == (0,) and target["iscrowd"].shape == (0,)
    assert CocoInstanceDataset(ann_file, ann_file.parent, drop_empty=True).image_ids == [1, 2]


def test_label_mapping_skips_background_category(
    ann_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        ds = CocoInstanceDataset(ann_file, ann_file.parent)
    assert ds.cat_id_to_label == {2: 1, 7: 2, 12: 3}
    assert ds.label_to_cat_id == {1: 2, 2: 7, 3: 12}
    assert ds.class_names == ["__background__", "b", "a", "c"] and ds.num_classes == 4
    assert "instances_test.json: skipped background category id 0 'background'" in caplog.text
    assert ds.coco.getCatIds() == [12, 0, 7, 2]  # the COCO object keeps the file as it is
    assert ds.coco.anns[13]["iscrowd"] == 1 and ds.coco.anns[11]["iscrowd"] == 0
    assert ds.get_height_and_width(2) == (H, W)


def test_category_id_zero_with_a_real_name_is_a_class(tmp_path: Path) -> None:
    data = _dataset_dict()
    data["categories"][1]["name"] = "person"
    data["annotations"][0]["category_id"] = 0
    ds = CocoInstanceDataset(_write(tmp_path, data), tmp_path)
    assert ds.cat_id_to_label == {0: 1, 2: 2, 7: 3, 12: 4} and ds.class_names[1] == "person"
    assert ds[0][1]["labels"].tolist() == [1, 2]


def test_degenerate_annotations_dropped_with_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = _dataset_dict()
    poly = [[2, 2, 8, 2, 8, 6, 2, 6]]
    for ann_id, cat, bbox, area, seg in [
        (20, 2, [1, 1, 1, 5], 5, poly),  # w <= 1
        (21, 2, [1, 1, 5, 0.5], 3, poly),  # h <= 1
        (22, 2, [1, 1, 5, 5], 0, poly),  # zero area
        (23, 2, [1, 1, 5, 5], 9, [[1, 1, 4, 4]]),  # no polygon with 3 points
        (24, 2, [11.5, 1, 5, 5], 9, poly),  # w <= 1 once clipped to the image
        (25, 0, [1, 1, 5, 5], 9, poly),  # background category: dropped, counted apart
    ]:
        data["annotations"].append(
            {"id": ann_id, "image_id": 3, "category_id": cat, "bbox": bbox, "area": area,
             "segmentation": seg}
        )  # fmt: skip
    with caplog.at_level(logging.WARNING):
        ds = CocoInstanceDataset(_write(tmp_path, data), tmp_path)
    assert (
        "instances_test.json: dropped 5 annotations with degenerate boxes (w or h <= 1 px) "
        "or empty masks (ids 20, 21, 22, 23, 24)" in caplog.text
    )
    assert "and dropped its 1 annotations" in caplog.text  # id 25 uses the background category
    assert ds[2][1]["boxes"].shape == (0, 4)
    # COCOeval can still decode every GT, the emptied polygon list included
    from pycocotools import mask as mask_utils

    assert mask_utils.area(ds.coco.annToRLE(ds.coco.anns[23])) == 0


def test_missing_area_and_bbox_filled_in_from_the_mask(tmp_path: Path) -> None:
    data = _dataset_dict()
    del data["annotations"][0]["area"], data["annotations"][0]["bbox"]
    ds = CocoInstanceDataset(_write(tmp_path, data), tmp_path)
    assert ds.coco.anns[10]["area"] == 24.0 and ds.coco.anns[10]["bbox"] == [2, 2, 6, 4]
    assert ds[0][1]["boxes"][0].tolist() == [2, 2, 8, 6]


def test_transforms_and_collate(ann_file: Path) -> None:
    ds = CocoInstanceDataset(ann_file, ann_file.parent, transforms=RandomHorizontalFlip(1.0))
    image, target = ds[0]
    assert target["boxes"].tolist() == [[4, 2, 10, 6], [9, 0, 12, 2]]
    assert target["masks"][1, 0, 9:].tolist() == [1, 1, 1]
    images, targets = collate_fn([ds[0], ds[2]])
    assert len(images) == 2 and [t["image_id"] for t in targets] == [1, 3]


def test_reads_the_synthetic_dataset(tmp_path: Path) -> None:
    paths = generate_synthetic_coco(tmp_path, num_train=0, num_val=6, progress=False)
    ds = CocoInstanceDataset(paths.val_json, paths.val_images)
    assert ds.num_classes == 8 and ds.class_names[1:3] == ["ellipse", "rectangle"]
    assert list(ds.label_to_cat_id.values()) == [1, 2, 4, 7, 9, 12, 15]
    for i in range(len(ds)):
        image, t = ds[i]
        assert image.shape == (3, 128, 128) and 0 <= image.min() and image.max() <= 1
        assert t["masks"].flatten(1).sum(1).tolist() == t["area"].tolist()
        for box, mask in zip(t["boxes"], t["masks"]):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


# ---- bad input: one line naming the file and the offending id ----


def _error(tmp_path: Path, data: Any, images: bool = True) -> str:
    ann = tmp_path / "instances_test.json"
    if isinstance(data, str):
        tmp_path.mkdir(parents=True, exist_ok=True)
        ann.write_text(data)
    else:
        _write(tmp_path, data, images)
    with pytest.raises(CocoFormatError) as exc:
        CocoInstanceDataset(ann, tmp_path)
    msg = str(exc.value)
    assert "\n" not in msg and isinstance(exc.value, ValueError)
    return msg


def _mutated(fn: Any) -> dict[str, Any]:
    data = copy.deepcopy(_dataset_dict())
    fn(data)
    return data


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(CocoFormatError, match=r"nope\.json: annotation file not found"):
        CocoInstanceDataset(tmp_path / "nope.json", tmp_path)
    msg = _error(tmp_path, '{\n  "images": [],\n  "annotations": [,]\n}')
    assert "instances_test.json: malformed JSON at line 3, column 19" in msg
    msg = _error(tmp_path, '{"images": [], "categories": []}')
    assert "instances_test.json: missing top-level key(s) annotations" in msg


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["annotations"][1].update(image_id=99),
         "annotation id 11 (image id 99): unknown image id 99"),
        (lambda d: d["annotations"][2].update(category_id=5),
         "annotation id 12 (image id 2): unknown category id 5"),
        (lambda d: [a.pop("segmentation") for a in d["annotations"]],
         "has no segmentation in any of its 5 annotations: this is a detection-only dataset"),
        (lambda d: d["annotations"][0].pop("segmentation"),
         "annotation id 10 (image id 1): has no segmentation"),
        (lambda d: d["annotations"][2]["segmentation"].update(size=[5, 5]),
         "annotation id 12 (image id 2): RLE size [5, 5] != image size [10, 12]"),
        (lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3, 4, 5, 6, 7]]),
         "annotation id 10 (image id 1): polygon has an odd number of coordinates"),
        (lambda d: d["annotations"][0].update(iscrowd=2),
         "annotation id 10 (image id 1): iscrowd must be 0/1"),
        (lambda d: d["images"].append(dict(d["images"][0])), "duplicate image id 1"),
        (lambda d: d["images"][0].pop("height"), "image #0 needs id, file_name, height"),
    ],
)  # fmt: skip
def test_bad_annotations(tmp_path: Path, mutate: Any, expected: str) -> None:
    msg = _error(tmp_path, _mutated(mutate))
    assert msg.startswith("instances_test.json: ") and expected in msg


def test_missing_unreadable_and_wrong_size_images(ann_file: Path) -> None:
    root = ann_file.parent
    ds = CocoInstanceDataset(ann_file, root)
    ds.check_files()
    (root / "gray.png").unlink()
    (root / "palette.png").write_bytes(b"")
    with pytest.raises(CocoFormatError, match=r"2 image files missing or empty, e\.g\. .*gray"):
        ds.check_files()
    assert ds[0][0].shape == (3, H, W)  # other items still load
    with pytest.raises(CocoFormatError) as exc:
        ds[1]
    assert (
        str(exc.value)
        == f"{root / 'gray.png'}: image file not found (image id 2, in {ann_file.name})"
    )
    with pytest.raises(CocoFormatError, match=r"palette\.png: cannot read image \(image id 4\)"):
        ds[3]
    (root / "palette.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(CocoFormatError, match=r"palette\.png: cannot read image \(image id 4\)"):
        ds[3]
    Image.new("RGB", (W, H + 1)).save(root / "empty.png")
    with pytest.raises(
        CocoFormatError, match=r"empty\.png: image is 12x11 but the JSON says 12x10 \(image id 3\)"
    ):
        ds[2]


def test_coco_root_paths(tmp_path: Path) -> None:
    with pytest.raises(CocoFormatError, match="COCO root folder not found"):
        coco_root_paths(tmp_path / "nope", "val")
    with pytest.raises(
        CocoFormatError, match=r"instances_val2017\.json: annotation file not found"
    ):
        coco_root_paths(tmp_path, "val")
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text("{}")
    with pytest.raises(CocoFormatError, match=r"val2017: image folder not found"):
        coco_root_paths(tmp_path, "val")
    (tmp_path / "val2017").mkdir()
    assert coco_root_paths(str(tmp_path), "val") == (
        tmp_path / "annotations" / "instances_val2017.json",
        tmp_path / "val2017",
    )


def test_a_polygon_of_other_things_than_numbers_is_named_when_the_file_is_loaded(
    tmp_path: Path,
) -> None:
    data = _dataset_dict()
    data["annotations"][0]["segmentation"] = [[2, 2, 8, 2, 8, "six", 2, 6]]
    with pytest.raises(CocoFormatError) as exc:
        CocoInstanceDataset(_write(tmp_path, data), tmp_path)  # before any image is read
    msg = str(exc.value)
    assert msg == ("instances_test.json: annotation id 10 (image id 1): polygon must be a list "
                   "of numbers")
