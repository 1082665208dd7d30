"""maskiou's scores on ultralytics' own ``Results``: a ``SegmentationPredictor`` for
``YOLO.predict(..., predictor=MaskIoUSegmentationPredictor)``.

ultralytics lets a caller give ``Model.predict`` its own predictor class; this one is its
``SegmentationPredictor`` with two steps extended, and nothing of its own code replaced:

- ``inference``: the model's forward as ultralytics runs it, with a forward pre-hook on the
  ``Segment`` head for the duration of the call (the neck features P3/P4/P5 it reads);
- ``construct_results``: ultralytics' ``Results`` of each image (its NMS, its masks, its
  boxes), then the MaskIoU branch of :mod:`maskiou_integrations.ultralytics_yolo` on their
  rows: each ``Results`` gets ``cls_scores`` (ultralytics' confidence), ``mask_quality`` (the
  head's output) and ``maskness`` (Tensor[n] each), its ``boxes.conf`` becomes the final score
  (the head's calibration) and its rows are re-sorted by it, as the head's ``rescore_outputs``
  says (as ultralytics itself adds ``feats`` to ``Results`` for its trackers).

    from ultralytics import YOLO
    from maskiou_integrations.ultralytics_results import MaskIoUSegmentationPredictor, yolo_of

    yolo = yolo_of("model_final.pt")             # a maskiou add-on checkpoint, as a YOLO
    r = yolo.predict("image.png", predictor=MaskIoUSegmentationPredictor, conf=0.001)[0]
    r.boxes.conf, r.cls_scores, r.mask_quality   # final score, class score, the head's output

Its predictor fuses Conv + BatchNorm before predicting (``AutoBackend(fuse=True)``), so its
features, and the head's output, differ from :meth:`UltralyticsYOLOAdapter.predict`'s (unfused)
in the last digits (about 1e-5; the test bounds them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .ultralytics_offline import offline_environment

offline_environment()

from ultralytics.models.yolo.segment import SegmentationPredictor  # noqa: E402
from ultralytics.nn.tasks import SegmentationModel  # noqa: E402

from .ultralytics_yolo import (  # noqa: E402
    FEATURE_LEVEL,
    mask_probs_in_boxes,
    roi_features,
    score_records,
    segment_head,
    segment_inputs,
)


def underlying_model(backend: nn.Module) -> nn.Module:
    """The ``SegmentationModel`` inside ultralytics' ``AutoBackend`` (or the model itself)."""
    for m in (backend, getattr(backend, "model", None),
              getattr(getattr(backend, "backend", None), "model", None)):
        if isinstance(m, SegmentationModel):
            return m
    raise TypeError(f"{type(backend).__name__} holds no ultralytics SegmentationModel: the "
                    "MaskIoU predictor needs the PyTorch model (not an exported one)")


class MaskIoUSegmentationPredictor(SegmentationPredictor):
    """ultralytics' ``SegmentationPredictor`` whose ``Results`` carry maskiou's scores (see the
    module docstring). A model without a head gets its ``Results`` unchanged."""

    _maskiou_feats: list[Tensor] | None = None

    def inference(self, im: Tensor, *args: Any, **kwargs: Any) -> Any:
        with segment_inputs(underlying_model(self.model)) as seen:
            out = super().inference(im, *args, **kwargs)
        self._maskiou_feats = seen[-1] if seen else None
        return out

    def construct_results(self, preds: list[Tensor], img: Tensor, orig_imgs: list[Any],
                          protos: Tensor) -> list[Any]:
        model = underlying_model(self.model)
        if not hasattr(model, "maskiou_head") or self._maskiou_feats is None:
            return super().construct_results(preds, img, orig_imgs, protos)
        kept = [_kept_rows(p, proto, img.shape[2:]) for p, proto in zip(preds, protos)]
        results = super().construct_results([p.clone() for p in kept], img, orig_imgs, protos)
        head = segment_head(model)
        level = self._maskiou_feats[FEATURE_LEVEL]
        records, features, probs = [], [], []
        for b, (det, r) in enumerate(zip(kept, results)):
            if len(r.boxes) != len(det):
                raise RuntimeError("ultralytics dropped detections the MaskIoU predictor kept")
            probs.append(mask_probs_in_boxes(protos[b], det[:, 6:], det[:, :4], img.shape[2:]))
            features.append(roi_features(level[b], det[:, :4], float(head.stride[FEATURE_LEVEL])))
            rec = {"boxes": r.boxes.xyxy, "labels": r.boxes.cls.long() + 1,
                   "scores": r.boxes.conf, "row": torch.arange(len(det), device=det.device)}
            records.append(rec)
        score_records(model, records, torch.cat(features), torch.cat(probs),
                      [r.orig_shape for r in results])
        out = []
        for r, rec in zip(results, records):
            r = r[rec["row"]]  # the final order (the detector's without rescoring)
            r.boxes.data[:, 4] = rec["scores"].to(r.boxes.data.dtype)
            r.cls_scores, r.mask_quality = rec["cls_scores"], rec["mask_quality"]
            r.maskness = rec["maskness"]
            out.append(r)
        return out


def _kept_rows(pred: Tensor, proto: Tensor, input_shape: Any) -> Tensor:
    """The NMS rows whose mask is not empty, as the predictor's ``construct_result`` keeps them
    (its masks at the network input's size); passing only these rows makes it keep them all,
    in order, so each ``Results`` row is known."""
    from ultralytics.utils import ops

    if len(pred) == 0:
        return pred
    masks = ops.process_mask(proto, pred[:, 6:], pred[:, :4], input_shape, upsample=True)
    return pred[masks.amax((-2, -1)) > 0]


def as_yolo(model: nn.Module, class_names: list[str] | None = None) -> Any:
    """``model`` (a ``SegmentationModel``, with or without its head) as ultralytics' ``YOLO``,
    predicting as ``model.maskiou_predict`` says (image size, conf, IoU, ``max_det``);
    ``class_names`` (background first) become its ``names``."""
    from ultralytics import YOLO

    from .ultralytics_yolo import predict_args

    args = predict_args(model)
    if class_names is not None:
        model.names = dict(enumerate(class_names[1:]))
    model.args = {"task": "segment", "imgsz": args["imgsz"]}
    # a YOLO of the same architecture (built from the packaged YAML, no download), its model
    # then replaced by this one
    yolo = YOLO(model.yaml.get("yaml_file") or "yolo11n-seg.yaml", task="segment",
                verbose=False)
    yolo.model = model
    yolo.overrides.update(task="segment", **args)
    return yolo


def yolo_of(checkpoint: str | Path, device: str = "cpu") -> Any:
    """A maskiou checkpoint of an ultralytics model (plain, or with its add-on head) as
    ultralytics' ``YOLO`` (:func:`as_yolo`), for its ``predict`` (with
    :class:`MaskIoUSegmentationPredictor`), ``val`` and ``export``. (The add-on shipped in the
    package holds the head alone: ``maskiou.evaluation.benchmark.shipped_checkpoint`` joins it
    to the shipped detector's weights.)"""
    from maskiou.models.load import load_trained_model

    model, meta = load_trained_model(checkpoint, device)
    return as_yolo(model, meta["class_names"])
