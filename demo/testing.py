"""A tiny Mask R-CNN with known scores, for the demo's tests and a screenshot without training.

Its weights are random except two layers that are forced: the box classifier gives every
proposal the same class probabilities (``CLASS_PROBS``), and the MaskIoU head predicts a fixed
IoU per class (``MASK_IOUS``). So every detection's classification score, predicted MaskIoU and
rescored score are known in advance, and the two scorings rank the classes in opposite orders.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from maskiou.models.checkpoint import save_atomic
from maskiou.models.config import TrainConfig, resolve

# label -> probability of the box classifier (the rest goes to the background)
CLASS_PROBS = {1: 0.6, 2: 0.3}
# label -> MaskIoU head output; classes not listed get DEFAULT_IOU
MASK_IOUS = {1: 0.2, 2: 0.9}
DEFAULT_IOU = 0.5
# few proposals -> at most 2 x 4 detections per image: a short table, a readable picture
TINY_OVERRIDES = {"max_iters": 2, "rpn_pre_nms_top_n_test": 50, "rpn_post_nms_top_n_test": 4}


def tiny_config() -> TrainConfig:
    return resolve("synthetic-cpu", TINY_OVERRIDES)


def tiny_model(num_classes: int, seed: int = 0) -> torch.nn.Module:
    """The ``synthetic-cpu`` architecture with the head, random weights, forced scores (see the
    module docstring); ``num_classes`` counts the background. Eval mode, on the CPU."""
    from maskiou.models.load import build_model

    torch.manual_seed(seed)
    model = build_model(tiny_config(), num_classes)
    background = 1.0 - sum(CLASS_PROBS.values())
    with torch.no_grad():
        cls = model.roi_heads.box_predictor.cls_score
        cls.weight.zero_()
        cls.bias.fill_(-30.0)
        cls.bias[0] = math.log(background)
        for label, p in CLASS_PROBS.items():
            cls.bias[label] = math.log(p)
        head = model.roi_heads.maskiou_head.predictor
        head.weight.zero_()
        head.bias.fill_(DEFAULT_IOU)
        for label, iou in MASK_IOUS.items():
            head.bias[label] = iou
    return model.eval()


def write_tiny_checkpoint(path: str | Path, class_names: list[str],
                          label_to_cat_id: dict[int, int] | None = None) -> Path:
    """Save :func:`tiny_model` as a trainer checkpoint that ``load_trained_model`` reads."""
    model = tiny_model(len(class_names))
    label_to_cat_id = label_to_cat_id or {i: i for i in range(1, len(class_names))}
    save_atomic({"model": model.state_dict(), "config": tiny_config().to_dict(),
                 "class_names": list(class_names), "label_to_cat_id": label_to_cat_id,
                 "iteration": 0, "format": "maskiou-train-1"}, path)
    return Path(path)


def write_tiny_plain_checkpoint(path: str | Path, class_names: list[str],
                                label_to_cat_id: dict[int, int] | None = None) -> Path:
    """The detector of :func:`tiny_model` without its head, as a plain checkpoint."""
    model = tiny_model(len(class_names))
    state = {k: v for k, v in model.state_dict().items() if ".maskiou_head." not in k}
    label_to_cat_id = label_to_cat_id or {i: i for i in range(1, len(class_names))}
    save_atomic({"model": state, "config": {**tiny_config().to_dict(), "maskiou": False},
                 "class_names": list(class_names), "label_to_cat_id": label_to_cat_id,
                 "iteration": 0, "format": "maskiou-train-1"}, path)
    return Path(path)
