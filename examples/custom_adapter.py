"""Attach the MaskIoU head to a segmenter that is not torchvision's: a worked adapter.

``TinySegmenter`` is a minimal RoI-based instance segmenter (boxes in, class + mask out; in
training the proposals are jittered GT boxes). It exposes two overridable steps, ``losses`` and
``detections``, the way detectron2's heads do. ``TinySegmenterAdapter`` (about 40 lines) is all
it takes to give it a MaskIoU head:

    from maskiou import attach_maskiou_head
    model = attach_maskiou_head(TinySegmenter(num_classes=3), adapter=TinySegmenterAdapter())
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from maskiou import MaskIoUConfig, MaskIoUHead, add_maskiou_outputs
from maskiou.branch import maskiou_inference, maskiou_training_loss, select_masks
from maskiou.targets import project_masks


class TinySegmenter(nn.Module):
    """A stride-4 conv backbone, RoIAlign 14x14, a classifier and a 28x28 per-class mask head.

    ``forward(images, targets)`` in training returns a loss dict; ``forward(images, boxes=...)``
    at inference returns one dict per image with boxes, labels, scores and masks (Tensor[n, M, M]
    probabilities on the box grid).
    """

    def __init__(self, num_classes: int = 3, channels: int = 16, jitter: float = 2.0) -> None:
        super().__init__()
        self.num_classes, self.channels, self.jitter = num_classes, channels, jitter
        self.backbone = nn.Sequential(
            nn.Conv2d(3, channels, 3, 2, 1), nn.ReLU(), nn.Conv2d(channels, channels, 3, 2, 1),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(channels, num_classes)
        self.mask_head = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1), nn.ReLU(),
                                       nn.ConvTranspose2d(channels, channels, 2, 2), nn.ReLU())
        self.mask_predictor = nn.Conv2d(channels, num_classes, 1)

    def forward(self, images: Tensor, targets: list[dict[str, Tensor]] | None = None,
                boxes: list[Tensor] | None = None) -> Any:
        feats = self.backbone(images)
        if self.training:
            proposals = [t["boxes"] + self.jitter * torch.randn_like(t["boxes"]) for t in targets]
        else:
            proposals = boxes
        rois = roi_align(feats, proposals, (14, 14), spatial_scale=0.25, sampling_ratio=2,
                         aligned=True)
        class_logits = self.classifier(rois.mean((2, 3)))
        mask_logits = self.mask_predictor(self.mask_head(rois))
        if self.training:
            return self.losses(rois, class_logits, mask_logits, proposals, targets)
        return self.detections(rois, class_logits, mask_logits, proposals)

    def losses(self, rois: Tensor, class_logits: Tensor, mask_logits: Tensor,
               proposals: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        labels = torch.cat([t["labels"] for t in targets])
        gt = torch.cat([project_masks(t["masks"], p, torch.arange(len(p)), mask_logits.shape[-1])
                        for t, p in zip(targets, proposals)])
        loss_mask = F.binary_cross_entropy_with_logits(select_masks(mask_logits, labels), gt)
        return {"loss_classifier": F.cross_entropy(class_logits, labels), "loss_mask": loss_mask}

    def detections(self, rois: Tensor, class_logits: Tensor, mask_logits: Tensor,
                   proposals: list[Tensor]) -> list[dict[str, Tensor]]:
        scores, labels = class_logits.softmax(-1).max(-1)
        masks = select_masks(mask_logits, labels).sigmoid()
        sizes = [len(p) for p in proposals]
        return [{"boxes": b, "labels": lab, "scores": s, "masks": m} for b, lab, s, m in
                zip(proposals, labels.split(sizes), scores.split(sizes), masks.split(sizes))]


# --- the adapter ------------------------------------------------------------------------------


class _ScoredTinySegmenter(TinySegmenter):
    """TinySegmenter whose two steps also run the MaskIoU branch."""

    maskiou_head: MaskIoUHead
    maskiou_config: MaskIoUConfig

    def losses(self, rois, class_logits, mask_logits, proposals, targets):  # noqa: D102
        losses = super().losses(rois, class_logits, mask_logits, proposals, targets)
        losses["loss_maskiou"] = maskiou_training_loss(
            self.maskiou_head, rois, mask_logits, [t["labels"] for t in targets], proposals,
            [t["masks"] for t in targets], [torch.arange(len(p)) for p in proposals],
            self.maskiou_config.loss_weight, self.maskiou_config.detach_inputs,
        )
        return losses

    def detections(self, rois, class_logits, mask_logits, proposals):  # noqa: D102
        results = super().detections(rois, class_logits, mask_logits, proposals)
        ious, mask_maskness = maskiou_inference(self.maskiou_head, rois, mask_logits,
                                                [r["labels"] for r in results])
        for r, iou, mk in zip(results, ious, mask_maskness):
            add_maskiou_outputs(r, iou, mk, self.maskiou_config.rescore_outputs)
        return results


class TinySegmenterAdapter:
    """Tells ``attach_maskiou_head`` how to install the head in a ``TinySegmenter``."""

    name = "TinySegmenter (examples/custom_adapter.py)"

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, TinySegmenter)

    def head_defaults(self, model: nn.Module) -> dict[str, Any]:
        return {"in_channels": model.channels, "num_classes": model.num_classes, "roi_size": 14}

    def install(self, model: nn.Module, head: MaskIoUHead, config: MaskIoUConfig) -> None:
        model.__class__ = _ScoredTinySegmenter
        model.maskiou_head = head
        model.maskiou_config = config
