"""The configurations of the core, without torch: what a MaskIoU head is made of
(:class:`HeadConfig`) and how an attached head behaves (:class:`MaskIoUConfig`). Both refuse a
bad value when they are made (:mod:`maskiou.options`); command-line tools validate them before
they import torch.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Literal

from .options import ConfigError, bounded, check_fields

Fusion = Literal["concat", "multiply", "mask", "roi"]
FUSIONS: tuple[str, ...] = typing.get_args(Fusion)


MaskInput = Literal["probs", "logits"]
Output = Literal["linear", "sigmoid"]
Target = Literal["iou", "coco"]
Keep = Literal["all", "worth"]
KEEP_CHOICES: tuple[str, ...] = typing.get_args(Keep)  # every mask, or only those worth keeping
TARGET_NAMES = {"iou": "predicted MaskIoU", "coco": "predicted COCO-threshold share"}
"""How tables and the demo call a head's output, by its ``target``."""


@dataclass
class HeadConfig:
    """The architecture options of a :class:`MaskIoUHead`: the one place an option is
    declared. The head takes them as keyword arguments (or ``config=``), the end-to-end trainer
    records them (``TrainConfig.maskiou_head``, flags ``--maskiou-<option>``) and so does the
    add-on (``AddonConfig.head``, flags ``--addon-<option>``). The rest of the head's arguments
    (``in_channels``, ``num_classes``, ``roi_size``, ``mask_size``) come from the detector,
    through its adapter. Defaults: the paper's head.

    Attributes:
        conv_channels: channels of the convolutions.
        reduce_channels: 0 (the paper) or the channels of a 1x1 convolution put before the 3x3
            ones: a light head whose cost hardly depends on ``in_channels`` (for CPUs).
        num_convs: number of 3x3 convolutions; the last one has stride 2.
        fc_dim: width of the two hidden fully connected layers.
        fusion: how the mask enters the head, the cases of the paper's table 4:
            ``"concat"`` (a, default) concatenates the pooled mask to the RoI feature;
            ``"multiply"`` (b) multiplies the RoI feature by it; ``"mask"`` (e) uses the mask only;
            ``"roi"`` (f) uses the RoI feature only.
        mask_features: 0 (the paper) or the channels of a learned 3x3 stride-2 convolution of
            the full-resolution M x M mask probabilities, concatenated to the head's input
            beside the max-pooled mask (max pooling keeps where the mask is, not how sure the
            mask branch is about its edges).
        mask_input: how the mask's values enter the head: ``"probs"`` (the paper: the
            probabilities) or ``"logits"`` (their logits, clamped to +-``MASK_LOGIT_CLAMP``:
            how sure the mask branch is, undamped near 0 and 1).
        boundary_band: one more input channel, the predicted mask's boundary band (the 3x3
            dilation minus the 3x3 erosion of the mask at 0.5, at full resolution, then
            max-pooled like the mask): where the mask's edge is, which the pooled mask blurs.
        score_inputs: number of per-RoI scores the head also sees (0 in the paper; 2 for the
            classification score and the maskness, :func:`maskiou.head_score_inputs`),
            appended to the second FC layer's input.
        output: ``"linear"`` (the paper: raw regression, clamped to [0, 1] when used) or
            ``"sigmoid"`` (for a BCE loss on the IoU).
        target: what the head's output estimates, and so what a model's ``mask_quality``
            holds: ``"iou"`` (the mask's IoU with its object, the paper's head) or ``"coco"``
            (the share of COCO's ten IoU thresholds 0.50:0.05:0.95 the mask passes, the
            add-on's default: what mask AP rewards). The head is the same network either way;
            the add-on sets it from ``AddonConfig.target``.
    """

    conv_channels: int = bounded(256, 1)
    reduce_channels: int = bounded(0, 0)
    num_convs: int = bounded(4, 1)
    fc_dim: int = bounded(1024, 1)
    fusion: Fusion = "concat"
    mask_features: int = bounded(0, 0)
    mask_input: MaskInput = "probs"
    boundary_band: bool = False
    score_inputs: int = bounded(0, 0)
    output: Output = "linear"
    target: Target = "iou"

    def __post_init__(self) -> None:
        check_fields(self)

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :class:`MaskIoUHead` (and of ``attach_maskiou_head``)."""
        return dataclasses.asdict(self)

    @staticmethod
    def pop_from(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        """Remove the ``<prefix><field>`` entries of a flat config dict (as configs written
        before :class:`HeadConfig` stored them) and return them as ``{field: value}``; a
        boolean ``score_inputs`` (the old add-on switch) becomes 2 or 0."""
        out = {f.name: values.pop(prefix + f.name) for f in dataclasses.fields(HeadConfig)
               if prefix + f.name in values}
        if isinstance(out.get("score_inputs"), bool):
            out["score_inputs"] = 2 if out["score_inputs"] else 0
        return out


@dataclass
class MaskIoUConfig:
    """Behaviour of an attached head (not its architecture: that is the head's own arguments).

    Attributes:
        rescore_outputs: replace each detection's ``scores`` by cls score x predicted IoU.
        loss_weight: weight of ``loss_maskiou``.
        detach_inputs: stop the MaskIoU loss from flowing into the RoI features and the mask
            branch (the paper trains end to end, so the default is False).
        freeze_detector: only the head trains (set by ``attach_maskiou_head``).
        keep: ``"all"`` detections in the model's outputs, or only the masks ``"worth"``
            keeping (final score at least the class's stored threshold, :func:`maskiou.kept`);
            needs ``rescore_outputs``. Stored in the head (``maskiou.set_keep`` changes it).
    """

    rescore_outputs: bool = True
    loss_weight: float = bounded(1.0, 0.0)
    detach_inputs: bool = False
    freeze_detector: bool = False
    keep: Keep = "all"

    def __post_init__(self) -> None:
        check_fields(self)
        if self.keep == "worth" and not self.rescore_outputs:
            raise ConfigError("MaskIoUConfig.keep: 'worth' needs rescore_outputs=True (the "
                              "thresholds are of the final score)")


