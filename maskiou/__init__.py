"""maskiou: the MaskIoU head of Mask Scoring R-CNN as an add-on for RoI-based segmenters."""

from .attach import (
    Adapter,
    attach_maskiou_head,
    available_adapters,
    find_maskiou_head,
    freeze_model,
    register_adapter,
)
from .branch import MaskIoUConfig, maskiou_inference, maskiou_training_loss
from .head import MaskIoUHead
from .loss import mask_iou_loss
from .scoring import add_maskiou_outputs, rescore
from .targets import mask_iou_targets

__version__ = "0.1.0"

__all__ = [
    "Adapter",
    "MaskIoUConfig",
    "MaskIoUHead",
    "add_maskiou_outputs",
    "attach_maskiou_head",
    "available_adapters",
    "find_maskiou_head",
    "freeze_model",
    "mask_iou_loss",
    "mask_iou_targets",
    "maskiou_inference",
    "maskiou_training_loss",
    "register_adapter",
    "rescore",
]
