"""Adapter for ``torchvision.models.detection.MaskRCNN`` (any backbone).

torchvision's ``RoIHeads`` has no hook between the mask RoI pooling and the mask convs, so the
adapter swaps the class of ``model.roi_heads`` for a subclass whose ``forward`` is torchvision's
with the MaskIoU branch added. No parameter moves: a checkpoint of the plain detector loads into
the attached model with ``strict=False`` (only ``roi_heads.maskiou_head.*`` is new).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.roi_heads import (
    RoIHeads,
    fastrcnn_loss,
    maskrcnn_inference,
    maskrcnn_loss,
)

from maskiou.branch import MaskIoUConfig, maskiou_inference, maskiou_training_loss
from maskiou.head import MaskIoUHead
from maskiou.scoring import add_maskiou_outputs


class MaskScoringRoIHeads(RoIHeads):
    """torchvision's RoIHeads plus a MaskIoU head (``maskiou_head``, ``maskiou_config``)."""

    maskiou_head: MaskIoUHead
    maskiou_config: MaskIoUConfig

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Same contract as ``RoIHeads.forward``; adds ``loss_maskiou`` in training and
        ``cls_scores``/``mask_ious`` (and rescored ``scores``) to each result at inference."""
        if targets is not None:
            for t in targets:
                if not t["boxes"].is_floating_point():
                    raise TypeError(f"target boxes must be float, got {t['boxes'].dtype}")
                if t["labels"].dtype != torch.int64:
                    raise TypeError(f"target labels must be int64, got {t['labels'].dtype}")
        matched_idxs = labels = None
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(
                proposals, targets
            )
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)

        result: list[dict[str, Tensor]] = []
        losses: dict[str, Tensor] = {}
        if self.training:
            loss_classifier, loss_box_reg = fastrcnn_loss(
                class_logits, box_regression, labels, regression_targets
            )
            losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
            mask_proposals, pos_matched, pos_labels = [], [], []
            for props, lab, idx in zip(proposals, labels, matched_idxs):
                pos = torch.where(lab > 0)[0]
                mask_proposals.append(props[pos])
                pos_matched.append(idx[pos])
                pos_labels.append(lab[pos])
        else:
            boxes, scores, det_labels = self.postprocess_detections(
                class_logits, box_regression, proposals, image_shapes
            )
            result = [{"boxes": b, "labels": lab, "scores": s}
                      for b, s, lab in zip(boxes, scores, det_labels)]
            mask_proposals = boxes

        roi_features = self.mask_roi_pool(features, mask_proposals, image_shapes)
        mask_logits = self.mask_predictor(self.mask_head(roi_features))

        if self.training:
            gt_masks = [t["masks"] for t in targets]
            gt_labels = [t["labels"] for t in targets]
            losses["loss_mask"] = maskrcnn_loss(
                mask_logits, mask_proposals, gt_masks, gt_labels, pos_matched
            )
            losses["loss_maskiou"] = maskiou_training_loss(
                self.maskiou_head, roi_features, mask_logits, pos_labels, mask_proposals,
                gt_masks, pos_matched, self.maskiou_config,
            )
        else:
            det_labels = [r["labels"] for r in result]
            ious = maskiou_inference(self.maskiou_head, roi_features, mask_logits, det_labels)
            for r, probs, iou in zip(result, maskrcnn_inference(mask_logits, det_labels), ious):
                r["masks"] = probs
                add_maskiou_outputs(r, iou, self.maskiou_config.rescore_outputs)
        return result, losses


class TorchvisionMaskRCNNAdapter:
    """Attaches the head to ``model.roi_heads`` of a torchvision ``MaskRCNN``."""

    name = "torchvision MaskRCNN (integrations.torchvision_maskrcnn)"

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, MaskRCNN)

    def head_defaults(self, model: nn.Module) -> dict[str, Any]:
        rh = model.roi_heads
        if type(rh) is not RoIHeads:
            raise TypeError(f"attach_maskiou_head: model.roi_heads is a {type(rh).__name__}, a "
                            "subclass of torchvision's RoIHeads whose overrides the adapter would "
                            "drop; write an adapter for it (see examples/custom_adapter.py)")
        if not rh.has_mask():
            raise TypeError("attach_maskiou_head: this MaskRCNN has no mask branch")
        if rh.has_keypoint():
            raise TypeError("attach_maskiou_head: keypoint branches are not supported")
        num_classes = rh.box_predictor.cls_score.out_features
        in_channels = _out_channels(rh.mask_roi_pool, model)
        size = getattr(rh.mask_roi_pool, "output_size", (14, 14))
        roi_size = size[0] if isinstance(size, (tuple, list)) else int(size)
        return {"in_channels": in_channels, "num_classes": num_classes, "roi_size": roi_size}

    def install(self, model: nn.Module, head: MaskIoUHead, config: MaskIoUConfig) -> None:
        rh = model.roi_heads
        rh.__class__ = MaskScoringRoIHeads
        rh.maskiou_head = head
        rh.maskiou_config = config


def _out_channels(mask_roi_pool: nn.Module, model: nn.Module) -> int:
    """Channels of the mask RoI features: the backbone's ``out_channels`` (256 for FPN)."""
    channels = getattr(model.backbone, "out_channels", None)
    if channels is None:
        raise TypeError("attach_maskiou_head: model.backbone has no out_channels")
    return int(channels)
