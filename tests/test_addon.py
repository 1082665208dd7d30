"""Add-on mode: the cached detections, the head's targets and losses, the held-out split, the
recalibration and the add-on checkpoint, on hand-built values and tiny real runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from fakes import random_samples

from demo.testing import tiny_model, write_tiny_plain_checkpoint
from maskiou import MaskIoUHead
from maskiou.addon.collect import collect_samples
from maskiou.addon.fit import (
    AddonConfig,
    head_loss,
    pairwise_rank_loss,
    predict_ious,
    regression_target,
    train_head,
)
from maskiou.addon.recalibration import (
    MatchInputs,
    Recalibration,
    RecalibrationError,
    detection_groups,
    detection_signals,
    search_exponents,
    soft_logistic,
)
from maskiou.addon.run import holdout_images, holdout_split, load_recalibration, train_addon
from maskiou.data.coco import CocoInstanceDataset
from maskiou.data.synthetic import generate_synthetic_coco
from maskiou.models.checkpoint import load_checkpoint
from maskiou.models.load import load_trained_model
from maskiou.records import image_fingerprints, true_mask_ious


def test_coco_target_is_the_share_of_the_ten_thresholds_passed():
    iou = torch.tensor([0.0, 0.3, 0.4999, 0.5, 0.74, 0.75, 0.9, 0.95, 1.0])
    assert regression_target(iou, "coco").tolist() == pytest.approx(
        [0.0, 0.0, 0.0, 0.1, 0.5, 0.6, 0.9, 1.0, 1.0])
    assert torch.equal(regression_target(iou, "iou"), iou)
    with pytest.raises(ValueError, match="target"):
        regression_target(iou, "map")


def test_pairwise_rank_loss_known_values():
    scores = torch.tensor([0.5, 0.5], requires_grad=True)
    # one pair of the same class whose targets differ by more than 0.1, tied scores: log 2
    loss = pairwise_rank_loss(scores, torch.tensor([0.9, 0.2]), torch.tensor([1, 1]))
    assert loss.item() == pytest.approx(math.log(2))
    loss.backward()
    assert scores.grad[0] < 0 < scores.grad[1]  # push the better one up, the worse one down
    # other classes, or targets within the margin: no pair, an exact 0 in the graph
    none = pairwise_rank_loss(scores, torch.tensor([0.9, 0.2]), torch.tensor([1, 2]))
    assert none.item() == 0.0 and none.requires_grad
    close = pairwise_rank_loss(scores, torch.tensor([0.3, 0.25]), torch.tensor([1, 1]))
    assert close.item() == 0.0
    right = pairwise_rank_loss(torch.tensor([0.9, 0.1]), torch.tensor([0.9, 0.2]),
                               torch.tensor([1, 1]))
    assert right.item() == pytest.approx(math.log1p(math.exp(-0.8 / 0.05)))


def test_head_losses_known_values():
    pred, target = torch.tensor([0.5, 1.0]), torch.tensor([0.0, 1.0])
    assert head_loss(pred, target, "l2").item() == pytest.approx(0.125)
    assert head_loss(pred, target, "smooth_l1").item() == pytest.approx((0.5 - 0.05) / 2)
    assert head_loss(pred, target, "bce").item() == pytest.approx(
        (math.log(2) - math.log(1 - 1e-6)) / 2, rel=1e-4)
    with pytest.raises(ValueError, match="loss"):
        head_loss(pred, target, "hinge")


def test_holdout_is_a_seeded_share_of_the_images():
    ids = list(range(100, 120))
    held = holdout_images(ids, 0.25, seed=0)
    assert len(held) == 5 and held <= set(ids) and held == holdout_images(ids, 0.25, seed=0)
    assert held != holdout_images(ids, 0.25, seed=1)
    head, out = holdout_split(torch.tensor([100, 101, 102, 100]), {100})
    assert head.tolist() == [1, 2] and out.tolist() == [0, 3]


def test_train_head_lowers_the_loss_and_leaves_a_contiguous_eval_head():
    samples = random_samples()
    cfg = AddonConfig(epochs=6, batch_size=16, lr=3e-3, target="iou")
    torch.manual_seed(0)
    head = MaskIoUHead(8, 3, conv_channels=8, num_convs=2, fc_dim=32, score_inputs=2)
    log = train_head(head, samples, cfg, progress=False)
    assert len(log) == 6 and log[-1]["loss"] < log[0]["loss"]
    assert not head.training
    assert all(p.is_contiguous() for p in head.parameters())
    q = predict_ious(head, samples)
    assert q.shape == (64,) and (q >= 0).all() and (q <= 1).all()
    with pytest.raises(ValueError, match="no detections"):
        train_head(head, samples, AddonConfig(min_target=1.0), progress=False)


def test_heldout_loss_is_logged_without_changing_the_training():
    samples = random_samples()
    cfg = AddonConfig(epochs=3, batch_size=16, target="iou", loss="l2")
    train, held = torch.arange(48), torch.arange(48, 64)
    heads = []
    for heldout in (None, held):
        torch.manual_seed(0)
        heads.append(MaskIoUHead(8, 3, conv_channels=8, num_convs=2, fc_dim=32,
                                 score_inputs=2))
        log = train_head(heads[-1], samples, cfg, train, progress=False, heldout=heldout)
    for a, b in zip(heads[0].state_dict().values(), heads[1].state_dict().values()):
        assert torch.equal(a, b)  # measuring the held-out rows leaves the training as it was
    assert "heldout_loss" not in train_head(heads[0], samples, cfg, train, progress=False)[0]
    # the last epoch's held-out loss: the mean squared error of the trained head's predicted
    # IoU (clamped to [0, 1]) on the held-out rows
    pred = predict_ious(heads[1], samples, held)
    want = float(((pred - samples.targets[held]) ** 2).mean())
    assert log[-1]["heldout_loss"] == pytest.approx(want, rel=1e-6)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("addon")
    det = generate_synthetic_coco(d / "det", 8, 6, seed=0, progress=False)
    addon = generate_synthetic_coco(d / "addon", 10, 0, seed=1, progress=False)
    return {"root": d, "det": det, "addon": addon}


@pytest.mark.threads
def test_collected_samples_align_with_the_detections_and_their_true_mask_iou(data):
    val = CocoInstanceDataset(data["det"].val_json, data["det"].val_images)
    model = tiny_model(len(val.class_names))
    model.roi_heads.maskiou_rescore = True
    samples, dets = collect_samples(model, val, progress=False, return_detections=True)
    assert len(samples) == len(dets) > 0 and model.roi_heads.maskiou_rescore  # restored
    assert samples.roi_features.shape[1:] == (64, 14, 14)
    assert samples.cls_scores.tolist() == pytest.approx(dets.cls_scores.tolist())
    assert samples.targets.numpy() == pytest.approx(true_mask_ious(dets, val.coco), abs=1e-6)
    mirrored = collect_samples(model, val, [0], view="mirror", progress=False)
    assert set(mirrored.image_ids.tolist()) == {int(val.image_ids[0])}
    top, top_dets = collect_samples(model, val, progress=False, return_detections=True,
                                    max_detections=1)
    assert len(top) == len(val) and torch.unique(top.image_ids).numel() == len(val)
    first = [int(np.flatnonzero(dets.image_ids == i)[0]) for i in top_dets.image_ids]
    assert top.cls_scores.tolist() == pytest.approx(dets.cls_scores[first].tolist())
    # rows stay aligned: the same images in the same batch, so the same computation, bit for bit
    assert torch.equal(top.roi_features, samples.roi_features[first])


def test_train_addon_checkpoint_embeds_the_detector_and_records_its_images(data, tmp_path):
    names = CocoInstanceDataset(data["addon"].train_json, data["addon"].train_images).class_names
    detector = write_tiny_plain_checkpoint(tmp_path / "plain.pt", names)
    cfg = AddonConfig(epochs=1, crossfit_folds=0)  # the held-out fifth, not cross-fitting
    path = train_addon(detector, data["addon"].train_json, data["addon"].train_images,
                       tmp_path / "run", cfg, progress=False, log=lambda m: None)
    ckpt = load_checkpoint(path)
    addon = CocoInstanceDataset(data["addon"].train_json, data["addon"].train_images)
    assert ckpt["addon"]["fitted_on"] == image_fingerprints(addon)
    recal = load_recalibration(ckpt)
    # the cache keeps the masks, so the weights were searched for AP
    assert recal.kind == "search" and len(recal.fitted_on) == 2  # 20% of 10 images
    plain = load_checkpoint(detector)["model"]
    assert all(torch.equal(ckpt["model"][k], v) for k, v in plain.items())  # frozen, embedded
    model, meta = load_trained_model(path)  # without the detector's file
    assert meta["addon"]["detector_sha1"] and model.roi_heads.maskiou_head.score_inputs == 2


def test_the_add_on_warns_when_given_the_detectors_training_images(data, tmp_path):
    from maskiou.models.checkpoint import save_atomic

    names = CocoInstanceDataset(data["det"].train_json, data["det"].train_images).class_names
    detector = write_tiny_plain_checkpoint(tmp_path / "plain.pt", names)
    ckpt = load_checkpoint(detector)
    ckpt["config"] = {**ckpt["config"], "synthetic_dir": str(data["det"].root),
                      "synthetic_train": 8, "synthetic_val": 6}
    save_atomic(ckpt, detector)
    with pytest.warns(UserWarning, match="8 of its 8 images are images the detector"):
        train_addon(detector, data["det"].train_json, data["det"].train_images, tmp_path / "r",
                    AddonConfig(epochs=1, recalibration="none", flip=False), progress=False,
                    log=lambda m: None)


def _signals(n: int, seed: int = 0):
    """The five signals' logs of n detections (uncontested 1) and a true MaskIoU made of the
    head's output and the maskness."""
    rng = np.random.default_rng(seed)
    cls, head, mk, area = (rng.uniform(0.05, 1, n) for _ in range(4))
    true = np.clip(0.5 * head + 0.5 * mk + rng.normal(0, 0.05, n), 0, 1)
    boxes = np.c_[np.arange(n) * 10.0, np.zeros(n), np.arange(n) * 10.0 + 5, np.full(n, 5.0)]
    x = detection_signals(cls, head, mk, area, boxes, rng.integers(1, 4, n), np.zeros(n))
    return x, true


def test_detection_signals_are_the_models_own_per_image():
    cls = np.array([0.9, 0.5, 0.4, 0.8])
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 5], [0, 0, 10, 10.0]])
    labels = np.array([1, 1, 1, 1])
    # detection 3 is in another image: nothing above it there; 2 is under 1 (IoU 1) and 0
    x = detection_signals(cls, np.ones(4), np.ones(4), np.full(4, 0.5), boxes, labels,
                          np.array([7, 7, 7, 8]))
    assert np.exp(x[:, 4]).tolist() == pytest.approx([1.0, 0.5, 1e-4, 1.0])  # clipped at EPS
    assert np.exp(x[:, 0]).tolist() == pytest.approx(cls.tolist())


def test_logistic_recalibration_learns_which_signals_count_and_round_trips():
    x, true = _signals(400)
    recal = Recalibration.fit("logistic", x, true, {"abc": 7})
    coef = recal.weights
    assert coef[1] > 0.5 and coef[2] > 0.5 and abs(coef[0]) < 0.3  # head and maskness, not cls
    s = recal.predict(x)
    assert s.shape == (400,) and ((s > 0) & (s < 1)).all()
    assert np.corrcoef(s, true)[0, 1] > 0.9
    # what it keeps is scikit-learn's logistic function, by hand
    np.testing.assert_allclose(s, 1 / (1 + np.exp(-(x @ np.array(coef) + recal.bias))),
                               rtol=1e-12)
    again = Recalibration.from_state(recal.state())
    # the state keeps the fitted float64 coefficients as they are: the same computation
    assert np.array_equal(again.predict(x), s)
    old = {**recal.state(), "weights": recal.weights[:4]}  # maskiou's four-signal state
    assert Recalibration.from_state(old).weights == recal.weights[:4] + [0.0]
    with pytest.raises(ValueError, match="too few"):
        Recalibration.fit("logistic", x[:5], true[:5], {})
    for kind in ("isotonic", "gbm"):  # the gradient-boosted one could not run in the model
        with pytest.raises(ValueError, match="recalibration must be"):
            Recalibration.fit(kind, x, true, {})


def _pairs_case(n: int = 12):
    """One object per image of n, two detections each (the first the object): the class score
    is noise, the maskness finds the right one. Returns (signals Float[2n, 5], true MaskIoU,
    MatchInputs)."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    def rle(x0, y0):
        m = np.zeros((32, 32), np.uint8, order="F")
        m[y0:y0 + 16, x0:x0 + 16] = 1
        out = mask_utils.encode(m)
        out["counts"] = out["counts"].decode()
        return out

    coco = COCO()
    coco.dataset = {"images": [{"id": i, "width": 32, "height": 32} for i in range(n)],
                    "categories": [{"id": 5, "name": "a"}],
                    "annotations": [{"id": i + 1, "image_id": i, "category_id": 5,
                                     "segmentation": rle(0, 0), "area": 256.0, "iscrowd": 0,
                                     "bbox": [0, 0, 16, 16]} for i in range(n)]}
    coco.createIndex()
    image_ids = np.repeat(np.arange(n), 2)
    right = np.tile([1.0, 0.0], n)  # true MaskIoU: the first of each pair is the object
    rng = np.random.default_rng(0)
    cls = rng.uniform(0.4, 0.9, 2 * n)
    mk = np.where(right > 0, 0.95, 0.6)
    boxes = np.tile([[0, 0, 16, 16], [16, 16, 32, 32]], (n, 1)).astype(float)
    x = detection_signals(cls, np.ones(2 * n), mk, np.full(2 * n, 0.25), boxes,
                          np.ones(2 * n, np.int64), image_ids)
    match = MatchInputs(coco, image_ids, np.full(2 * n, 5), [rle(0, 0), rle(16, 16)] * n)
    return x, right, match


def test_the_searched_recalibration_ranks_by_the_signal_that_finds_the_objects():
    """The search gives the maskness weight (from 0), the scale and bias make the score
    estimate the target, and each detection gets an out-of-sample score."""
    n = 12
    x, right, match = _pairs_case(n)
    recal = Recalibration.fit("search", x, right, {"h": 1}, match, target="iou")
    assert recal.kind == "search" and recal.weights[2] > 0  # maskness now counts
    s = recal.predict(x)
    assert (s[right > 0] > s[right == 0].max()).all()  # every object above every miss
    assert match.table(np.arange(2 * n)).ap(s) == pytest.approx(100.0, abs=1e-12)
    assert recal.check_scores.shape == (2 * n,) and (recal.check_scores > 0).all()
    # without masks (nothing to measure AP with) the fit is the logistic one
    assert Recalibration.fit("search", x, right, {}, None).kind == "logistic"


@pytest.mark.parametrize("columns", [4, 5, 6])
def test_the_search_set_up_is_the_one_the_levers_script_copied(columns):
    """``search_exponents`` on fewer or more columns than the five signals is the set-up
    research/recalibration_levers.py once carried as its own copy: a MatchTable built on the
    rows' own images, the rescoring's start (1, 1, then 0) and the head's weight fixed."""
    from maskiou.addon.apsearch import MatchTable, search_weights

    x, right, match = _pairs_case()
    x = np.c_[x, x[:, 2]][:, :columns]  # a sixth column: the maskness again
    rows = np.arange(4, 20)
    old_table = MatchTable(match.coco, sorted(set(match.image_ids[rows].tolist())),
                           match.image_ids[rows], match.category_ids[rows],
                           [match.rles[i] for i in rows])
    start = np.zeros(columns)
    start[0] = start[1] = 1.0
    old, _ = search_weights(x[rows], old_table, start, fixed=1)
    new = search_exponents(x, match, rows)
    assert new.tolist() == old.tolist() and new[1] == 1.0 and new[2] > 0


def test_detection_groups_are_the_old_keys_groups():
    """One grouping of detections by image and view: the same groups as each key it replaced
    (``ids * 256 + views`` in the add-on, ``ids * 16 + views`` in the levers script, a sort of
    one key in the recalibration), ordered by (image, view), each in detection order."""
    ids = np.array([7, 3, 7, 3, 7, 3, 7])
    views = np.array([0, 0, 1, 0, 0, 2, 1])
    groups = [g.tolist() for g in detection_groups(ids, views)]
    assert groups == [[1, 3], [5], [0, 4], [2, 6]]
    for key in (ids * 256 + views, ids * 16 + views):
        assert groups == [np.flatnonzero(key == k).tolist() for k in np.unique(key)]
        order = np.argsort(key, kind="stable")
        old = np.split(order, np.flatnonzero(np.diff(key[order])) + 1)
        assert groups == [np.sort(g).tolist() for g in old]
    assert [g.tolist() for g in detection_groups(ids)] == [[1, 3, 5], [0, 2, 4, 6]]
    assert detection_groups(np.zeros(0, np.int64)) == []
    with pytest.raises(ValueError, match="7 image ids but 2 views"):
        detection_groups(ids, views[:2])


def test_detection_signals_see_each_view_of_an_image_apart():
    """Two detections of one box in one image: in the same view the lower one is contested
    (IoU 1 with a higher one of its class, uncontested at the floor 1e-4); in two views of
    the image, neither is."""
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10.0]])
    args = (np.array([0.9, 0.6]), np.ones(2), np.ones(2), np.full(2, 0.5), boxes,
            np.array([1, 1]), np.array([4, 4]))
    assert np.exp(detection_signals(*args)[:, 4]).tolist() == pytest.approx([1.0, 1e-4])
    assert np.exp(detection_signals(*args, np.array([0, 1]))[:, 4]).tolist() == [1.0, 1.0]


def test_the_standardized_logistic_fit_is_the_levers_scripts_pipeline():
    """``soft_logistic(..., standardize=True)`` gives the scores of the fit the levers script
    carried as its own copy (scikit-learn's StandardScaler then LogisticRegression, C = 1, soft
    labels as weights) on a fixed input with a constant column; without it the weights are the
    unscaled fit's, a different model on columns of other scales."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(3)
    x = rng.normal(size=(80, 4)) * [1.0, 10.0, 0.1, 0.0] + [0.0, 5.0, -2.0, 0.7]
    y = np.clip(0.4 + 0.2 * x[:, 0] + 0.02 * x[:, 1] + rng.normal(0, 0.1, 80), 0, 1)
    old = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    old.fit(np.concatenate([x, x]), np.r_[np.ones(80), np.zeros(80)],
            logisticregression__sample_weight=np.r_[y, 1.0 - y] + 1e-6)
    w, b = soft_logistic(x, y, standardize=True)
    np.testing.assert_allclose(1 / (1 + np.exp(-(x @ w + b))), old.predict_proba(x)[:, 1],
                               rtol=0, atol=1e-12)
    assert abs(w[3]) < 1e-9 and np.sign(w[:3]).tolist() == np.sign(old[-1].coef_[0][:3]).tolist()
    plain, _ = soft_logistic(x, y)
    assert np.abs(plain - w).max() > 1e-3


def test_recalibration_refuses_the_images_it_was_fitted_on_naming_their_ids():
    x, true = _signals(50)
    recal = Recalibration.fit("logistic", x, true, {"aaa": 11, "bbb": 12})
    recal.check_not_fitted_on({"ccc": 11, "ddd": 30}, "val.json")  # same id, other image: fine
    with pytest.raises(RecalibrationError, match=r"val.json: 1 of its images \(ids 99\)"):
        recal.check_not_fitted_on({"bbb": 99, "ccc": 11}, "val.json")


def test_image_folds_deal_every_image_once_by_seed():
    from maskiou.addon.run import image_folds

    ids = list(range(100, 110))
    folds = image_folds(ids, 3, seed=0)
    assert sorted(len(f) for f in folds) == [3, 3, 4]
    assert set().union(*folds) == set(ids) and sum(len(f) for f in folds) == 10
    assert folds == image_folds(ids, 3, seed=0) and folds != image_folds(ids, 3, seed=1)


@pytest.mark.threads
def test_crossfit_predicts_each_fold_with_a_head_that_never_saw_it():
    """Two folds: the out-of-fold prediction of fold A is exactly what a head trained from the
    same initialization on fold B's rows (all views) predicts; mirrored rows are never
    predicted; "average" leaves the mean of the two fold heads."""
    from maskiou.addon.run import crossfit_head, image_folds

    samples = random_samples(96)
    samples.image_ids = torch.arange(96) // 4  # 24 images of 4 detections
    samples.views = (torch.arange(96) % 4 == 3).to(torch.int8)  # one mirrored row per image
    cfg = AddonConfig(epochs=2, batch_size=16, crossfit_folds=2, crossfit_final="average")
    torch.manual_seed(0)
    head = MaskIoUHead(8, 3, conv_channels=8, num_convs=2, fc_dim=32, score_inputs=2)
    init = {k: v.clone() for k, v in head.state_dict().items()}
    rows, oof, _ = crossfit_head(head, samples, cfg, list(range(24)), False, 0, lambda m: None)
    assert rows.tolist() == [i for i in range(96) if i % 4 != 3]
    states = []
    for fold in image_folds(list(range(24)), 2, cfg.seed):
        inside = torch.isin(samples.image_ids, torch.tensor(sorted(fold)))
        again = MaskIoUHead(8, 3, conv_channels=8, num_convs=2, fc_dim=32, score_inputs=2)
        again.load_state_dict(init)
        train_head(again, samples, cfg, torch.where(~inside)[0], progress=False, workers=0)
        mine = torch.where(inside & (samples.views == 0))[0]
        # the same start, rows, seed and batches in one process: the same computation
        assert torch.equal(oof[torch.isin(rows, mine)], predict_ious(again, samples, mine))
        states.append(again.state_dict())
    for k, v in head.state_dict().items():
        if v.is_floating_point():  # the weights; the calibration's flag is not averaged
            assert torch.allclose(v, (states[0][k] + states[1][k]) / 2, atol=1e-7), k
        else:
            assert torch.equal(v, init[k]), k


def test_a_recalibration_that_could_not_be_checked_is_kept(data):
    """Detections kept in memory carry no masks, so the held-out check cannot run: the
    recalibration becomes the model's final score all the same (nothing to compare it with)."""
    from maskiou.addon.run import fit_addon
    from maskiou.attach import find_maskiou_head

    addon = CocoInstanceDataset(data["addon"].train_json, data["addon"].train_images)
    model = tiny_model(len(addon.class_names))
    fit = fit_addon(model, addon, AddonConfig(epochs=1, crossfit_folds=0), detector_sha1="0",
                    cache=None, progress=False, log=lambda m: None)
    assert fit.heldout is None and fit.recalibration is not None
    assert bool(find_maskiou_head(model).calibration.fitted)
    assert find_maskiou_head(model).calibration.weights.tolist() == pytest.approx(
        fit.recalibration.weights)
    # no masks, no matching: no map per class
    assert not bool(find_maskiou_head(model).calibration.class_fitted)
    assert fit.recalibration.class_curves is None


def test_crossfit_addon_reports_its_held_out_gain_and_warns_when_it_is_not_positive(
        data, tmp_path):
    names = CocoInstanceDataset(data["addon"].train_json, data["addon"].train_images).class_names
    detector = write_tiny_plain_checkpoint(tmp_path / "plain.pt", names)
    logs = []
    with pytest.warns(UserWarning, match="did not beat maskness on its own held-out images"):
        path = train_addon(detector, data["addon"].train_json, data["addon"].train_images,
                           tmp_path / "run", AddonConfig(epochs=1, crossfit_folds=2),
                           progress=False, log=logs.append)
    ckpt = load_checkpoint(path)
    held = ckpt["addon"]["heldout"]
    # every image predicted out of fold, every detection of the images as they are
    assert held["images"] == 10 and set(held["mask_ap"]) == {"maskness", "rescored",
                                                             "recalibrated"}
    assert held["gain"] == pytest.approx(held["mask_ap"][held["best"]]
                                         - held["mask_ap"]["maskness"], abs=1e-3)
    assert len(load_recalibration(ckpt).fitted_on) == 10  # the recalibration saw every image
    assert any(m.startswith("held-out check on 10 add-on images") for m in logs)
    assert sum("cross-fitting: fold" in m for m in logs) == 2
    # the map per class is fitted where the recalibration is kept, and the checkpoint's model
    # carries the curves its recalibration records
    kept = held["mask_ap"]["recalibrated"] >= held["mask_ap"]["rescored"]
    fitted = [v for k, v in ckpt["model"].items() if k.endswith("calibration.class_fitted")]
    assert [bool(v) for v in fitted] == [kept]
    assert any(m.startswith("fitted the final score's map per class") for m in logs) == kept
    if kept:
        curves = next(v for k, v in ckpt["model"].items() if k.endswith("class_curves"))
        assert torch.allclose(curves, torch.tensor(load_recalibration(ckpt).class_curves))
        thresholds = next(v for k, v in ckpt["model"].items() if k.endswith("class_thresholds"))
        assert thresholds.tolist() == pytest.approx(load_recalibration(ckpt).class_thresholds)
        # one common threshold for every class, none for background
        assert thresholds[0] == 0 and len(set(thresholds[1:].tolist())) == 1
        assert any(m.startswith("the masks worth keeping: final score >= ") for m in logs)


def test_ablation_scores_a_cross_fitted_add_on_and_the_ensemble_of_its_fold_heads(data,
                                                                                 tmp_path):
    import sys
    from pathlib import Path

    from maskiou.addon.run import attach_to_detector

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "research"))
    import ablation

    train = CocoInstanceDataset(data["addon"].train_json, data["addon"].train_images)
    val_set = CocoInstanceDataset(data["det"].val_json, data["det"].val_images)
    detector = write_tiny_plain_checkpoint(tmp_path / "plain.pt", train.class_names)
    model, _ = attach_to_detector(detector, AddonConfig())
    val, val_dets = collect_samples(model, val_set, progress=False, return_detections=True)
    rows = {}
    for folds in (2, 0):
        rows[folds] = ablation.evaluate_row(
            f"folds-{folds}", AddonConfig(epochs=1, crossfit_folds=folds), str(detector), train,
            tmp_path / "cache", val, val_dets, val_set.coco, "cpu", False)
    ens = rows[2]["ensemble"]["segm"]
    assert set(ens) == set(rows[2]["segm"]) and "ensemble" not in rows[0]
    # the same detections and maskness scores, so the same AP computation: exact
    assert ens["maskness"] == rows[2]["segm"]["maskness"]
    pearson = rows[2]["ensemble"]["correlation"]["head_pearson"]
    assert pearson != rows[2]["correlation"]["head_pearson"]  # the mean of three heads

    # --curve-pretrain's start: the fit begins from the given head weights, not a fresh head
    from maskiou.attach import find_maskiou_head

    start = {k: torch.full_like(v, 0.01) if v.is_floating_point() else v
             for k, v in find_maskiou_head(model).state_dict().items()}
    seen = {}
    real = ablation.fit_addon

    def spy(fitted, *args, **kwargs):
        seen.update({k: v.clone() for k, v in find_maskiou_head(fitted).state_dict().items()})
        return real(fitted, *args, **kwargs)

    ablation.fit_addon = spy
    try:
        ablation.evaluate_row("started", AddonConfig(epochs=1, crossfit_folds=0), str(detector),
                              train, tmp_path / "cache", val, val_dets, val_set.coco, "cpu",
                              False, head_start=start)
    finally:
        ablation.fit_addon = real
    assert seen.keys() == start.keys() and all(torch.equal(seen[k], start[k]) for k in start)


def test_the_ablations_pretrain_start_comes_from_the_named_training_images(monkeypatch):
    """``--pretrain`` starts every fit from a head pretrained on the split that
    ``--pretrain-json``/``--pretrain-images`` name (the embedded one when not named); without
    it the fits start fresh."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "research"))
    import ablation

    calls = []
    monkeypatch.setattr(ablation, "pretrained_head",
                        lambda detector, device, progress, split=None: calls.append(split) or {})
    parse = ablation.parser().parse_args
    assert ablation.head_start(parse([]), "d.pt", False) is None and calls == []
    assert ablation.head_start(parse(["--curve-pretrain"]), "d.pt", False) == {}
    ablation.head_start(parse(["--pretrain", "--pretrain-json", "t.json", "--pretrain-images",
                               "t/"]), "d.pt", False)
    assert calls == [None, ("t.json", "t/")]


@pytest.mark.parametrize("row", ["mask-head-features", "context-features", "image-pixels"])
def test_the_ablations_feature_rows_rewire_what_the_head_sees_and_keep_the_masks(data, tmp_path,
                                                                                  row):
    """The head-input rows of research/ablation.py change only what the MaskIoU head is
    given: the same boxes, scores and masks, and as features the mask head's output (the same
    shape), or the box's own RoI features followed by those of the box enlarged twice or by
    the box's pixels."""
    import sys
    from pathlib import Path

    from maskiou.addon.collect import detection_rows
    from maskiou.addon.run import attach_to_detector
    from maskiou.attach import find_maskiou_head

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "research"))
    import ablation

    train = CocoInstanceDataset(data["addon"].train_json, data["addon"].train_images)
    detector = write_tiny_plain_checkpoint(tmp_path / "plain.pt", train.class_names)
    plain, _ = attach_to_detector(detector, AddonConfig())
    wired, _ = attach_to_detector(detector, AddonConfig())
    ablation.FEATURE_ROWS[row](wired)
    assert ablation.FEATURE_ROWS[row](wired) is wired  # rewiring twice changes nothing more
    channels = find_maskiou_head(plain).in_channels
    (_, before, _), = detection_rows(plain, train, [0, 1], batch_size=2)
    (_, after, _), = detection_rows(wired, train, [0, 1], batch_size=2)
    assert len(before["labels"]) > 0
    for key in ("labels", "cls_scores", "mask_probs", "boxes", "targets", "maskness"):
        assert np.array_equal(before[key], after[key]), key
    rh = plain.roi_heads
    if row == "context-features":
        assert find_maskiou_head(wired).in_channels == 2 * channels
        assert np.array_equal(after["roi_features"][:, :channels], before["roi_features"])
        assert after["roi_features"].shape[1] == 2 * channels
        assert not np.array_equal(after["roi_features"][:, channels:], before["roi_features"])
    elif row == "image-pixels":
        assert find_maskiou_head(wired).in_channels == channels + 3
        assert np.array_equal(after["roi_features"][:, :channels], before["roi_features"])
        # the last three channels: the box's pixels of the normalized image the detector saw
        (_, one, _), = detection_rows(wired, train, [0], batch_size=1)
        from torchvision.ops import roi_align

        image = train[0][0]
        batch, _ = wired.transform([image])
        (h, w), (h0, w0) = batch.image_sizes[0], image.shape[1:]
        boxes = torch.from_numpy(one["boxes"]).float() * torch.tensor([w / w0, h / h0] * 2)
        expected = roi_align(batch.tensors, [boxes], find_maskiou_head(wired).roi_size,
                             spatial_scale=1.0, sampling_ratio=2, aligned=True)
        np.testing.assert_allclose(one["roi_features"][:, channels:].astype(np.float32),
                                   expected.numpy(), atol=2e-2)
    else:
        feats = torch.from_numpy(before["roi_features"]).float()
        with torch.no_grad():
            expected = rh.mask_head(feats).half().numpy()
        assert after["roi_features"].shape == before["roi_features"].shape
        # the mask head on the float16-stored inputs vs on the float32 ones: float16 rounding
        np.testing.assert_allclose(after["roi_features"].astype(np.float32),
                                   expected.astype(np.float32), atol=2e-2, rtol=1e-2)


def test_the_stored_thresholds_of_one_common_threshold():
    """Background (label 0) keeps 0, every other label the threshold; ``inf`` (keep nothing)
    is stored as 2.0, above any score."""
    from maskiou.addon.run import stored_thresholds

    assert stored_thresholds(0.41, 4) == [0.0, 0.41, 0.41, 0.41]
    assert stored_thresholds(float("inf"), 2) == [0.0, 2.0]
