"""The YOLO-seg adapter (maskiou_integrations.ultralytics_yolo): the contract, found through its
entry point, detections bit for bit those of the plain model, ultralytics' own ``Results``
carrying the same scores, and the add-on leaving the frozen detector bit-identical."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from offline_ultralytics import require_offline_ultralytics

require_offline_ultralytics()  # a skip without ultralytics; no network attempt, ever

from test_contract import images, targets  # noqa: E402
from test_ultralytics_models import NAMES, tiny_model  # noqa: E402

from maskiou import attach_maskiou_head, check_adapter  # noqa: E402
from maskiou.attach import find_adapter, framework_adapter  # noqa: E402
from maskiou_integrations.ultralytics_yolo import (  # noqa: E402
    UltralyticsYOLOAdapter,
    detect,
    mask_probs_in_boxes,
    to_uint8,
)

ROOT = Path(__file__).resolve().parents[1]
HEAD = {"conv_channels": 8, "num_convs": 2, "fc_dim": 16, "score_inputs": 2}


def model_64() -> torch.nn.Module:
    model = tiny_model()
    model.maskiou_predict = {"imgsz": 64}
    return model


def detector_entry(model: torch.nn.Module) -> dict:
    return {"yaml": model.yaml, "imgsz": 64, "conf": 0.001, "iou": 0.7, "max_det": 100}


def test_the_ultralytics_adapter_passes_the_contract():
    model = model_64()
    report = check_adapter(UltralyticsYOLOAdapter(), model, images(), targets(),
                           detector=detector_entry(model))
    assert report.ok, str(report)
    assert {"predict (plain model)", "predict (head attached)",
            "predict: detector outputs unchanged by attaching", "collect",
            "load_detector"} <= set(report.passed)
    assert report.skipped == ["losses (not declared)"] + [
        f"{c} (declared; needs the framework's files or a training run)"
        for c in ("convert", "train")]


def test_found_through_its_entry_point_and_by_the_model():
    assert isinstance(framework_adapter("ultralytics", "load", "a test"), UltralyticsYOLOAdapter)
    assert isinstance(find_adapter(model_64()), UltralyticsYOLOAdapter)


def test_attaching_leaves_the_detections_bit_for_bit():
    """Without rescoring, the attached model's boxes, labels, class scores and masks are the
    plain model's, in its order; the head adds its outputs beside them."""
    plain = model_64()
    ims = [to_uint8(im) for im in images()]
    before = detect(plain, ims)
    attached = attach_maskiou_head(copy.deepcopy(plain), rescore_outputs=False, **HEAD)
    after = detect(attached, ims)
    for a, b in zip(before, after):
        assert len(a["boxes"]) > 0
        for k in ("boxes", "labels", "masks", "maskness"):
            assert torch.equal(a[k], b[k]), k
        assert torch.equal(a["scores"], b["cls_scores"])
        assert b["mask_quality"].shape == a["scores"].shape
    rescored = detect(attach_maskiou_head(copy.deepcopy(plain), **HEAD), ims)
    for r in rescored:  # the final score, sorted; the class score kept beside it
        assert torch.equal(r["scores"], r["scores"].sort(descending=True).values)
        assert not torch.equal(r["scores"], r["cls_scores"])


def test_mask_probs_in_a_box_are_the_prototype_mask_there():
    """A mask constant over the prototype grid reads the same value anywhere in any box."""
    protos = torch.zeros(2, 16, 16)
    protos[0] = 1.0
    coefficients = torch.tensor([[2.0, 5.0], [-1.0, 0.0]])
    boxes = torch.tensor([[0.0, 0.0, 64.0, 64.0], [10.0, 20.0, 30.0, 50.0]])
    probs = mask_probs_in_boxes(protos, coefficients, boxes, (64, 64), size=4)
    assert probs.shape == (2, 4, 4)
    torch.testing.assert_close(probs[0], torch.full((4, 4), torch.tensor(2.0).sigmoid().item()))
    torch.testing.assert_close(probs[1], torch.full((4, 4), torch.tensor(-1.0).sigmoid().item()))


def test_ultralytics_results_carry_the_same_scores():
    """``YOLO.predict`` with the MaskIoU predictor: ultralytics' Results, re-sorted by the final
    score, whose class scores, head outputs and final scores are the adapter's (its predictor
    fuses Conv + BatchNorm: equal to about 1e-5)."""
    from maskiou_integrations.ultralytics_results import MaskIoUSegmentationPredictor, as_yolo

    model = attach_maskiou_head(model_64(), **HEAD)
    image = to_uint8(images()[0])
    ours = detect(copy.deepcopy(model), [image])[0]
    yolo = as_yolo(model, NAMES)
    result = yolo.predict(np.ascontiguousarray(image[..., ::-1]), verbose=False,
                          predictor=MaskIoUSegmentationPredictor, conf=0.001, imgsz=64)[0]
    assert len(result.boxes) == len(ours["scores"]) > 0
    for theirs, mine in ((result.boxes.conf, ours["scores"]), (result.cls_scores,
                                                               ours["cls_scores"]),
                         (result.mask_quality, ours["mask_quality"])):
        torch.testing.assert_close(theirs.float(), mine, atol=1e-4, rtol=1e-3)
    assert torch.equal(result.boxes.conf, result.boxes.conf.sort(descending=True).values)


def test_the_addon_leaves_the_frozen_detector_bit_identical(tmp_path):
    """Head training reads the detector's detections only: its weights after are its weights
    before, bit for bit."""
    from maskiou.addon.collect import collect_samples
    from maskiou.addon.config import AddonConfig
    from maskiou.addon.fit import train_head

    model = attach_maskiou_head(model_64(), **HEAD)
    before = {k: v.clone() for k, v in model.state_dict().items() if "maskiou_head" not in k}
    dataset = tiny_dataset(tmp_path)
    samples = collect_samples(model, dataset, progress=False)
    assert len(samples) > 0
    train_head(model.maskiou_head, samples, AddonConfig(epochs=1, batch_size=64))
    after = {k: v for k, v in model.state_dict().items() if "maskiou_head" not in k}
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def tiny_dataset(tmp_path):
    """Four embedded-style images (the tiny model knows three of their classes)."""
    from maskiou.data import CocoInstanceDataset
    from maskiou.data.synthetic import generate_synthetic_coco

    data = generate_synthetic_coco(tmp_path / "addon", 4, 0, seed=1, progress=False)
    return CocoInstanceDataset(data.train_json, data.train_images)


def test_an_ultralytics_run_converts_and_loads_as_a_maskiou_checkpoint(tmp_path):
    """``--detector-config args.yaml --checkpoint best.pt``: the adapter's ``convert``; a run of
    another task is refused, naming its file."""
    from test_ultralytics_models import LABEL_TO_CAT, ultralytics_weights

    from maskiou.models.checkpoint import save_atomic
    from maskiou.models.load import load_trained_model

    model = tiny_model()
    weights = ultralytics_weights(model, tmp_path / "best.pt")
    (tmp_path / "args.yaml").write_text("task: segment\nimgsz: 96\n")
    ckpt = UltralyticsYOLOAdapter().checkpoint_from_files(
        str(tmp_path / "args.yaml"), str(weights), NAMES, LABEL_TO_CAT)
    assert ckpt["detector"]["imgsz"] == 96
    save_atomic(ckpt, tmp_path / "detector.pt")
    loaded, meta = load_trained_model(tmp_path / "detector.pt")
    assert meta["framework"] == "ultralytics" and loaded.maskiou_predict["imgsz"] == 96
    image = to_uint8(images()[0])
    ours = detect(loaded, [image])[0]
    model.maskiou_predict = {"imgsz": 96}
    plain = detect(copy.deepcopy(model).half().float(), [image])[0]  # the float16 weights
    assert torch.equal(ours["boxes"], plain["boxes"])
    (tmp_path / "detect.yaml").write_text("task: detect\n")
    with pytest.raises(ValueError, match="detect.yaml: not the args.yaml"):
        UltralyticsYOLOAdapter().checkpoint_from_files(str(tmp_path / "detect.yaml"),
                                                       str(weights), NAMES, LABEL_TO_CAT)


# --- the figures of docs/frameworks/ultralytics.md ---------------------------------------------

PAGE = "frameworks/ultralytics"
METRICS = "main_job_ultralytics_cpu_metrics.json"


def measured() -> dict:
    from pages import DOCS

    return json.loads((DOCS / "measurements" / METRICS).read_text())


def test_the_yolo_page_shows_the_measured_run():
    """The page's table and paragraph are ``coco_eval.py --detector-framework ultralytics``'s
    metrics.json, formatted the page's way; the cls row is the shipped detector's recorded AP."""
    from pages import flat
    from test_shipped import marked_rows

    m = measured()
    assert m["framework"] == "ultralytics" and m["model_scoring"] == "recalibrated"
    rows = marked_rows(PAGE, "headline-ultralytics")
    assert set(rows) == {"cls", "maskness", "rescored", "recalibrated", "oracle"}
    for name, (ap, ap50, ap75, box) in rows.items():
        s = m["segm"][name]
        assert (ap, ap50, ap75, box) == (round(s["AP"], 1), round(s["AP50"], 1),
                                         round(s["AP75"], 1), round(m["bbox"][name]["AP"], 1))
    text = flat(PAGE)
    best, free, corr = m["segm"]["recalibrated"], m["segm"]["maskness"], m["correlation"]
    assert (f"**+{best['AP'] - free['AP']:.2f} mask AP, +{best['AP75'] - free['AP75']:.1f} "
            f"AP75** (recalibrated {best['AP']:.2f} / {best['AP75']:.2f} against maskness "
            f"{free['AP']:.2f} / {free['AP75']:.2f})") in text
    assert best["AP"] - free["AP"] >= 2.0  # the bar
    share = (best["AP"] - free["AP"]) / (m["segm"]["oracle"]["AP"] - free["AP"])
    assert f"closes {share:.0%} of the way from maskness to the oracle" in text
    log = (ROOT / "docs" / "measurements" / "main_job_ultralytics_cpu.log").read_text()
    check = re.search(r"held-out check on (\d+) add-on images .*: mask AP maskness ([\d.]+), "
                      r"rescored ([\d.]+), recalibrated ([\d.]+)", log)
    assert (f"Held-out check on {check.group(1)} add-on images (each half scored by weights "
            f"searched on the other): maskness {check.group(2)}, rescored {check.group(3)}, "
            f"recalibrated {check.group(4)}") in text
    assert f"**Pearson {corr['head_pearson']:.3f}**" in text and corr["head_pearson"] >= 0.75
    recorded = json.loads((ROOT / "docs" / "measurements" / "yolo_plain_eval.json").read_text())
    assert m["segm"]["cls"]["AP"] == pytest.approx(recorded["segm"]["cls"]["AP"], abs=0.05)
    assert f"{m['segm']['cls']['AP']:.2f} mask AP, the figure recorded" in text
    sec = m["seconds"]
    collected = re.search(r"collected (\d+) images in (\d+) s \(([\d.]+) images/s\)", log)
    assert (f"**{sec['total']:.0f} s from an empty cache on 2 CPU cores** (data "
            f"{sec['data']:.0f} s, add-on images {sec['addon_data']:.0f} s, the add-on "
            f"{sec['addon_training']:.0f} s of which {collected.group(2)} s collection at "
            f"{float(collected.group(3)):.0f} images/s, evaluation {sec['evaluation']:.0f} s)"
            ) in text
    assert sec["total"] <= 600  # the bar, on the machine that measured it
    readme = flat("README")
    s = m["segm"]
    assert (f"({sec['total']:.0f} s on 2 CPU cores)" in readme and
            f"the add-on scores {s['recalibrated']['AP']:.1f} mask AP against maskness "
            f"{s['maskness']['AP']:.1f} (oracle {s['oracle']['AP']:.1f})" in readme)


def test_the_shipped_yolo_addon_reproduces_the_page_table(tmp_path):
    """The shipped add-on (its head alone, joined to the shipped detector by sha1) gives the
    page's rows on the embedded validation split (about a minute on 2 cores)."""
    from test_shipped import marked_rows

    from maskiou.data.coco import CocoInstanceDataset
    from maskiou.evaluation.benchmark import embedded_val, evaluate_checkpoint, shipped_checkpoint
    from maskiou.models.checkpoint import save_atomic

    ckpt = shipped_checkpoint("ultralytics_addon")
    assert bool(ckpt["model"]["maskiou_head.calibration.fitted"])  # it returns recalibrated
    save_atomic(ckpt, tmp_path / "addon.pt")
    m = evaluate_checkpoint(tmp_path / "addon.pt", CocoInstanceDataset(*embedded_val(
        progress=False)), "cpu", progress=False)
    for name, (ap, _, ap75, box) in marked_rows(PAGE, "headline-ultralytics").items():
        got = (m["segm"][name]["AP"], m["segm"][name]["AP75"], m["bbox"][name]["AP"])
        assert got == pytest.approx((ap, ap75, box), abs=0.1), name
