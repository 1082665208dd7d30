"""maskiou: the MaskIoU head of Mask Scoring R-CNN as an add-on for RoI-based segmenters.

This top level is the add-on itself and imports only torch (and torchvision.ops): the head, its
targets and loss, the scorings, the branch functions adapters call, and ``attach_maskiou_head``
with the adapter registry. Built on it, never imported by it: ``maskiou.data``,
``maskiou.training``, ``maskiou.evaluation`` and the adapters in ``maskiou_integrations``.
"""

from .attach import (
    ENTRY_POINT_GROUP,
    Adapter,
    attach_maskiou_head,
    available_adapters,
    find_maskiou_head,
    freeze_model,
    register_adapter,
)
from .branch import (
    MaskIoUConfig,
    maskiou_inference,
    maskiou_outputs,
    maskiou_training_inputs,
    maskiou_training_loss,
    predicted_mask_probs,
)
from .head import MaskIoUHead
from .loss import mask_iou_loss
from .scoring import add_maskiou_outputs, maskness, rescore
from .targets import mask_iou_targets

__version__ = "0.1.0"

__all__ = [
    "ENTRY_POINT_GROUP",
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
    "maskiou_outputs",
    "maskiou_training_inputs",
    "maskiou_training_loss",
    "maskness",
    "predicted_mask_probs",
    "register_adapter",
    "rescore",
]
