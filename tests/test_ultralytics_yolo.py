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


def test_the_contract_holds_on_a_yolo_object():
    """``check_adapter`` on ultralytics' ``YOLO`` (not its ``.model``): every check passes."""
    yolo = yolov8_from_yaml()
    yolo.model.maskiou_predict = {"imgsz": 64}
    report = check_adapter(UltralyticsYOLOAdapter(), yolo, images(), targets(),
                           detector=detector_entry(yolo.model))
    assert report.ok, str(report)
    assert "predict (head attached)" in report.passed


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


def bgr(image: np.ndarray) -> np.ndarray:
    """An RGB uint8 image as ``YOLO.predict`` reads a numpy array (BGR)."""
    return np.ascontiguousarray(image[..., ::-1])


def yolov8_from_yaml():
    """``YOLO("yolov8n-seg.yaml")`` as a user builds it (80 classes, random weights, no
    download), with running statistics that are not the defaults and class logits at 0 (scores
    near 0.5) so that NMS keeps detections at 64 px."""
    from ultralytics import YOLO

    torch.manual_seed(0)
    yolo = YOLO("yolov8n-seg.yaml")
    yolo.model.train()
    with torch.no_grad():
        for _ in range(2):
            yolo.model(torch.rand(2, 3, 64, 64))
        for branch in yolo.model.model[-1].cv3:
            branch[-1].bias.zero_()
    yolo.model.eval()
    return yolo


def fit_calibration(model: torch.nn.Module) -> None:
    """A fitted, non-trivial calibration on the head (so that the final score is neither the
    class score nor cls x quality)."""
    calibration = model.maskiou_head.calibration
    with torch.no_grad():
        for name, value in calibration.named_buffers():
            if name == "fitted":
                value.fill_(True)
            elif value.is_floating_point() and value.numel():
                value.copy_(torch.linspace(0.2, 0.6, value.numel()).reshape(value.shape))


def assert_results_are_records(result, record, atol: float = 1e-5) -> None:
    """ultralytics' Results of one image carry the record's detections and scores (1e-5)."""
    assert len(result.boxes) == len(record["scores"]) > 0
    for theirs, mine in ((result.boxes.conf, record["scores"]),
                         (result.cls_scores, record["cls_scores"]),
                         (result.mask_quality, record["mask_quality"]),
                         (result.maskness, record["maskness"]),
                         (result.boxes.xyxy, record["boxes"]),
                         (result.boxes.cls + 1, record["labels"].float())):
        torch.testing.assert_close(theirs.float(), mine.float(), atol=atol, rtol=0)
    assert torch.equal(result.boxes.conf, result.boxes.conf.sort(descending=True).values)


def test_a_yolo_object_attaches_and_its_predict_returns_the_final_score():
    """``attach_maskiou_head(YOLO("yolov8n-seg.yaml"))``: the head goes into ``yolo.model``, the
    same ``YOLO`` is returned, and its plain ``predict`` (no predictor class, no conversion)
    returns ultralytics' Results whose ``boxes.conf`` is the final score, re-sorted, with the
    class score, the head's output and maskness beside it: the adapter's records to 1e-5."""
    yolo = yolov8_from_yaml()
    assert isinstance(find_adapter(yolo), UltralyticsYOLOAdapter)
    assert attach_maskiou_head(yolo, **HEAD) is yolo
    assert hasattr(yolo.model, "maskiou_head") and yolo.model.maskiou_rescore
    fit_calibration(yolo.model)
    yolo.model.maskiou_predict = {"imgsz": 64, "max_det": 300}  # YOLO.predict's max_det
    image = to_uint8(images()[0])
    record = UltralyticsYOLOAdapter().predict(copy.deepcopy(yolo.model),
                                              [images()[0]])[0]
    result = yolo.predict(bgr(image), conf=0.001, imgsz=64, verbose=False)[0]
    assert_results_are_records(result, record)
    assert not torch.allclose(result.boxes.conf, result.cls_scores)  # the final score
    # the adapter reads a YOLO object as its model
    again = UltralyticsYOLOAdapter().predict(yolo, [images()[0]])[0]
    torch.testing.assert_close(again["scores"], record["scores"], atol=1e-5, rtol=0)


def test_ultralytics_results_carry_the_same_scores():
    """``as_yolo`` of an add-on model: plain ``YOLO.predict`` gives the final score (also with
    the predictor class named explicitly); a head attached after a first predict is used (the
    predictor's copy of the model is dropped)."""
    from ultralytics import YOLO

    from maskiou_integrations.ultralytics_results import MaskIoUSegmentationPredictor, as_yolo

    model = attach_maskiou_head(model_64(), **HEAD)
    fit_calibration(model)
    image = to_uint8(images()[0])
    ours = detect(copy.deepcopy(model), [image])[0]
    yolo = as_yolo(model, NAMES)
    for predictor in (None, MaskIoUSegmentationPredictor):
        result = yolo.predict(bgr(image), verbose=False, predictor=predictor, conf=0.001,
                              imgsz=64, max_det=100)[0]
        assert_results_are_records(result, ours)
    plain = yolov8_from_yaml()
    before = plain.predict(bgr(image), conf=0.001, imgsz=64, verbose=False)[0]
    assert not hasattr(before, "cls_scores")
    attach_maskiou_head(plain, **HEAD)
    after = plain.predict(bgr(image), conf=0.001, imgsz=64, verbose=False)[0]
    assert isinstance(plain, YOLO) and len(after.boxes) == len(before.boxes) > 0
    # the same detections, now ordered by the final score, their class scores kept beside it
    torch.testing.assert_close(after.cls_scores.sort().values, before.boxes.conf.sort().values,
                               atol=1e-5, rtol=0)
    assert not torch.equal(after.boxes.conf, after.cls_scores)


def test_yolo_save_and_load_keep_the_head(tmp_path):
    """``yolo.save`` pickles ``yolo.model`` with its head (float16, as ultralytics saves);
    ``YOLO(path)`` gives it back, and after ``use_final_score`` its ``predict`` returns the
    final score of the loaded model's records (1e-5). Without it, ultralytics' plain Results."""
    from ultralytics import YOLO

    from maskiou_integrations.ultralytics_results import use_final_score

    yolo = attach_maskiou_head(yolov8_from_yaml(), **HEAD)
    fit_calibration(yolo.model)
    yolo.save(tmp_path / "with_head.pt")
    loaded = YOLO(str(tmp_path / "with_head.pt"))
    head = loaded.model.maskiou_head
    saved = {k: v.half().float() for k, v in yolo.model.maskiou_head.state_dict().items()}
    assert all(torch.equal(v.float(), saved[k].float()) for k, v in head.state_dict().items())
    image = to_uint8(images()[0])
    assert not hasattr(loaded.predict(bgr(image), conf=0.001, imgsz=64, verbose=False)[0],
                       "cls_scores")
    assert use_final_score(loaded) is loaded
    loaded.model.maskiou_predict = {"imgsz": 64, "max_det": 300}
    record = UltralyticsYOLOAdapter().predict(copy.deepcopy(loaded.model), [images()[0]])[0]
    result = loaded.predict(bgr(image), conf=0.001, imgsz=64, verbose=False)[0]
    assert_results_are_records(result, record)


def test_the_one_prediction_function_is_ultralytics_predictor():
    """The reference: :func:`detect` on a plain model against ultralytics' own predictor
    (``YOLO.predict``, its letterbox, NMS and masks): the same detections in the same order,
    boxes and scores to 1e-4 (its predictor fuses Conv + BatchNorm), the same masks."""
    from ultralytics.utils import ops

    from maskiou_integrations.ultralytics_results import as_yolo

    model = model_64()
    yolo = as_yolo(copy.deepcopy(model), NAMES)
    for image in (to_uint8(images()[0]), to_uint8(images()[1])[:40]):  # 64 x 64, 40 x 64
        ours = detect(model, [image])[0]
        theirs = yolo.predict(bgr(image), conf=0.001, imgsz=64, max_det=100,
                              verbose=False)[0]
        assert len(theirs.boxes) == len(ours["scores"]) > 0
        assert torch.equal(theirs.boxes.cls.long() + 1, ours["labels"])
        torch.testing.assert_close(theirs.boxes.xyxy, ours["boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(theirs.boxes.conf, ours["scores"], atol=1e-5, rtol=0)
        # its masks are at the letterboxed input's size: mapped to the image as its plots do
        masks = ops.scale_masks(theirs.masks.data[None], image.shape[:2])[0] > 0.5
        agree = (masks == (ours["masks"][:, 0] > 0.5)).float().mean()
        assert agree > 0.995, float(agree)
        if image.shape[:2] == (64, 64):  # no letterbox: bit for bit
            assert torch.equal(masks, ours["masks"][:, 0] > 0.5)


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
    assert best["AP"] - free["AP"] >= 2.0  # the issue's bar
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
    assert sec["total"] <= 600  # the issue's bar, on the machine that measured it
    readme = flat("README")
    s = m["segm"]
    assert (f"({sec['total']:.0f} s on 2 CPU cores)" in readme and
            f"the add-on scores {s['recalibrated']['AP']:.1f} mask AP against maskness "
            f"{s['maskness']['AP']:.1f} (oracle {s['oracle']['AP']:.1f})" in readme)


def test_the_plain_yolo_detector_has_one_figure_per_scoring():
    """One prediction function, one maskness: ``research/yolo_plain_eval.py`` and the main
    job give the plain detector's cls, maskness and oracle rows to the last digit, and the notes
    page shows them."""
    from test_shipped import marked_rows

    m = measured()
    recorded = json.loads((ROOT / "docs" / "measurements" / "yolo_plain_eval.json").read_text())
    assert recorded["detections"] == 5352
    for name in ("cls", "maskness", "oracle"):
        assert recorded["segm"][name] == m["segm"][name], name
        assert recorded["bbox"][name] == m["bbox"][name], name
    rows = marked_rows("ultralytics-notes", "plain-yolo")
    assert set(rows) == {"cls", "maskness", "oracle"}
    for name, (ap, ap50, ap75, box) in rows.items():
        s = recorded["segm"][name]
        box_ap = recorded["bbox"][name]["AP"]
        assert (ap, ap50, ap75, box) == (round(s["AP"], 1), round(s["AP50"], 1),
                                         round(s["AP75"], 1), round(box_ap, 1))


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


# --- nothing touched beyond what the user asked for -----------------------------------------

SIDE_EFFECTS = """
import json, os, sys
from pathlib import Path
import numpy as np
import torch

def files():
    return sorted(str(p) for p in Path(os.environ["HOME"]).rglob("*"))

def state():
    import PIL.Image
    import ultralytics.utils as uu
    from ultralytics.utils import checks
    return {"environ": dict(os.environ), "files": files(), "online": [uu.ONLINE, checks.ONLINE],
            "autoinstall": [uu.AUTOINSTALL, checks.AUTOINSTALL], "settings": dict(uu.SETTINGS),
            "image_open": repr(PIL.Image.open), "torch_save": repr(torch.save)}

from ultralytics import YOLO  # the user's own import: what ultralytics does is its own
torch.manual_seed(0)
yolo = YOLO("yolov8n-seg.yaml")
before = state()
from maskiou import attach_maskiou_head
from maskiou_integrations.ultralytics_yolo import UltralyticsYOLOAdapter
# the adapter named: which plugins discovery imports is tests/test_plugins.py's concern
attach_maskiou_head(yolo, conv_channels=8, num_convs=2, fc_dim=16,
                    adapter=UltralyticsYOLOAdapter())
image = np.zeros((64, 64, 3), dtype=np.uint8)
yolo.predict(image, imgsz=64, verbose=False)
UltralyticsYOLOAdapter().predict(yolo, [torch.rand(3, 64, 64)])
after = state()
print("CHANGED", json.dumps(sorted(k for k in before if before[k] != after[k])))
env = {k: [before["environ"].get(k), after["environ"].get(k)]
       for k in before["environ"].keys() | after["environ"].keys()
       if before["environ"].get(k) != after["environ"].get(k)}
print("DIFF", json.dumps({"environ": env, **{k: [str(before[k]), str(after[k])] for k in before
                                              if k != "environ" and before[k] != after[k]}}))
"""


def test_attaching_and_predicting_change_nothing_outside_the_model(tmp_path):
    """In a fresh process whose HOME is an empty folder: after the user's own ``import
    ultralytics`` and ``YOLO(...)``, importing maskiou, attaching the head to the ``YOLO`` and
    predicting (``yolo.predict`` and the adapter's) change no environment variable, no file
    under HOME, none of ultralytics' settings or module constants, and leave ultralytics'
    own patches of ``PIL.Image.open`` and ``torch.save`` as ultralytics made them."""
    import os
    import subprocess
    import sys

    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("YOLO_", "PYTEST_"))}
    env.update(HOME=str(home), OMP_NUM_THREADS="1", YOLO_OFFLINE="1",  # the user's own choice
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-c", SIDE_EFFECTS], env=env, capture_output=True,
                         text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    changed = [line for line in run.stdout.splitlines() if line.startswith(("CHANGED", "DIFF"))]
    assert changed[0] == "CHANGED []", changed
    # ultralytics' own settings file, written by its import, is the only file under HOME
    assert [p.name for p in home.rglob("*") if p.is_file()] == ["settings.json"]


def test_maskiou_addon_takes_an_ultralytics_run_weights_alone(tmp_path, capsys):
    """``maskiou-addon --detector RUN/weights/best.pt``: the file pickles ultralytics' model,
    so its adapter converts it (``args.yaml`` read from the run folder: its image size), and
    the add-on trains on it; a model of other classes is refused in one line (exit 2)."""
    from ultralytics.nn.tasks import SegmentationModel

    from maskiou.addon.cli import main, own_weights_framework
    from maskiou.data.synthetic import generate_synthetic_coco
    from maskiou.models.load import load_trained_model

    data = generate_synthetic_coco(tmp_path / "data", 6, 0, seed=3, progress=False)
    from maskiou.data import CocoInstanceDataset

    names = CocoInstanceDataset(data.train_json, data.train_images).class_names
    torch.manual_seed(0)
    model = SegmentationModel("yolo11n-seg.yaml", nc=len(names) - 1, verbose=False).eval()
    with torch.no_grad():
        for branch in model.model[-1].cv3:  # class scores near 0.5: detections to train on
            branch[-1].bias.zero_()
    model.names = dict(enumerate(names[1:]))
    run = tmp_path / "runs" / "segment" / "train"
    (run / "weights").mkdir(parents=True)
    torch.save({"model": copy.deepcopy(model).half(), "ema": None, "epoch": -1,
                "train_args": {"imgsz": 128, "task": "segment"}}, run / "weights" / "best.pt")
    (run / "args.yaml").write_text("task: segment\nimgsz: 64\n")
    best = str(run / "weights" / "best.pt")
    assert own_weights_framework(best) == "ultralytics"
    out = tmp_path / "addon"
    quick = ["--no-progress", "--addon-epochs", "1", "--addon-flip", "false",
             "--addon-crossfit-folds", "0", "--addon-recalibration", "none",
             "--addon-conv-channels", "8", "--addon-fc-dim", "16"]
    code = main(["--detector", best, "--train-json", str(data.train_json), "--train-images",
                 str(data.train_images), "--output-dir", str(out), *quick])
    assert code == 0, capsys.readouterr().err
    loaded, meta = load_trained_model(out / "model_final.pt")
    assert meta["framework"] == "ultralytics" and loaded.maskiou_predict["imgsz"] == 64
    assert hasattr(loaded, "maskiou_head") and meta["addon"]["detector"].startswith(
        str(out / "detector-ultralytics-"))
    model.names = {0: "other", **{k: v for k, v in model.names.items() if k}}
    torch.save({"model": copy.deepcopy(model).half(), "train_args": {"imgsz": 64}},
               run / "weights" / "other.pt")
    code = main(["--detector", str(run / "weights" / "other.pt"), "--train-json",
                 str(data.train_json), "--train-images", str(data.train_images),
                 "--output-dir", str(tmp_path / "other"), *quick])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "are not the dataset's" in err[0], err


SCORE_GRAPH_INPUTS = ("p3", "protos", "boxes", "coefficients", "cls_scores", "labels",
                      "image_boxes", "image")


def score_inputs(image, predictions, protos, p3, imgsz: int = 64, nc: int = 3):
    """NMS as ultralytics' predictor does it on the detector graph's outputs of ``image``
    (HWC): the final-score graph's inputs, in NMS order."""
    from ultralytics.utils import nms, ops

    from maskiou_integrations.ultralytics_predict import soft_masks

    (det,) = nms.non_max_suppression(predictions, 0.001, 0.7, nc=nc, max_det=100)
    shape = image.shape[:2]
    image_boxes = ops.scale_boxes((imgsz, imgsz), det[:, :4].clone(), shape)
    binary, _ = soft_masks(protos[0], det[:, 6:], image_boxes, (imgsz, imgsz), shape)
    keep = binary.flatten(1).any(1)  # as the predictor: no detection without a mask
    det, image_boxes = det[keep], image_boxes[keep]
    return (p3, protos, det[:, :4], det[:, 6:], det[:, 4], det[:, 5].long() + 1,
            image_boxes, torch.zeros(shape))


def run_score_graph(session, inputs) -> list[torch.Tensor]:
    """The final-score graph (an onnxruntime session) on :func:`score_inputs`' tensors."""
    out = session.run(None, {n: t.numpy() for n, t in zip(SCORE_GRAPH_INPUTS, inputs)})
    return [torch.from_numpy(a) for a in out]


def test_the_final_score_exports_as_two_onnx_graphs_around_nms(tmp_path):
    """The detector with P3 beside its outputs, ultralytics' NMS in between, then the head and
    its fitted calibration, each graph run by onnxruntime against the eager model: the detector
    graph gives its outputs (boxes to 1e-3 px, P3 and prototypes to 1e-5); on the eager
    detector's detections the score graph gives, row for row, what the eager score module gives
    (1e-5), and those are the model's records: the same final scores, head outputs, maskness
    and class scores (sorted, 1e-5; the rows of a random model tie too often to be matched).
    (End to end, the detector graph's float differences can change NMS's choices on this random
    model, whose boxes nearly all cover the image: not compared.) On an image of the network's
    size and on a letterboxed one."""
    ort = pytest.importorskip("onnxruntime")
    from maskiou_integrations.ultralytics_export import (
        DetectorWithFeatures,
        FinalScore,
        export_onnx,
    )
    from maskiou_integrations.ultralytics_predict import preprocess

    model = attach_maskiou_head(model_64(), **HEAD)
    fit_calibration(model)
    det_path, score_path = export_onnx(model, tmp_path / "detector.onnx",
                                       tmp_path / "final_score.onnx", imgsz=64)
    detector = ort.InferenceSession(str(det_path))
    scorer = ort.InferenceSession(str(score_path))

    def run_graph(inputs):
        return run_score_graph(scorer, inputs)

    for image in (to_uint8(images()[0]), to_uint8(images()[1])[:40]):
        record = detect(model, [image])[0]
        x = preprocess(image, 64, 32)
        exported = [torch.from_numpy(a) for a in detector.run(None, {"images": x.numpy()})]
        with torch.no_grad():
            eager = DetectorWithFeatures(model)(x)
        for ours, theirs, atol in zip(exported, eager, (1e-3, 1e-5, 1e-5)):
            torch.testing.assert_close(ours, theirs, atol=atol, rtol=0)
        inputs = score_inputs(image, *eager)
        graph = run_graph(inputs)
        with torch.no_grad():
            module = FinalScore(model)(*inputs)
        for ours, theirs in zip(graph, module):
            torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
        # the switch off (its default), thresholds stored: every row, in the inputs' order
        assert torch.equal(graph[3], torch.arange(len(inputs[4])))
        assert len(graph[0]) == len(record["scores"]) > 3
        for ours, theirs in zip([*graph[:3], inputs[4]], (record["scores"], record["mask_quality"],
                                                      record["maskness"],
                                                      record["cls_scores"])):
            torch.testing.assert_close(ours.sort().values, theirs.sort().values, atol=1e-5,
                                       rtol=0)
        assert not torch.allclose(graph[0], inputs[4], atol=1e-3)  # the calibrated score
