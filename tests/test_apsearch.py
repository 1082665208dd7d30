"""COCO mask AP computed once per score vector from a table of IoUs (maskiou.addon.apsearch):
hand-built cases with known answers, pycocotools' own numbers, and the weight search."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from maskiou.addon.apsearch import MatchTable, search_weights
from maskiou.records import coco_ap

SIDE = 32


def rle(x0: int, y0: int, x1: int, y1: int) -> dict:
    m = np.zeros((SIDE, SIDE), np.uint8, order="F")
    m[y0:y1, x0:x1] = 1
    out = mask_utils.encode(m)
    out["counts"] = out["counts"].decode()
    return out


def coco_of(anns: list[tuple[int, int, tuple[int, int, int, int], int]], images: int) -> COCO:
    """Ground truth: (image id, category id, rectangle, iscrowd) per instance."""
    coco = COCO()
    coco.dataset = {
        "images": [{"id": i, "width": SIDE, "height": SIDE} for i in range(1, images + 1)],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": [{"id": k + 1, "image_id": img, "category_id": cat,
                         "segmentation": rle(*box), "area": float((box[2] - box[0])
                                                                  * (box[3] - box[1])),
                         "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                         "iscrowd": crowd}
                        for k, (img, cat, box, crowd) in enumerate(anns)]}
    coco.createIndex()
    return coco


def test_a_duplicate_scored_above_the_right_mask_halves_ap_exactly():
    coco = coco_of([(1, 1, (0, 0, 16, 16), 0)], 1)
    rles = [rle(0, 0, 16, 16), rle(16, 16, 32, 32)]  # IoU 1 and IoU 0 with the one object
    table = MatchTable(coco, [1], np.array([1, 1]), np.array([1, 1]), rles)
    assert table.ap(np.array([0.9, 0.1])) == 100.0
    assert table.ap(np.array([0.1, 0.9])) == 50.0  # precision 1/2 at every recall point
    # a category without ground truth is left out, not counted as 0
    assert table.gt_counts == {1: 1, 2: 0}


def test_it_equals_pycocotools_on_random_scores_with_crowds_and_misses():
    rng = np.random.default_rng(0)
    anns, dets = [], []
    for img in range(1, 7):
        for _ in range(3):
            x, y = (int(v) for v in rng.integers(0, 20, 2))
            w, h = (int(v) for v in rng.integers(4, 12, 2))
            cat = int(rng.integers(1, 3))
            anns.append((img, cat, (x, y, x + w, y + h), int(rng.random() < 0.15)))
            for _ in range(int(rng.integers(1, 4))):  # near copies: duplicates and misses
                dx, dy = (int(v) for v in rng.integers(-3, 4, 2))
                dets.append((img, cat if rng.random() < 0.8 else 3 - cat,
                             (max(x + dx, 0), max(y + dy, 0), x + w + dx, y + h + dy)))
    coco = coco_of(anns, 7)  # image 7: no ground truth and no detection
    image_ids = np.array([d[0] for d in dets])
    cats = np.array([d[1] for d in dets])
    rles = [rle(*d[2]) for d in dets]
    table = MatchTable(coco, list(range(1, 8)), image_ids, cats, rles)
    for trial in range(5):
        scores = rng.random(len(dets))
        if trial == 4:
            scores = np.round(scores, 1)  # ties: both keep the detections' order
        results = [{"image_id": int(i), "category_id": int(c), "segmentation": r,
                    "score": float(s)} for i, c, r, s in zip(image_ids, cats, rles, scores)]
        assert table.ap(scores) == pytest.approx(coco_ap(coco, results, "segm")["AP"],
                                                 abs=5e-4)  # coco_ap rounds to 3 decimals


def test_max_detections_keeps_the_highest_scored_of_an_image():
    coco = coco_of([(1, 1, (0, 0, 16, 16), 0)], 1)
    rles = [rle(16, 16, 32, 32), rle(0, 0, 16, 16)]
    table = MatchTable(coco, [1], np.array([1, 1]), np.array([1, 1]), rles, max_detections=1)
    assert table.ap(np.array([0.9, 0.1])) == 0.0  # the right mask is cut
    assert table.ap(np.array([0.1, 0.9])) == 100.0


def test_the_search_moves_a_weight_only_where_ap_rises():
    # two images, one object each; the class score ranks the wrong copies first, a second
    # signal knows better: the search must raise its weight from 0
    coco = coco_of([(1, 1, (0, 0, 16, 16), 0), (2, 1, (0, 0, 16, 16), 0)], 2)
    rles = [rle(0, 0, 16, 16), rle(16, 16, 32, 32)] * 2
    table = MatchTable(coco, [1, 2], np.array([1, 1, 2, 2]), np.ones(4, np.int64), rles)
    x = np.log(np.array([[0.5, 0.9], [0.9, 0.1], [0.5, 0.9], [0.9, 0.1]]))
    start = np.array([1.0, 0.0])
    assert table.ap(x @ start) == 50.0
    w, ap = search_weights(x, table, start, fixed=0)
    assert ap == 100.0 and w[0] == 1.0 and w[1] > 0  # the fixed weight sets the scale
    w, ap = search_weights(x[:, :1], table, start[:1], fixed=0)
    assert ap == 50.0 and w.tolist() == [1.0]  # nothing to move: unchanged
