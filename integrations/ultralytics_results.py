"""maskiou's scores on ultralytics' own ``Results``: ``YOLO.predict`` on a ``YOLO`` the head was
attached to returns the final score.

    from ultralytics import YOLO
    from maskiou import attach_maskiou_head

    yolo = attach_maskiou_head(YOLO("yolo11n-seg.yaml"))   # or YOLO("best.pt")
    r = yolo.predict("image.png", conf=0.001)[0]
    r.boxes.conf, r.cls_scores, r.mask_quality, r.maskness   # final, class, head, maskness

How: attaching to a ``YOLO`` calls :func:`use_final_score`, which adds one callback to that
``YOLO`` (``on_predict_start``, ultralytics' own extension point; nothing of ultralytics'
modules changes). When a predict starts with ultralytics' plain ``SegmentationPredictor`` on a
model with a head, the callback makes that predictor a :class:`MaskIoUSegmentationPredictor`:
its ``SegmentationPredictor`` with two steps extended, nothing of its own code replaced:

- ``inference``: the model's forward as ultralytics runs it, with a forward pre-hook on the
  ``Segment`` head for the duration of the call (the neck features P3/P4/P5 it reads);
- ``construct_results``: ultralytics' ``Results`` of each image (its NMS, its masks, its
  boxes), then the MaskIoU branch of :mod:`maskiou_integrations.ultralytics_yolo` on their
  rows: each ``Results`` gets ``cls_scores`` (ultralytics' confidence), ``mask_quality`` (the
  head's output) and ``maskness`` (Tensor[n] each), its ``boxes.conf`` becomes the final score
  (the head's calibration) and its rows are re-sorted by it, as the head's ``rescore_outputs``
  says (as ultralytics itself adds ``feats`` to ``Results`` for its trackers).

A ``YOLO`` loaded from a file (``YOLO("saved.pt")`` after ``yolo.save``: the head is pickled
inside ``yolo.model``) has ultralytics' default callbacks: call :func:`use_final_score` on it
again. ultralytics' predictor predicts with a copy of ``yolo.model`` made when it is set up:
after changing the head's weights in place, set ``yolo.predictor = None`` (as for any weight).

Its predictor fuses Conv + BatchNorm before predicting (``AutoBackend(fuse=True)``), so its
features, and the head's output, differ from :meth:`UltralyticsYOLOAdapter.predict`'s (unfused)
in the last digits (about 1e-6; the test bounds them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from ultralytics.models.yolo.segment import SegmentationPredictor
from ultralytics.nn.tasks import SegmentationModel

from .ultralytics_detect import (
    FEATURE_LEVEL,
    mask_probs_in_boxes,
    roi_features,
    score_records,
    segment_head,
    segment_inputs,
)


def _segmentation_model_in(backend: Any) -> SegmentationModel | None:
    """The ``SegmentationModel`` inside ultralytics' ``AutoBackend`` (or the model itself), or
    None (an exported model)."""
    for m in (backend, getattr(backend, "model", None),
              getattr(getattr(backend, "backend", None), "model", None)):
        if isinstance(m, SegmentationModel):
            return m
    return None


def underlying_model(backend: nn.Module) -> nn.Module:
    """The ``SegmentationModel`` inside ultralytics' ``AutoBackend`` (or the model itself)."""
    model = _segmentation_model_in(backend)
    if model is None:
        raise TypeError(f"{type(backend).__name__} holds no ultralytics SegmentationModel: the "
                        "MaskIoU predictor needs the PyTorch model (not an exported one)")
    return model


def final_score_predictor(predictor: Any) -> None:
    """The ``on_predict_start`` callback of :func:`use_final_score`: ultralytics' plain
    ``SegmentationPredictor`` on a PyTorch model with a head becomes a
    :class:`MaskIoUSegmentationPredictor` (the same object, its class extended); any other
    predictor (a caller's own class, an exported model, no head) is left as it is."""
    model = _segmentation_model_in(getattr(predictor, "model", None))
    if type(predictor) is SegmentationPredictor and hasattr(model, "maskiou_head"):
        predictor.__class__ = MaskIoUSegmentationPredictor


def use_final_score(yolo: Any) -> Any:
    """Make ``yolo.predict`` (ultralytics' ``YOLO``) return maskiou's final score in
    ``boxes.conf``, with ``cls_scores``, ``mask_quality`` and ``maskness`` on each ``Results``,
    whenever ``yolo.model`` has a MaskIoU head: adds :func:`final_score_predictor` to its
    ``on_predict_start`` callbacks (once) and drops its current predictor (which holds a copy of
    the model made before). ``attach_maskiou_head(yolo)`` calls it; call it on a ``YOLO``
    loaded from a file that ``yolo.save`` wrote. Returns ``yolo``."""
    if final_score_predictor not in yolo.callbacks.get("on_predict_start", []):
        yolo.add_callback("on_predict_start", final_score_predictor)
    yolo.predictor = None
    return yolo


class MaskIoUSegmentationPredictor(SegmentationPredictor):
    """ultralytics' ``SegmentationPredictor`` whose ``Results`` carry maskiou's scores (see the
    module docstring). A model without a head gets its ``Results`` unchanged. Also usable
    directly: ``yolo.predict(source, predictor=MaskIoUSegmentationPredictor)``."""

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
    predicting as ``model.maskiou_predict`` says (image size, conf, IoU, ``max_det``), with the
    final score (:func:`use_final_score`); ``class_names`` (background first) become its
    ``names``."""
    from ultralytics import YOLO

    from .ultralytics_detect import predict_args

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
    return use_final_score(yolo)


def yolo_of(checkpoint: str | Path, device: str = "cpu") -> Any:
    """A maskiou checkpoint of an ultralytics model (plain, or with its add-on head) as
    ultralytics' ``YOLO`` (:func:`as_yolo`), for its ``predict`` (with the final score), ``val``
    and ``export``. (The shipped add-on, in the repository's ``weights/``, holds the head
    alone: reading it joins the shipped detector's weights back,
    :func:`maskiou.models.checkpoint.join_detector`.)"""
    from maskiou.models.load import load_trained_model

    model, meta = load_trained_model(checkpoint, device)
    return as_yolo(model, meta["class_names"])
