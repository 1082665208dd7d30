"""The kept-mask switch on a YOLO-seg model (``maskiou.set_keep``): maskiou's records and
ultralytics' own ``Results`` keep only the masks worth keeping; ``maskiou.kept`` reads
``Results`` (YOLO class k is maskiou's label k + 1)."""

from __future__ import annotations

import pytest
import torch
from offline_ultralytics import require_offline_ultralytics

require_offline_ultralytics()  # a skip without ultralytics; no network attempt, ever

from test_contract import images  # noqa: E402
from test_keep import threshold_between  # noqa: E402
from test_ultralytics_yolo import (  # noqa: E402
    HEAD,
    bgr,
    fit_calibration,
    run_score_graph,
    score_inputs,
    yolov8_from_yaml,
)

from maskiou import attach_maskiou_head, kept, set_keep  # noqa: E402
from maskiou_integrations.ultralytics_yolo import detect, to_uint8  # noqa: E402

FIELDS = ("boxes", "labels", "scores", "cls_scores", "mask_quality", "maskness", "masks")


def thresholded_yolo():
    """``YOLO("yolov8n-seg.yaml")`` with the head, a fitted calibration and a threshold on the
    most frequent label of one image's detections (the others 0); the records with the switch
    off, that label and its threshold."""
    yolo = yolov8_from_yaml()
    attach_maskiou_head(yolo, **HEAD)
    fit_calibration(yolo.model)
    yolo.model.maskiou_predict = {"imgsz": 64, "max_det": 300}  # YOLO.predict's max_det
    cal = yolo.model.maskiou_head.calibration
    cal.set_class_thresholds([0.0] * len(cal.class_thresholds))
    (record,) = detect(yolo.model, [to_uint8(images()[0])])
    label = int(record["labels"].mode().values)
    assert int((record["labels"] == label).sum()) >= 3
    threshold = threshold_between(record["scores"][record["labels"] == label])
    thresholds = [0.0] * len(cal.class_thresholds)
    thresholds[label] = threshold
    cal.set_class_thresholds(thresholds)
    return yolo, record, label, threshold


def test_records_and_results_keep_only_the_worth_with_the_switch_on():
    yolo, record, label, threshold = thresholded_yolo()
    keep = (record["labels"] != label) | (record["scores"] >= threshold)
    assert 0 < int(keep.sum()) < len(keep)
    image = bgr(to_uint8(images()[0]))
    full = yolo.predict(image, conf=0.001, imgsz=64, verbose=False)[0]
    # maskiou.kept on ultralytics' Results: the rows worth keeping, maskiou's fields with them
    (worth,) = kept([full], yolo)
    assert len(full.boxes) == len(keep) and len(worth.boxes) == int(keep.sum())
    assert torch.equal(worth.boxes.conf, full.boxes.conf[keep])
    assert torch.equal(worth.masks.data, full.masks.data[keep])
    for name in ("cls_scores", "mask_quality", "maskness"):
        assert torch.equal(getattr(worth, name), getattr(full, name)[keep]), name
    torch.testing.assert_close(worth.boxes.conf.float(), record["scores"][keep].float(),
                               atol=1e-5, rtol=0)
    # the model's switch: detect's records and YOLO.predict's Results keep the same rows
    set_keep(yolo, "worth")
    (on,) = detect(yolo.model, [to_uint8(images()[0])])
    for k in FIELDS:  # the same rows (floats to the last bits a second forward may move)
        torch.testing.assert_close(on[k], record[k][keep], atol=1e-6, rtol=0, msg=k)
    yolo.predictor = None  # ultralytics predicts with a copy of the model made at set-up
    result = yolo.predict(image, conf=0.001, imgsz=64, verbose=False)[0]
    assert len(result.boxes) == int(keep.sum())
    torch.testing.assert_close(result.boxes.conf, worth.boxes.conf, atol=1e-6, rtol=0)
    torch.testing.assert_close(result.cls_scores, worth.cls_scores, atol=1e-6, rtol=0)
    torch.testing.assert_close(result.masks.data, worth.masks.data, atol=1e-6, rtol=0)


def test_the_switch_off_keeps_every_detection():
    """Thresholds stored, the switch off: the records of the model without thresholds."""
    yolo, record, _, _ = thresholded_yolo()
    (again,) = detect(yolo.model, [to_uint8(images()[0])])
    for k in FIELDS:
        assert torch.equal(again[k], record[k]), k


def test_the_final_score_graph_keeps_the_rows_the_switch_keeps(tmp_path):
    """``export_onnx`` after ``set_keep(model, "worth")``: the final-score graph returns only the
    rows whose final score is at least their label's threshold, ``rows`` indexing its inputs,
    with the scores of the records the eager model keeps; the same graph exported with the
    switch off returns every row."""
    ort = pytest.importorskip("onnxruntime")
    from maskiou_integrations.ultralytics_export import DetectorWithFeatures, export_onnx
    from maskiou_integrations.ultralytics_predict import preprocess

    yolo, record, label, threshold = thresholded_yolo()
    image = to_uint8(images()[0])
    with torch.no_grad():
        outputs = DetectorWithFeatures(yolo.model)(preprocess(image, 64, 32))
    inputs = score_inputs(image, *outputs, nc=len(yolo.model.names))
    graphs = {}
    for switch in ("all", "worth"):
        set_keep(yolo, switch)
        _, path = export_onnx(yolo.model, tmp_path / f"d_{switch}.onnx",
                              tmp_path / f"s_{switch}.onnx", imgsz=64)
        graphs[switch] = run_score_graph(ort.InferenceSession(str(path)), inputs)
    every, worth = graphs["all"], graphs["worth"]
    labels = inputs[5]
    expected = torch.where((labels != label) | (every[0] >= threshold))[0]
    assert 0 < len(expected) < len(labels) and torch.equal(every[3], torch.arange(len(labels)))
    assert torch.equal(worth[3], expected)
    for ours, theirs in zip(worth[:3], every[:3]):
        torch.testing.assert_close(ours, theirs[expected], atol=1e-6, rtol=0)
    (on,) = detect(yolo.model, [image])  # the eager model's kept records: the same scores
    torch.testing.assert_close(worth[0].sort().values, on["scores"].sort().values, atol=1e-5,
                               rtol=0)
