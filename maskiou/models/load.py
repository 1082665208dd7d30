"""Build the detector a :class:`TrainConfig` describes, with or without the MaskIoU head, and
rebuild the model of any checkpoint the trainer (or the add-on trainer) writes.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maskiou.attach import attach_maskiou_head

from .builders import build_maskrcnn
from .checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model_state,
    migrate,
    read_checkpoint,
    save_atomic,
)
from .config import TrainConfig


def build_model(cfg: TrainConfig, num_classes: int,
                label_to_cat_id: dict[int, int] | None = None) -> nn.Module:
    """The torchvision Mask R-CNN of ``cfg`` (``num_classes`` with background), head attached
    when ``cfg.maskiou``; with ``cfg.detector_checkpoint`` the detector's weights come from it.
    ``label_to_cat_id`` lets COCO-pretrained predictors keep the rows of the dataset's classes.
    """
    if cfg.freeze_detector and not (cfg.detector_checkpoint or cfg.weights):
        raise ValueError("--freeze-detector trains only the head on a trained detector: give "
                         "--detector-checkpoint PATH or --weights NAME")

    model = build_maskrcnn(
        cfg.model, num_classes, weights=cfg.weights, weights_backbone=cfg.weights_backbone,
        norm=cfg.norm, trainable_layers=cfg.trainable_layers, fpn_channels=cfg.fpn_channels,
        mask_head_channels=cfg.mask_head_channels, mask_head_convs=cfg.mask_head_convs,
        box_head_dim=cfg.box_head_dim, head_norm=cfg.head_norm, min_size=cfg.min_size,
        max_size=cfg.max_size, rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=cfg.rpn_batch_size_per_image,
        box_batch_size_per_image=cfg.box_batch_size_per_image,
        box_detections_per_img=cfg.box_detections_per_img, anchor_sizes=cfg.anchor_sizes,
        returned_layers=cfg.returned_layers, label_to_cat_id=label_to_cat_id,
        keep_predictors=cfg.freeze_detector and not cfg.detector_checkpoint,
    )
    if cfg.detector_checkpoint:
        ckpt = load_checkpoint(cfg.detector_checkpoint)
        state = {k: v for k, v in ckpt["model"].items() if ".maskiou_head." not in k}
        load_model_state(model, state, cfg.detector_checkpoint, strict=True)
    if cfg.maskiou:
        attach_maskiou_head(model, freeze_detector=cfg.freeze_detector,
                            loss_weight=cfg.maskiou_loss_weight, **cfg.maskiou_head.kwargs())
    elif cfg.freeze_detector:
        raise ValueError("--freeze-detector trains only the MaskIoU head: drop --no-maskiou")
    return model


def build_detector(config: dict[str, Any], num_classes: int) -> nn.Module:
    """The plain Mask R-CNN of maskiou's own recipe: a ``TrainConfig`` dict (the ``"config"`` of
    a checkpoint's ``"detector"`` entry) without its head, random weights (none downloaded)."""
    try:
        cfg = TrainConfig.from_dict({**config, "maskiou": False, "freeze_detector": False,
                                     "detector_checkpoint": None, "weights": None,
                                     "weights_backbone": None})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"its detector config does not match this maskiou version "
                              f"({e})") from e
    return build_model(cfg, num_classes)


def load_trained_model(path: str | Path, device: str | torch.device = "cpu"
                       ) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of any maskiou checkpoint and load its weights, whatever its framework:
    the framework's adapter (capability ``load``) rebuilds the plain detector from the
    checkpoint's ``"detector"`` entry, and the head of ``"maskiou_head"`` is attached. Every
    weight is in the file (an add-on embeds its frozen detector's), so nothing else is read.

    Returns:
        (model in eval mode on ``device``, checkpoint metadata: class_names, detector, ...).
    """
    from maskiou.attach import UnknownFrameworkError, framework_adapter
    from maskiou.contract import AdapterContractError
    from maskiou.head import HeadConfig

    ckpt = read_checkpoint(path)
    try:
        adapter = framework_adapter(ckpt["framework"], "load", f"loading {path}")
    except (UnknownFrameworkError, AdapterContractError) as e:
        raise CheckpointError(f"{path}: {e}") from e
    try:
        model = adapter.load_detector(ckpt["detector"])
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from e
    if ckpt.get("maskiou_head") is not None:
        try:
            head = HeadConfig(**ckpt["maskiou_head"])
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: its head config does not match this maskiou "
                                  f"version ({e})") from e
        attach_maskiou_head(model, **head.kwargs())
    load_model_state(model, ckpt["model"], path, strict=True)
    model.to(device).eval()
    return model, checkpoint_meta(ckpt)


def checkpoint_meta(ckpt: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint without its weights and training state."""
    return {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "scheduler",
                                                       "scaler", "rng")}


def has_head(meta: dict[str, Any]) -> bool:
    """Whether a checkpoint (its metadata, any schema) holds a model with the MaskIoU head."""
    return migrate(meta).get("maskiou_head") is not None


def model_kind(meta: dict[str, Any]) -> str:
    """``"plain"`` (no head), ``"add-on"`` (a head trained alone on the frozen detector) or
    ``"end to end"``, from a checkpoint's metadata, any framework."""
    if not has_head(meta):
        return "plain"
    return "add-on" if meta.get("addon") else "end to end"


def convert_detector(framework: str, config_file: str | Path | None, weights: str | Path,
                     dataset: Any, out_dir: str | Path) -> Path:
    """A maskiou checkpoint of a detector named its framework's way (a config file and a
    weights file, or the weights file alone: ``config_file`` None, see
    :class:`maskiou.contract.Converts`), for the classes of ``dataset`` (a
    ``CocoInstanceDataset``): written once to ``out_dir/detector-<hash>.pt`` by the framework's
    adapter (``checkpoint_from_files``), and reused while the files are the same."""
    import hashlib

    from maskiou.attach import framework_adapter

    files = [("weights", weights)] if config_file is None else [("config", config_file),
                                                                 ("weights", weights)]
    for what, f in files:
        if not Path(f).is_file():
            raise FileNotFoundError(f"{framework} {what} file {f} not found")
    digest = hashlib.sha1(b"".join(Path(f).read_bytes() for _, f in files))
    path = Path(out_dir) / f"detector-{framework}-{digest.hexdigest()[:12]}.pt"
    if path.is_file():
        return path
    adapter = framework_adapter(framework, "convert", "reading a config and a weights file")
    ckpt = adapter.checkpoint_from_files(None if config_file is None else str(config_file),
                                         str(weights), dataset.class_names,
                                         dataset.label_to_cat_id)
    save_atomic(ckpt, path)
    return path


@functools.cache
def trainer_framework() -> str:
    """The framework of the models maskiou's own trainer (``maskiou-train``, ``build_model``)
    builds, as its adapter names it (the checkpoints it writes record the same)."""
    from maskiou.attach import find_adapter

    return find_adapter(build_maskrcnn("maskrcnn_resnet18_fpn", 2, returned_layers=[1])
                        ).framework
