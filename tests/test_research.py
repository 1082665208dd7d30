"""research/runs_table.py: the one side-by-side table writer of the research scripts and the
command line that reads earlier runs into it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "research"))

from runs_table import print_columns, read_columns, side_by_side  # noqa: E402


def test_side_by_side_writes_a_markdown_table_of_the_given_cells():
    table = side_by_side("row", ["a", "b"], [("(ref)", ["1.00", "2.00"]), ("x", ["-", "3"])])
    assert table == ("| row | a | b |\n|---|---|---|\n| (ref) | 1.00 | 2.00 |\n"
                     "| x | - | 3 |")


def test_the_columns_command_reads_each_named_run_in_order(tmp_path, capsys):
    for name, value in (("one", 1), ("two", 2)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"v": value}))
    pairs = [f"second, b={tmp_path / 'two.json'}", f"first={tmp_path / 'one.json'}"]
    assert read_columns(pairs) == {"second, b": {"v": 2}, "first": {"v": 1}}
    assert list(read_columns(pairs)) == ["second, b", "first"]

    def table(runs):
        return side_by_side("run", list(runs), [("v", [str(r["v"]) for r in runs.values()])])

    assert print_columns(["--table", *pairs], "--table", table)
    assert capsys.readouterr().out == "| run | second, b | first |\n|---|---|---|\n| v | 2 | 1 |\n"
    assert not print_columns(["--checkpoint", "a.pt"], "--table", table)
    assert not print_columns([], "--table", table)
    with pytest.raises(SystemExit, match="'one.json': expected NAME=FILE.json"):
        read_columns(["one.json"])



def held_split():
    """Class 1: scores 0.9 (TP), 0.8 (TP), 0.6 (FP), 0.4 (TP), 3 GT; class 2: 0.7 (TP), 0.2
    (FP), 1 GT; every TP of IoU 1 (no localisation error)."""
    return {"scores": np.array([0.9, 0.8, 0.6, 0.4, 0.7, 0.2]),
            "labels": np.array([1, 1, 1, 1, 2, 2]),
            "matched": np.array([1.0, 1.0, 0.0, 1.0, 1.0, 0.0]),
            "num_gt": {1: 3, 2: 1}}


def test_the_threshold_rules_on_a_hand_built_split():
    """LRP = (FP + FN) / (FP + GT) here. Class 1 keeping >= 0.9: 2/3; >= 0.8: 1/3; >= 0.6: 2/4;
    >= 0.4: 1/4, its optimum, with nothing below (the midpoint rule keeps 0.4). Class 2: >= 0.7
    gives 0, its optimum; the midpoint to 0.2 is 0.45. One threshold t for both: the mean is 1/8
    for t in (0.2, 0.4] (class 1 at 1/4, class 2 at 0), above it 1/4 or 1/6, at or below 0.2
    3/8: the grid's highest such value is 0.4. On the validation split = the held-out split
    (category id = label): per-class mLRP 1/8, the optimum; 0.5 keeps the FP at 0.6: (1/2 + 0)/2."""
    import threshold_rules as tr

    held = held_split()
    assert tr.per_class(held) == {1: 0.4, 2: 0.7}
    assert tr.per_class_midpoint(held) == {1: 0.4, 2: pytest.approx(0.45)}
    assert tr.one_threshold(held) == {1: pytest.approx(0.4), 2: pytest.approx(0.4)}
    assert tr.half(held) == {1: 0.5, 2: 0.5}
    table = tr.rows(held, held, {1: 1, 2: 2})
    assert table["optimal on the validation images"]["mLRP"] == pytest.approx(1 / 8)
    assert table["per-class"]["mLRP"] == pytest.approx(1 / 8)
    assert table["per-class"]["thresholds"] == {"1": 0.4, "2": 0.7}
    assert table["one threshold"]["mLRP"] == pytest.approx(1 / 8)
    assert table["0.5"]["mLRP"] == pytest.approx(1 / 4)


def test_enlarge_coco_scales_a_hand_built_image_and_its_polygon(tmp_path):
    """A 20 x 10 (w x h) image with a rectangle polygon (2, 1)-(6.5, 3.25), enlarged to a longer
    side of 40 (factor 2): a 40 x 20 image, the polygon at (4, 2)-(13, 6.5), rounded to whole
    pixels by the third-party rewrite (13, 6.5 -> 13, 6: round half to even), the box
    [4, 2, 9, 4.5] -> [4, 2, 9, 4], area x 4, ``iscrowd`` a boolean, a background id 0."""
    pytest.importorskip("cv2", reason="opencv (the ultralytics extra) traces the polygons")
    import enlarge_coco
    from PIL import Image

    (tmp_path / "src").mkdir()
    Image.new("RGB", (20, 10), (200, 10, 10)).save(tmp_path / "src" / "a.png")
    poly = [2, 1, 6.5, 1, 6.5, 3.25, 2, 3.25]
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 20, "height": 10}],
            "annotations": [{"id": 5, "image_id": 1, "category_id": 3, "segmentation": [poly],
                             "bbox": [2, 1, 4.5, 2.25], "area": 10.125, "iscrowd": 0}],
            "categories": [{"id": 3, "name": "box"}]}
    (tmp_path / "src.json").write_text(json.dumps(data))
    assert enlarge_coco.main([str(tmp_path / "src.json"), str(tmp_path / "src"),
                              str(tmp_path / "out"), "--size", "40"]) == 0
    out = json.loads((tmp_path / "out" / "instances.json").read_text())
    with Image.open(tmp_path / "out" / "images" / "a.png") as im:
        assert im.size == (40, 20)
    assert out["images"][0]["width"] == 40 and out["images"][0]["height"] == 20
    (ann,) = out["annotations"]
    assert ann["segmentation"] == [[4, 2, 13, 2, 13, 6, 4, 6]]
    assert ann["bbox"] == [4, 2, 9, 4] and ann["area"] == pytest.approx(40.5)
    assert ann["iscrowd"] is False
    assert [c["id"] for c in out["categories"]] == [0, 3]
    # an RLE mask of the same rectangle's whole pixels (x 2..5, y 1..2): x 4..11, y 2..5 at 40
    from pycocotools import mask as mask_utils

    grid = np.zeros((10, 20), np.uint8)
    grid[1:3, 2:6] = 1
    rle = mask_utils.encode(np.asfortranarray(grid))
    data["annotations"][0]["segmentation"] = {"size": rle["size"],
                                              "counts": rle["counts"].decode()}
    scaled = enlarge_coco.enlarge(data, tmp_path / "src", tmp_path / "x", 40)
    mask = mask_utils.decode(scaled["annotations"][0]["segmentation"])
    assert mask.shape == (20, 40) and int(mask.sum()) == 8 * 4
    assert mask[2:6, 4:12].all()
