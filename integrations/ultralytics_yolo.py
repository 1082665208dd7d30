"""Adapter for ultralytics' YOLO-seg (``SegmentationModel`` with a ``Segment`` head: YOLOv8-seg,
YOLO11-seg), installed as ``maskiou_integrations.ultralytics_yolo`` and found through the
``maskiou.adapters`` entry point. ultralytics is AGPL-3.0: this module is imported only where it
is installed (``pip install maskiou[ultralytics]``); see the README's "YOLO-seg".

YOLO-seg has no RoI heads: its ``forward`` ends before NMS with per-anchor boxes, class
probabilities and 32 mask coefficients, and the masks are made after NMS from those
coefficients and a prototype map. So the MaskIoU branch runs where ultralytics' predictor
turns the raw output into detections (:func:`detect`, the one place both paths below call):

1. the model's own forward, with a forward pre-hook on its ``Segment`` head for the duration of
   the call: the hook keeps the head's input, the neck features P3/P4/P5 (strides 8/16/32);
2. ultralytics' ``non_max_suppression`` as its predictor calls it (conf, IoU, ``max_det`` of the
   checkpoint; class-aware, one label per box), masks as its ``process_mask`` makes them, kept
   soft, and detections with an empty mask dropped (the predictor's steps, see
   :mod:`maskiou_integrations.ultralytics_predict`);
3. per final detection, the head's inputs: P3, the input of the mask branch (``Segment.proto``
   reads P3 alone), RoI-aligned at the box to ``[64, 14, 14]`` (``in_channels`` is P3's width),
   and the mask probabilities ``sigmoid(coefficients @ protos)`` RoI-aligned from the prototype
   grid into the box at ``28 x 28`` (the mask as the model predicts it, before ultralytics
   resamples it into the image);
4. the head, ``maskiou_outputs`` and the head's calibration (the final score), re-sorted with
   :func:`maskiou.scoring.add_maskiou_outputs`.

Nothing of the detector changes: the head is a submodule ``model.maskiou_head`` of the
``SegmentationModel`` that the model's own forward never calls, so ``model(x)``, ultralytics'
validator and exports are what they were, and the detections' boxes, labels, class scores and
masks are bit for bit those of the plain model when the head's score is ignored.

:func:`detect` is the one prediction function of maskiou's records (the adapter's ``predict``
and ``collect``, the benchmarks, the add-on, ``research/yolo_plain_eval.py``). ultralytics'
own ``YOLO.predict`` on a ``YOLO`` the head was attached to runs ultralytics' predictor, whose
``Results`` rows get the same head code (:func:`mask_probs_in_boxes`, :func:`roi_features`,
:func:`score_records`) in :mod:`maskiou_integrations.ultralytics_results`.

A ``YOLO`` object is accepted wherever its ``SegmentationModel`` is (:func:`segmentation_model`):
``attach_maskiou_head(YOLO("yolo11n-seg.yaml"))`` attaches the head to ``yolo.model``.

Labels: YOLO class ``k`` is maskiou label ``k + 1`` (0 is the background), so the head has
``nc + 1`` outputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from ultralytics.engine.model import Model as UltralyticsModel
from ultralytics.nn.tasks import SegmentationModel

from maskiou.branch import install_head

from .ultralytics_detect import (  # noqa: F401 (detect and its parts, importable from here too)
    MASK_SIZE,
    PREDICT_DEFAULTS,
    ROI_SIZE,
    detect,
    mask_probs_in_boxes,
    roi_features,
    score_records,
    segment_head,
    segmentation_model,
    to_uint8,
)
from .ultralytics_models import FRAMEWORK


class UltralyticsYOLOAdapter:
    """Attaches the head to an ultralytics ``SegmentationModel`` (``Segment`` head): predict,
    collect, load, convert and train of the adapter contract (:mod:`maskiou.contract`). No
    ``losses``: ultralytics' trainer owns the detector's loss, and the head trains alone on
    the frozen detector's detections (the add-on, ``maskiou-addon``)."""

    name = "ultralytics YOLO-seg (maskiou_integrations.ultralytics_yolo)"
    framework = FRAMEWORK  # what its checkpoints record
    capabilities = frozenset({"predict", "collect", "load", "convert", "train"})

    def matches(self, model: nn.Module) -> bool:
        """A ``SegmentationModel``, or ultralytics' ``YOLO`` holding one."""
        return isinstance(segmentation_model(model), SegmentationModel)

    def head_defaults(self, model: nn.Module) -> dict[str, Any]:
        head = segment_head(model)
        if getattr(head, "end2end", False):
            raise TypeError(f"attach_maskiou_head: this {type(head).__name__} head is end to end "
                            "(NMS-free, YOLO26): the adapter reads the NMS path of v8 and 11")
        channels = head.proto.cv1.conv.in_channels  # P3's, what the mask branch reads
        return {"in_channels": int(channels), "num_classes": int(head.nc) + 1,
                "roi_size": ROI_SIZE, "mask_size": MASK_SIZE}

    def install(self, model: nn.Module, head: nn.Module, config: Any) -> None:
        """``model.maskiou_head`` and the config's values (``maskiou_rescore``, ...): read by
        :func:`detect`; the model's forward does not change. On ultralytics' ``YOLO`` they go
        into its ``SegmentationModel`` (``yolo.model``), and ``yolo.predict`` then returns the
        final score (:func:`~maskiou_integrations.ultralytics_results.use_final_score`)."""
        install_head(segmentation_model(model), head, config)
        if isinstance(model, UltralyticsModel):
            from .ultralytics_results import use_final_score

            use_final_score(model)

    def predict(self, model: nn.Module, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """:func:`detect` on maskiou's images (eval mode, no grad)."""
        model = segmentation_model(model).eval()
        return detect(model, [to_uint8(img) for img in images])

    def collect(self, model: nn.Module, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """:meth:`predict` in the detector's order (``scores`` = class confidence) with the
        head's inputs of each detection: ``roi_features`` Tensor[n, 64, 14, 14] (P3) and
        ``mask_probs`` Tensor[n, 28, 28]."""
        model = segmentation_model(model).eval()
        return detect(model, [to_uint8(img) for img in images], head_inputs=True)

    def load_detector(self, detector: Mapping[str, Any]) -> nn.Module:
        """The ``SegmentationModel`` a checkpoint's ``"detector"`` entry describes (its
        architecture dict and how it predicts), random weights, CPU, eval mode, no download."""
        from .ultralytics_models import load_detector

        return load_detector(dict(detector))

    def checkpoint_from_files(self, config_file: str | None, weights: str,
                              class_names: list[str],
                              label_to_cat_id: dict[int, int]) -> dict[str, Any]:
        """A maskiou checkpoint of an ultralytics training run's files: ``args.yaml`` (its
        trainer's arguments: a segmentation run, and the image size it predicts at) and a
        weights file (``weights/best.pt``, read with only module classes allowed, see
        :func:`~maskiou_integrations.ultralytics_models.read_ultralytics_weights`).
        ``config_file`` None (``maskiou-addon --detector best.pt``): the ``args.yaml`` its
        trainer leaves in the run folder (``RUN/weights/best.pt`` -> ``RUN/args.yaml``) where
        there is one, else the trainer's arguments the weights file itself carries."""
        import yaml

        from .ultralytics_models import checkpoint_from_ultralytics

        if config_file is None:
            beside = Path(weights).resolve().parent.parent / "args.yaml"
            config_file = str(beside) if beside.is_file() else None
        args = yaml.safe_load(Path(config_file).read_text()) or {} if config_file else {}
        if not isinstance(args, dict) or args.get("task", "segment") != "segment":
            raise ValueError(f"{config_file}: not the args.yaml of an ultralytics segmentation "
                             "run (task: segment)")
        source = {"weights": str(weights), **({"args": str(config_file)} if config_file else {})}
        ckpt = checkpoint_from_ultralytics(weights, class_names, label_to_cat_id, source)
        if "imgsz" in args:
            ckpt["detector"]["imgsz"] = int(args["imgsz"])
        return ckpt

    def train_embedded(self, output_dir: str, device: str = "cpu") -> str:
        """Train the shipped detector's recipe with ultralytics' trainer (hours on a CPU) and
        write its maskiou checkpoint ``output_dir/model_final.pt``; returns its path."""
        from .ultralytics_models import ship, train_embedded

        run = train_embedded(output_dir, device=device)
        return str(ship(run, Path(output_dir) / "model_final.pt"))
