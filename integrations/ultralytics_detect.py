"""The adapter's one prediction function for ultralytics' YOLO-seg, :func:`detect`, and the head
code it shares with ultralytics' own predictor (:mod:`maskiou_integrations.ultralytics_results`):
the neck features at each final box (:func:`roi_features`), the soft mask in the box
(:func:`mask_probs_in_boxes`) and the head's scores (:func:`score_records`). How the branch
runs inside YOLO-seg: :mod:`maskiou_integrations.ultralytics_yolo`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.ops import roi_align
from ultralytics.engine.model import Model as UltralyticsModel
from ultralytics.nn.modules.head import Segment

from maskiou.branch import head_score_inputs, maskiou_outputs
from maskiou.keep import keep_as_switched
from maskiou.scoring import add_maskiou_outputs, maskness

from .ultralytics_predict import preprocess, soft_masks, split_output

ROI_SIZE = 14  # the RoI-aligned P3 features: [64, 14, 14] per detection
MASK_SIZE = 28  # the soft mask resampled into the box
FEATURE_LEVEL = 0  # P3, the Segment head's first input (what its Proto reads)
# how a model predicts when its checkpoint does not say (ultralytics' predictor's defaults but
# its validator's conf, as the shipped detector): ``model.maskiou_predict`` overrides them
PREDICT_DEFAULTS: dict[str, Any] = {"imgsz": 640, "conf": 0.001, "iou": 0.7, "max_det": 100}


def segmentation_model(model: nn.Module) -> nn.Module:
    """The ``SegmentationModel`` a user holds: ``model`` itself, or the ``.model`` of
    ultralytics' ``YOLO`` (any ultralytics ``Model``) around it."""
    return model.model if isinstance(model, UltralyticsModel) else model


def segment_head(model: nn.Module) -> Segment:
    """The model's ``Segment`` head (its last layer), or a TypeError of one line."""
    model = segmentation_model(model)
    layers = getattr(model, "model", None)
    head = layers[-1] if isinstance(layers, nn.Sequential) and len(layers) else None
    if not isinstance(head, Segment):
        raise TypeError(f"attach_maskiou_head: the last layer of this {type(model).__name__} is "
                        f"a {type(head).__name__}, not ultralytics' Segment head")
    return head


def predict_args(model: nn.Module) -> dict[str, Any]:
    """``imgsz``, ``conf``, ``iou``, ``max_det`` the model predicts with (its checkpoint's,
    ``model.maskiou_predict``, else :data:`PREDICT_DEFAULTS`)."""
    return {**PREDICT_DEFAULTS, **(getattr(model, "maskiou_predict", None) or {})}


def to_uint8(image: Tensor) -> np.ndarray:
    """A maskiou image (Tensor[3, H, W] RGB in [0, 1]) as ultralytics reads one: uint8
    [H, W, 3] RGB (exact for an image that was read from 8-bit pixels)."""
    return (image.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0) \
        .cpu().numpy()


@contextmanager
def segment_inputs(model: nn.Module) -> Iterator[list[list[Tensor]]]:
    """For the duration of the block, a forward pre-hook on the model's ``Segment`` head that
    appends the head's inputs (the neck features P3/P4/P5, each [B, C, h/s, w/s]) to the list
    it yields, once per forward."""
    seen: list[list[Tensor]] = []
    hook = segment_head(model).register_forward_pre_hook(
        lambda module, args: seen.append(list(args[0])))  # a copy: Detect may edit the list
    try:
        yield seen
    finally:
        hook.remove()


def _forward(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
    """The model's own forward on ``x`` [B, 3, h, w]: (predictions [B, 4 + nc + nm, A], protos
    [B, nm, h/4, w/4], the Segment head's inputs P3/P4/P5)."""
    with segment_inputs(model) as seen:
        predictions, protos = split_output(model(x))
    return predictions, protos, seen[-1]


def mask_probs_in_boxes(protos: Tensor, coefficients: Tensor, boxes: Tensor,
                        input_shape: tuple[int, int], size: int = MASK_SIZE) -> Tensor:
    """Each detection's mask probabilities resampled into its box: Tensor[n, size, size].

    Args:
        protos: [nm, mh, mw] of one image; coefficients: [n, nm].
        boxes: [n, 4] xyxy in the network input's pixels.
        input_shape: (h, w) of the network input (the prototype grid covers it).
    """
    nm, mh, mw = protos.shape
    if boxes.shape[0] == 0:
        return protos.new_zeros((0, size, size))
    # sizes from shapes, not len(): an ONNX trace keeps the number of detections dynamic
    logits = (coefficients.to(protos.dtype) @ protos.reshape(nm, -1)).reshape(-1, 1, mh, mw)
    index = torch.ones_like(boxes[:, :1]).cumsum(0) - 1  # RoI k reads map k: 0, 1, ..., n - 1
    rois = torch.cat([index, boxes], 1)
    # one map per detection: RoI k reads map k; the grid is at 1/4 of the input, pixel centres
    # as ultralytics' bilinear upsampling (align_corners=False) places them
    aligned = roi_align(logits.float(), rois.float(), size, spatial_scale=mh / input_shape[0],
                        sampling_ratio=2, aligned=True)
    return aligned[:, 0].sigmoid()


def roi_features(features: Tensor, boxes: Tensor, stride: float, size: int = ROI_SIZE) -> Tensor:
    """One level's features RoI-aligned at ``boxes`` ([n, 4] in input pixels):
    ``features`` [C, h/s, w/s] -> Tensor[n, C, size, size]."""
    rois = torch.cat([torch.zeros_like(boxes[:, :1]), boxes], 1)
    return roi_align(features[None].float(), rois.float(), size, spatial_scale=1.0 / stride,
                     sampling_ratio=2, aligned=True)


@torch.no_grad()
def detect(model: nn.Module, images: list[np.ndarray], head_inputs: bool = False
           ) -> list[dict[str, Tensor]]:
    """Detections of ``images`` (uint8 [H, W, 3] RGB each) as ultralytics' predictor makes
    them, with the MaskIoU branch when the model has a head (see the module docstring).

    Returns, per image, maskiou's record: ``boxes`` [n, 4] xyxy in the image's pixels,
    ``labels`` [n] (YOLO class + 1), ``scores`` [n], ``masks`` [n, 1, H, W] (soft: > 0.5 on
    ultralytics' mask), ``maskness`` [n] (of the 28 x 28 mask probabilities); with a head also
    ``cls_scores``, ``mask_quality`` and (with rescoring) ``scores`` the final score, re-sorted.
    With ``head_inputs`` the head does not run: each record has, in the detector's order, what
    it would see, ``roi_features`` [n, C, 14, 14] and ``mask_probs`` [n, 28, 28].
    """
    from ultralytics.utils import nms, ops

    model = segmentation_model(model)
    args = predict_args(model)
    head = segment_head(model)
    device = next(model.parameters()).device
    stride = int(max(model.stride.max().item(), 32))
    inputs = [preprocess(img, args["imgsz"], stride) for img in images]
    found: list[tuple[Tensor, Tensor, Tensor, tuple[int, int]]] = []
    for start in range(len(inputs)):  # one forward per run of images of the same input size
        if start and inputs[start].shape == inputs[start - 1].shape:
            continue
        end = start + 1
        while end < len(inputs) and inputs[end].shape == inputs[start].shape:
            end += 1
        x = torch.cat(inputs[start:end]).to(device)
        predictions, protos, feats = _forward(model, x)
        dets = nms.non_max_suppression(predictions, args["conf"], args["iou"], nc=head.nc,
                                       max_det=args["max_det"])
        found += [(det, protos[b], feats[FEATURE_LEVEL][b], tuple(x.shape[2:]))
                  for b, det in enumerate(dets)]
    level_stride = float(head.stride[FEATURE_LEVEL])
    with_head = hasattr(model, "maskiou_head")
    records, features, probs = [], [], []
    for image, (det, protos, level, input_shape) in zip(images, found):
        shape = image.shape[:2]
        boxes = ops.scale_boxes(input_shape, det[:, :4].clone(), shape)
        binary, soft = soft_masks(protos, det[:, 6:], boxes, input_shape, shape)
        keep = binary.flatten(1).any(1)  # as the predictor: no detection without a mask
        det, soft = det[keep], soft[keep]
        p = mask_probs_in_boxes(protos, det[:, 6:], det[:, :4], input_shape)
        records.append({"boxes": boxes[keep], "labels": det[:, 5].long() + 1,
                        "scores": det[:, 4], "masks": soft[:, None], "maskness": maskness(p)})
        probs.append(p)
        if with_head or head_inputs:  # the plain model's predictions need no RoI features
            features.append(roi_features(level, det[:, :4], level_stride))
    if head_inputs:
        for r, f, p in zip(records, features, probs):
            r["roi_features"], r["mask_probs"] = f, p
    elif with_head:
        score_records(model, records, torch.cat(features), torch.cat(probs),
                      [img.shape[:2] for img in images])
    return records


def score_records(model: nn.Module, records: list[dict[str, Tensor]], features: Tensor,
                  probs: Tensor, image_shapes: list[tuple[int, int]]) -> None:
    """Run the head on every detection of the batch at once and add its outputs to each
    record (in place): ``cls_scores``, ``mask_quality``, ``maskness``, the final ``scores``;
    with the head's switch on (``maskiou.set_keep(model, "worth")``) every per-detection field
    keeps only the masks worth keeping (a record's ``row``: which rows of its image remain)."""
    head = model.maskiou_head
    labels = torch.cat([r["labels"] for r in records])
    extra = head_score_inputs(head.score_inputs, [r["scores"] for r in records], probs)
    pred = head(features.to(next(head.parameters()).dtype), probs, extra)
    quality, mask_maskness = maskiou_outputs(pred, probs, labels, [len(r["labels"])
                                                                  for r in records])
    for r, q, m, shape in zip(records, quality, mask_maskness, image_shapes):
        final = head.calibration(r["scores"], q, m, r["boxes"], r["labels"], shape)
        add_maskiou_outputs(r, q, m, model.maskiou_rescore, final)
        if model.maskiou_rescore:  # maskiou.set_keep's switch: only the masks worth keeping
            r.update(keep_as_switched(r, head.calibration.class_thresholds,
                                      head.calibration.keep_worth_only))
