"""maskiou: the MaskIoU head of Mask Scoring R-CNN as an add-on for instance segmenters.

This top level is the add-on itself and imports only torch (and torchvision.ops): the head, its
targets and loss, the scorings, the branch functions adapters call, the adapter contract,
``attach_maskiou_head`` with the adapter registry, and ``check_adapter``. Built on it, never
imported by it: ``maskiou.data``, ``maskiou.training``, ``maskiou.evaluation`` and the adapters
in ``maskiou_integrations``.

Names are imported lazily (``import maskiou`` does not import torch), so that the command-line
tools check their arguments and configurations before anything heavy is loaded.
"""

from __future__ import annotations

from ._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "ENTRY_POINT_GROUP": "attach",
    "attach_maskiou_head": "attach",
    "available_adapters": "attach",
    "find_adapter": "attach",
    "find_maskiou_head": "attach",
    "framework_adapter": "attach",
    "freeze_model": "attach",
    "register_adapter": "attach",
    "head_score_inputs": "branch",
    "maskiou_inference": "branch",
    "maskiou_outputs": "branch",
    "maskiou_training_inputs": "branch",
    "maskiou_training_loss": "branch",
    "predicted_mask_probs": "branch",
    "score_features": "branch",
    "check_adapter": "check",
    "HeadConfig": "configs",
    "MaskIoUConfig": "configs",
    "Adapter": "contract",
    "AdapterContractError": "contract",
    "CAPABILITIES": "contract",
    "MaskIoUHead": "head",
    "keep_setting": "keep",
    "keep_worth": "keep",
    "kept": "keep",
    "set_keep": "keep",
    "mask_iou_loss": "loss",
    "ConfigError": "options",
    "RoIHeadsAdapter": "roi_heads",
    "add_maskiou_outputs": "scoring",
    "maskness": "scoring",
    "rescore": "scoring",
    "score_order": "scoring",
    "mask_iou_targets": "targets",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
