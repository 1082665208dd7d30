"""COCO mask AP computed once per score vector from a table of IoUs (maskiou.addon.apsearch):
hand-built cases with known answers, pycocotools' own numbers (``COCOeval``, unrounded, to
1e-9) and the Python loops the vectorized table replaced (``tests/reference.py``) on random
cases and on real detections, and the weight search."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from reference import LoopMatchTable, loop_search_weights

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
    # COCOeval's precision is tp / (tp + fp + eps): 1 - 2e-16, so 100 to the last bits
    assert table.ap(np.array([0.9, 0.1])) == pytest.approx(100.0, abs=1e-12)
    assert table.ap(np.array([0.1, 0.9])) == pytest.approx(50.0, abs=1e-12)  # 1/2 everywhere
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
    assert table.ap(np.array([0.1, 0.9])) == pytest.approx(100.0, abs=1e-12)


def test_the_search_moves_a_weight_only_where_ap_rises():
    # two images, one object each; the class score ranks the wrong copies first, a second
    # signal knows better: the search must raise its weight from 0
    coco = coco_of([(1, 1, (0, 0, 16, 16), 0), (2, 1, (0, 0, 16, 16), 0)], 2)
    rles = [rle(0, 0, 16, 16), rle(16, 16, 32, 32)] * 2
    table = MatchTable(coco, [1, 2], np.array([1, 1, 2, 2]), np.ones(4, np.int64), rles)
    x = np.log(np.array([[0.5, 0.9], [0.9, 0.1], [0.5, 0.9], [0.9, 0.1]]))
    start = np.array([1.0, 0.0])
    assert table.ap(x @ start) == pytest.approx(50.0, abs=1e-12)
    w, ap = search_weights(x, table, start, fixed=0)
    assert ap == pytest.approx(100.0, abs=1e-12) and w[0] == 1.0 and w[1] > 0  # sets the scale
    w, ap = search_weights(x[:, :1], table, start[:1], fixed=0)
    assert ap == pytest.approx(50.0, abs=1e-12) and w.tolist() == [1.0]  # nothing to move


def cocoeval_ap(coco: COCO, image_ids: np.ndarray, cats: np.ndarray, rles: list, scores,
                images: list[int], max_detections: int = 100) -> float:
    """pycocotools' own mask AP, unrounded, in percent: COCOeval segm, all areas,
    ``max_detections`` per image and class (its last maxDets)."""
    results = [{"image_id": int(i), "category_id": int(c), "segmentation": dict(r),
                "score": float(s)} for i, c, r, s in zip(image_ids, cats, rles, scores)]
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes(results), "segm")
        ev.params.imgIds = sorted(images)
        ev.params.maxDets = [max_detections]  # (evaluate sorts them: one, to keep it plain)
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][:, :, :, 0, 0]
    return float(precision[precision > -1].mean() * 100)


def test_equal_iou_goes_to_the_last_ground_truth_as_cocoevals_loop_keeps_it():
    # the top detection covers two objects, IoU exactly 0.5 with each; COCOeval keeps the last
    # of equal IoU (the second object), so at threshold 0.5 the second detection (the second
    # object exactly) finds it taken and is a false positive; above 0.5 the top one misses
    coco = coco_of([(1, 1, (0, 0, 8, 8), 0), (1, 1, (8, 0, 16, 8), 0)], 1)
    rles = [rle(0, 0, 16, 8), rle(8, 0, 16, 8)]
    table = MatchTable(coco, [1], np.array([1, 1]), np.array([1, 1]), rles)
    # t = 0.5: TP then FP, precision 1 up to recall 1/2 (51 points); t > 0.5 (9 of them): FP
    # then TP, precision 1/2 up to recall 1/2
    expected = (51 + 9 * 51 * 0.5) / 1010 * 100
    assert table.ap(np.array([0.9, 0.8])) == pytest.approx(expected, abs=1e-9)
    assert expected == pytest.approx(cocoeval_ap(coco, np.array([1, 1]), np.array([1, 1]),
                                                 rles, [0.9, 0.8], [1]), abs=1e-9)


def test_a_crowd_region_absorbs_every_detection_inside_it_and_counts_as_no_object():
    # an object inside a crowd region (IoU of a detection with a crowd region: its
    # intersection over the detection's own area): the two detections inside the region only
    # are ignored; the object's exact copy, IoU 1 with both, matches the object (COCOeval
    # prefers what is not a crowd); the fourth detection is outside both, a miss
    coco = coco_of([(1, 1, (0, 0, 8, 8), 0), (1, 1, (0, 0, 32, 16), 1)], 1)
    rles = [rle(16, 0, 24, 8), rle(24, 8, 32, 16), rle(0, 0, 8, 8), rle(0, 24, 8, 32)]
    table = MatchTable(coco, [1], np.ones(4, np.int64), np.ones(4, np.int64), rles)
    assert table.gt_counts == {1: 1, 2: 0}  # the crowd region is not an object to find
    assert table.ap(np.array([0.9, 0.8, 0.7, 0.1])) == pytest.approx(100.0, abs=1e-12)
    # the miss above the object: precision 1/2 at every recall point
    assert table.ap(np.array([0.9, 0.8, 0.5, 0.6])) == pytest.approx(50.0, abs=1e-12)


def random_case(seed: int) -> tuple[COCO, np.ndarray, np.ndarray, list]:
    """Ground truth of 8 images and 3 categories (the third never has an object; image 7 has
    objects and no detection, image 8 neither) with crowd regions and duplicated objects, and
    detections: shifted, shrunk or grown copies of the objects (some of another class, some
    exact, some of a category the ground truth does not have) and random misses."""
    rng = np.random.default_rng(seed)
    anns, dets = [], []

    def box() -> tuple[int, int, int, int]:
        x, y = (int(v) for v in rng.integers(0, 24, 2))
        w, h = (int(v) for v in rng.integers(3, 10, 2))
        return x, y, x + w, y + h

    for img in range(1, 8):
        if rng.random() < 0.3:  # a crowd region over half the image, objects inside it
            anns.append((img, int(rng.integers(1, 3)), (0, 0, SIDE // 2, SIDE), 1))
        for _ in range(int(rng.integers(0, 5))):
            b, cat = box(), int(rng.integers(1, 3))
            crowd = int(rng.random() < 0.2)
            anns.append((img, cat, b, crowd))
            if rng.random() < 0.15:
                anns.append((img, cat, b, 0))  # the same object twice: equal IoUs
            if img == 7:
                continue
            for _ in range(int(rng.integers(0, 5))):
                dx, dy, grow = (int(v) for v in rng.integers(-2, 3, 3))
                c = cat if rng.random() < 0.8 else int(rng.choice([1, 2, 3, 9]))
                near = (max(b[0] + dx - grow, 0), max(b[1] + dy - grow, 0),
                        min(b[2] + dx + grow, SIDE), min(b[3] + dy + grow, SIDE))
                if near[2] > near[0] and near[3] > near[1]:
                    dets.append((img, c, near if rng.random() < 0.8 else b))
        for _ in range(int(rng.integers(0, 4))) if img != 7 else []:
            dets.append((img, int(rng.integers(1, 4)), box()))
    coco = coco_of(anns, 8)
    coco.dataset["categories"].append({"id": 3, "name": "c"})
    coco.createIndex()
    return (coco, np.array([d[0] for d in dets]), np.array([d[1] for d in dets]),
            [rle(*d[2]) for d in dets])


@pytest.mark.parametrize("seed", range(8))
def test_it_equals_pycocotools_and_the_loops_on_random_cases(seed):
    coco, image_ids, cats, rles = random_case(seed)
    rng = np.random.default_rng(100 + seed)
    images = list(range(1, 9)) if seed % 2 == 0 else [1, 3, 4, 6, 7, 8]  # a subset: the rest out
    max_det = 100 if seed % 4 < 2 else 2  # 2: COCOeval's maxDets cuts each image and class
    table = MatchTable(coco, images, image_ids, cats, rles, max_detections=max_det)
    loops = LoopMatchTable(coco, images, image_ids, cats, rles, max_detections=max_det)
    for trial in range(4):
        scores = rng.random(len(rles))
        if trial == 2:
            scores = np.round(scores, 1)  # ties: the detections' order decides
        if trial == 3:
            scores = np.full(len(rles), 0.5)  # all tied
        got = table.ap(scores)
        assert got == pytest.approx(cocoeval_ap(coco, image_ids, cats, rles, scores, images,
                                                max_det), abs=1e-9)
        assert got == pytest.approx(loops.ap(scores), abs=1e-9)


def test_a_subset_is_the_table_its_detections_would_build():
    coco, image_ids, cats, rles = random_case(3)
    table = MatchTable(coco, sorted(set(image_ids.tolist())), image_ids, cats, rles)
    rows = np.flatnonzero(np.isin(image_ids, [2, 3, 5]))[::-1]  # any order
    sub = table.subset(rows)
    again = MatchTable(coco, [2, 3, 5], image_ids[rows], cats[rows], [rles[i] for i in rows])
    assert sub.n == len(rows) and sub.gt_counts == again.gt_counts
    assert sub.images.tolist() == [2, 3, 5]
    for seed in range(3):
        scores = np.round(np.random.default_rng(seed).random(len(rows)), 1)
        assert sub.ap(scores) == again.ap(scores)
    for bad in ([0, 0], [-1], [table.n]):  # repeated, negative, past the end
        with pytest.raises(ValueError, match=f"distinct indices below {table.n}"):
            table.subset(np.array(bad))


def test_it_equals_pycocotools_with_large_image_ids_no_iscrowd_key_and_over_100_detections():
    """Image ids beyond 16 bits (65,536 exactly, and above 2^17), annotations without an
    ``iscrowd`` key (COCO reads them as not crowd), 105 detections of one class in one image
    (maxDets 100 cuts the last 5, among them right ones) and an image without detections."""
    ids = [65536, 140000, 7]
    coco = coco_of([(1, 1, (0, 0, 16, 16), 0), (2, 1, (8, 8, 24, 24), 0),
                    (3, 2, (0, 16, 16, 32), 0), (3, 1, (16, 0, 32, 16), 0)], 3)
    old_to_new = {1: ids[0], 2: ids[1], 3: ids[2]}
    for im in coco.dataset["images"]:
        im["id"] = old_to_new[im["id"]]
    for a in coco.dataset["annotations"]:
        a["image_id"] = old_to_new[a["image_id"]]
    coco.createIndex()
    keyless = COCO()  # the same without the key (pycocotools' evaluate needs it)
    keyless.dataset = {**coco.dataset, "annotations": [
        {k: v for k, v in a.items() if k != "iscrowd"} for a in coco.dataset["annotations"]]}
    keyless.createIndex()
    rng = np.random.default_rng(4)
    image_ids, cats, rles = [], [], []
    for _ in range(105):  # one image, one class: near copies of its object and misses
        x, y = (int(v) for v in rng.integers(0, 17, 2))
        image_ids.append(ids[0]), cats.append(1), rles.append(rle(x, y, x + 16, y + 16))
    for box, cat in (((8, 8, 24, 24), 1), ((0, 0, 8, 8), 1)):
        image_ids.append(ids[1]), cats.append(cat), rles.append(rle(*box))
    image_ids, cats = np.array(image_ids), np.array(cats)
    images = sorted(ids)
    table = MatchTable(keyless, images, image_ids, cats, rles)
    for seed in range(3):
        scores = np.round(np.random.default_rng(seed).random(len(rles)), 2)
        want = cocoeval_ap(coco, image_ids, cats, rles, scores, images)
        assert table.ap(scores) == pytest.approx(want, abs=1e-9)


def test_bad_inputs_are_named():
    coco = coco_of([(1, 1, (0, 0, 16, 16), 0)], 1)
    with pytest.raises(ValueError, match="2 image ids, 1 category ids and 2 masks"):
        MatchTable(coco, [1], np.array([1, 1]), np.array([1]), [rle(0, 0, 4, 4)] * 2)
    table = MatchTable(coco, [1], np.array([1]), np.array([1]), [rle(0, 0, 4, 4)])
    with pytest.raises(ValueError, match=r"scores of shape \(2,\), expected \(1,\)"):
        table.ap(np.zeros(2))


def test_the_search_finds_the_weights_the_loops_found():
    coco, image_ids, cats, rles = random_case(5)
    rng = np.random.default_rng(0)
    images = list(range(1, 9))
    table = MatchTable(coco, images, image_ids, cats, rles)
    loops = LoopMatchTable(coco, images, image_ids, cats, rles)
    truth = np.array([max([0.0] + [float(mask_utils.iou([r], [coco.annToRLE(a)],
                                                        [a["iscrowd"]])[0][0])
                                   for a in coco.imgToAnns[int(i)]
                                   if a["category_id"] == c]) for i, c, r in
                      zip(image_ids, cats, rles)])
    x = np.log(np.c_[rng.uniform(0.2, 1, len(rles)), np.clip(truth + rng.normal(0, 0.2,
                                                                                 len(rles)),
                                                              0.05, 1),
                     rng.uniform(0.2, 1, len(rles))])
    start = np.array([1.0, 0.0, 0.0])
    w, ap = search_weights(x, table, start, fixed=0)
    w_loops, ap_loops = loop_search_weights(x, loops, start, fixed=0)
    assert w.tolist() == w_loops.tolist() and ap == pytest.approx(ap_loops, abs=1e-9)
    assert w[1] > 0  # the signal that knows the IoU counts


def test_it_equals_pycocotools_on_the_shipped_addons_detections_of_the_embedded_split():
    """Real masks and scores: the shipped add-on's detections on 60 images of the embedded
    validation split, under four scorings (ties among them)."""
    import tempfile
    from pathlib import Path

    from maskiou.data.coco import CocoInstanceDataset
    from maskiou.evaluation.benchmark import embedded_val, shipped_checkpoint
    from maskiou.evaluation.predict import predict
    from maskiou.models.checkpoint import save_atomic
    from maskiou.models.load import load_trained_model

    val = CocoInstanceDataset(*embedded_val(progress=False))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "addon.pt"
        save_atomic(shipped_checkpoint("torchvision_addon"), path)
        model, _ = load_trained_model(path)
    dets = predict(model, val, list(range(60)), progress=False)
    images = sorted(int(i) for i in val.image_ids[:60])
    table = MatchTable(val.coco, images, dets.image_ids, dets.category_ids, dets.rles)
    loops = LoopMatchTable(val.coco, images, dets.image_ids, dets.category_ids, dets.rles)
    assert len(dets.rles) > 300
    for scores in (dets.cls_scores, dets.cls_scores * dets.maskness, dets.scores,
                   np.round(dets.cls_scores, 1)):
        got = table.ap(scores)
        assert got == pytest.approx(cocoeval_ap(val.coco, dets.image_ids, dets.category_ids,
                                                dets.rles, scores, images), abs=1e-9)
        assert got == pytest.approx(loops.ap(scores), abs=1e-9)


def test_the_recalibration_fits_the_weights_the_loops_fitted(monkeypatch):
    """Recalibration.fit's three searches (all images, then each half for the held-out
    check) on a random case: the same weights, bias and out-of-sample scores as with the loop
    table and search it used before."""
    from maskiou.addon import apsearch
    from maskiou.addon.recalibration import MatchInputs, Recalibration

    coco, image_ids, cats, rles = random_case(6)
    rng = np.random.default_rng(1)
    truth = np.array([max([0.0] + [float(mask_utils.iou([r], [coco.annToRLE(a)],
                                                        [a["iscrowd"]])[0][0])
                                   for a in coco.imgToAnns[int(i)]
                                   if a["category_id"] == c]) for i, c, r in
                      zip(image_ids, cats, rles)])
    n = len(rles)
    x = np.log(np.c_[rng.uniform(0.3, 1, n), np.clip(truth + rng.normal(0, 0.3, n), 0.05, 1),
                     np.clip(truth + rng.normal(0, 0.3, n), 0.05, 1), rng.uniform(0.01, 0.5, n),
                     rng.uniform(0.2, 1, n)])
    fit = Recalibration.fit("search", x, truth, {}, MatchInputs(coco, image_ids, cats, rles))

    def loop_table(self, rows):
        ids = self.image_ids[rows]
        return LoopMatchTable(self.coco, sorted({int(i) for i in ids}), ids,
                              self.category_ids[rows], [self.rles[i] for i in rows])

    monkeypatch.setattr(MatchInputs, "table", loop_table)
    monkeypatch.setattr(apsearch, "search_weights", loop_search_weights)
    before = Recalibration.fit("search", x, truth, {}, MatchInputs(coco, image_ids, cats, rles))
    assert fit.weights == pytest.approx(before.weights, abs=1e-9) and fit.bias == before.bias
    assert fit.weights != pytest.approx([1.0, 1.0, 0.0, 0.0, 0.0], abs=0.01)  # it moved
    np.testing.assert_allclose(fit.check_scores, before.check_scores, rtol=0, atol=1e-12)


def test_the_addons_heldout_check_is_pycocotools_ap_rounded_as_coco_ap_rounds():
    """maskiou.addon.run.heldout_gain measures its three scorings with the table (the IoUs of
    the recalibration's fit lent to it, or its own) and reports what coco_ap reported."""
    import types

    import torch

    from maskiou.addon.recalibration import MatchInputs
    from maskiou.addon.run import heldout_gain
    from maskiou.records import Detections, coco_results

    coco, image_ids, cats, rles = random_case(4)
    n = len(rles)
    rng = np.random.default_rng(2)
    samples = types.SimpleNamespace(
        cls_scores=torch.rand(n, dtype=torch.float64), maskness=torch.rand(n),
        labels=torch.as_tensor(cats), image_ids=torch.as_tensor(image_ids),
        rles=lambda rows: [rles[i] for i in rows.tolist()])
    dataset = types.SimpleNamespace(coco=coco, label_to_cat_id={c: c for c in (1, 2, 3, 9)})
    recal = types.SimpleNamespace(check_scores=np.round(rng.random(n), 1))
    pred = torch.rand(n, dtype=torch.float64)
    rows = torch.arange(n)
    lent = MatchInputs(coco, image_ids, cats, rles)
    for match in (None, lent):
        gain = heldout_gain(samples, rows, pred, recal, dataset, None, match)
        dets = Detections(image_ids=image_ids, category_ids=cats, boxes_xywh=np.zeros((n, 4)),
                          rles=rles, cls_scores=samples.cls_scores.numpy(),
                          pred_ious=pred.numpy(), maskness=samples.maskness.numpy(),
                          labels=cats, rel_areas=np.ones(n), scores=np.ones(n))
        cls, mk = samples.cls_scores.numpy(), samples.maskness.numpy()
        for name, s in (("maskness", cls * mk), ("rescored", cls * pred.numpy()),
                        ("recalibrated", recal.check_scores)):
            expected = coco_ap(coco, coco_results(dets, s, "segm"), "segm",
                               image_ids=sorted(set(image_ids.tolist())))["AP"]
            assert gain["mask_ap"][name] == expected, name
        assert gain["images"] == len(set(image_ids.tolist())) and gain["detections"] == n
    assert lent._every is not None  # the lent table was the one used


def test_categories_without_ground_truth_are_left_out_wherever_they_sort():
    only_b = coco_of([(1, 2, (0, 0, 16, 16), 0)], 1)  # category 1 ("a") has no object
    table = MatchTable(only_b, [1], np.array([1, 1]), np.array([1, 2]),
                       [rle(0, 0, 16, 16), rle(0, 0, 16, 16)])
    assert table.ap(np.array([0.9, 0.5])) == pytest.approx(100.0, abs=1e-12)
    empty = coco_of([], 1)  # no object at all: no category counts, AP 0
    assert MatchTable(empty, [1], np.array([1]), np.array([1]),
                      [rle(0, 0, 4, 4)]).ap(np.array([0.5])) == 0.0


def test_a_subset_of_some_detections_of_an_image_drops_the_others():
    coco = coco_of([(1, 1, (0, 0, 16, 16), 0)], 1)
    rles = [rle(16, 16, 32, 32), rle(0, 0, 16, 16), rle(0, 0, 8, 8)]
    table = MatchTable(coco, [1], np.ones(3, np.int64), np.ones(3, np.int64), rles)
    sub = table.subset(np.array([1]))  # the right mask alone
    assert sub.n == 1 and sub.ap(np.array([0.1])) == pytest.approx(100.0, abs=1e-12)
    sub = table.subset(np.array([2, 0]))  # two wrong masks, in that order
    assert sub.ap(np.array([0.9, 0.1])) == 0.0
    # a subset of a subset: the table of its detections too
    both = table.subset(np.array([0, 1])).subset(np.array([1]))
    assert both.images.tolist() == [1] and both.ap(np.array([0.3])) == pytest.approx(
        100.0, abs=1e-12)


def test_the_search_keeps_its_bounds_and_moves_nothing_that_leaves_ap_level():
    coco = coco_of([(1, 1, (0, 0, 16, 16), 0), (2, 1, (0, 0, 16, 16), 0)], 2)
    rles = [rle(0, 0, 16, 16), rle(16, 16, 32, 32)] * 2
    table = MatchTable(coco, [1, 2], np.array([1, 1, 2, 2]), np.ones(4, np.int64), rles)
    x = np.log(np.array([[0.5, 0.9, 1.0], [0.9, 0.1, 1.0], [0.5, 0.9, 1.0], [0.9, 0.1, 1.0]]))
    # the first step (0.5) would overshoot the bound 0.3, which already ranks the right copies
    # first: the weight stops at the bound
    w, ap = search_weights(x[:, :2], table, np.array([1.0, 0.0]), fixed=0, bounds=(-3.0, 0.3))
    assert w.tolist() == [1.0, 0.3] and ap == pytest.approx(100.0, abs=1e-12)
    # a constant signal (log 1 = 0) changes no order: its weight stays, even with no least gain
    w, _ = search_weights(x, table, np.array([1.0, 0.0, 0.0]), fixed=0, min_gain=0.0)
    assert w[2] == 0.0
