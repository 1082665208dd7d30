"""The final score of a YOLO-seg add-on model in a deployed graph: two ONNX graphs around NMS.

ultralytics' exports end before NMS (or with its NMS appended) and carry neither the neck
features the head reads nor the head, so the final score is not in them
(docs/frameworks/ultralytics.md, "Export and deployment"). This module exports what it takes:

1. :class:`DetectorWithFeatures`: the detector's own forward, with P3 (the ``Segment`` head's
   first input, what its ``Proto`` reads) as a third output beside ``(predictions, protos)``;
2. NMS as ultralytics' predictor does it, in the application (its ``non_max_suppression``, or
   any NMS that keeps the same rows), and the boxes scaled to the image (``scale_boxes``);
3. :class:`FinalScore`: the head and its calibration from P3, the prototypes and the kept
   detections to the final score, the head's output and maskness: the same steps as
   :func:`maskiou_integrations.ultralytics_yolo.score_records` for one image (RoI-align of P3
   at each box to 14 x 14, ``sigmoid(coefficients @ protos)`` RoI-aligned into each box at
   28 x 28, the head, its calibration).

    export_onnx(model, "detector.onnx", "final_score.onnx", imgsz=128)

Both graphs are tested against the eager model (``tests/test_ultralytics_yolo.py``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from maskiou.branch import head_score_inputs
from maskiou.keep import switched_rows
from maskiou.loss import select_class
from maskiou.scoring import maskness

from .ultralytics_detect import (
    FEATURE_LEVEL,
    mask_probs_in_boxes,
    roi_features,
    segment_head,
    segment_inputs,
    segmentation_model,
)
from .ultralytics_predict import split_output

ONNX_OPSET = 17


class DetectorWithFeatures(nn.Module):
    """``forward(x [B, 3, h, w])`` -> ``(predictions [B, 4 + nc + 32, A], protos
    [B, 32, h/4, w/4], p3 [B, C, h/8, w/8])``: the model's own forward and its P3."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = segmentation_model(model)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        with segment_inputs(self.model) as seen:
            predictions, protos = split_output(self.model(x))
        return predictions, protos, seen[-1][FEATURE_LEVEL]


class FinalScore(nn.Module):
    """The head and its calibration on one image's kept detections.

    ``forward(p3 [1, C, h/8, w/8], protos [1, 32, h/4, w/4], boxes [n, 4] (xyxy, network input
    pixels), coefficients [n, 32], cls_scores [n], labels [n] int64 (YOLO class + 1),
    image_boxes [n, 4] (xyxy, the image's pixels), image [H, W] (any tensor of the image's
    size: its shape is read, so the graph keeps it dynamic))`` -> ``(scores [k], mask_quality
    [k], maskness [k], rows [k] int64)`` in the detections' order: the final score
    (``cls_scores x quality`` while the calibration is not fitted; the class score when the
    model does not rescore) of the rows the model's kept-mask switch keeps (``rows`` indexes
    the inputs: every row, k = n, unless :func:`maskiou.set_keep` turned the switch to
    ``"worth"``; then the rows whose final score is at least their class's stored threshold,
    as ``YOLO.predict`` keeps them).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        model = segmentation_model(model)
        self.head = model.maskiou_head
        self.rescore = bool(model.maskiou_rescore)
        self.stride = float(segment_head(model).stride[FEATURE_LEVEL])

    def forward(self, p3: Tensor, protos: Tensor, boxes: Tensor, coefficients: Tensor,
                cls_scores: Tensor, labels: Tensor, image_boxes: Tensor, image: Tensor
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        input_shape = (protos.shape[2] * 4, protos.shape[3] * 4)
        probs = mask_probs_in_boxes(protos[0], coefficients, boxes, input_shape)
        features = roi_features(p3[0], boxes, self.stride)
        extra = head_score_inputs(self.head.score_inputs, [cls_scores], probs)
        pred = self.head(features.to(p3.dtype), probs, extra)
        quality = select_class(pred, labels).float().clamp(0.0, 1.0)
        mask_maskness = maskness(probs)
        image_size = (image.shape[-2], image.shape[-1])
        final = self.head.calibration(cls_scores, quality, mask_maskness, image_boxes, labels,
                                      image_size)
        scores = final if self.rescore else cls_scores
        calibration = self.head.calibration
        rows = switched_rows(scores, labels, calibration.class_thresholds,
                             calibration.keep_worth_only)
        return scores[rows], quality[rows], mask_maskness[rows], rows


def export_onnx(model: nn.Module, detector_path: str | Path, score_path: str | Path,
                imgsz: int, detections: int = 5) -> tuple[Path, Path]:
    """Write the two graphs (see the module) of ``model`` (with its head; eval mode) as ONNX,
    opset 17: the detector at ``imgsz`` x ``imgsz`` (batch dynamic), the final score with the
    number of detections and the image size dynamic. Returns both paths."""
    model = segmentation_model(model).eval()
    if not hasattr(model, "maskiou_head"):
        raise ValueError("export_onnx: this model has no MaskIoU head (attach_maskiou_head)")
    detector = DetectorWithFeatures(model).eval()
    x = torch.zeros(1, 3, imgsz, imgsz)
    with torch.no_grad():
        _, protos, p3 = detector(x)
    torch.onnx.export(detector, (x,), str(detector_path), dynamo=False, opset_version=ONNX_OPSET,
                      input_names=["images"], output_names=["predictions", "protos", "p3"],
                      dynamic_axes={"images": {0: "batch"}, "predictions": {0: "batch"},
                                    "protos": {0: "batch"}, "p3": {0: "batch"}})
    n = detections
    boxes = torch.tensor([[4.0, 4.0, imgsz / 2, imgsz / 2]]).repeat(n, 1) + torch.arange(n)[:, None]
    example = (p3, protos, boxes, torch.zeros(n, protos.shape[1]), torch.full((n,), 0.5),
               torch.ones(n, dtype=torch.int64), boxes.clone(), torch.zeros(imgsz, imgsz))
    dynamic = {"boxes": {0: "n"}, "coefficients": {0: "n"}, "cls_scores": {0: "n"},
               "labels": {0: "n"}, "image_boxes": {0: "n"}, "image": {0: "height", 1: "width"},
               "scores": {0: "k"}, "mask_quality": {0: "k"}, "maskness": {0: "k"},
               "rows": {0: "k"}}
    torch.onnx.export(FinalScore(model).eval(), example, str(score_path), dynamo=False,
                      opset_version=ONNX_OPSET,
                      input_names=["p3", "protos", "boxes", "coefficients", "cls_scores",
                                   "labels", "image_boxes", "image"],
                      output_names=["scores", "mask_quality", "maskness", "rows"],
                      dynamic_axes=dynamic)
    return Path(detector_path), Path(score_path)
