"""A worked adapter: the MaskIoU head, the add-on and checkpoints on a segmenter that is not
torchvision's or detectron2's.

``TinySegmenter`` is a minimal RoI-based instance segmenter: a fixed grid of proposal boxes, a
classifier and a 28 x 28 mask per RoI; in training the proposals are jittered GT boxes. It
exposes two overridable steps, ``losses`` and ``detections``, the way detectron2's heads do.
``TinySegmenterAdapter`` implements the adapter contract (:mod:`maskiou.contract`): attaching,
and the capabilities ``predict``, ``collect``, ``load`` and ``losses``, so that everything maskiou
does works on it: ``attach_maskiou_head``, the add-on (``maskiou.addon.run.train_addon``) with the
add-on's default head (the class score and maskness as inputs), checkpoints, evaluation and
``maskiou.check_adapter``::

    from maskiou import attach_maskiou_head, check_adapter, register_adapter
    register_adapter(TinySegmenterAdapter())              # or an entry point
    model = attach_maskiou_head(TinySegmenter(num_classes=3))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.ops import batched_nms, roi_align

from maskiou import add_maskiou_outputs
from maskiou.branch import (
    install_head,
    maskiou_inference,
    maskiou_training_loss,
    select_masks,
)
from maskiou.roi_heads import records_with_head_inputs
from maskiou.targets import project_masks


def grid_boxes(height: int, width: int, sizes: tuple[int, ...] = (16, 32),
               stride: int = 8) -> Tensor:
    """Square proposal boxes centred on a grid: Tensor[P, 4] (x1, y1, x2, y2), clipped."""
    ys, xs = torch.meshgrid(torch.arange(stride / 2, height, stride),
                            torch.arange(stride / 2, width, stride), indexing="ij")
    centres = torch.stack([xs.flatten(), ys.flatten()], 1)
    boxes = [torch.cat([centres - s / 2, centres + s / 2], 1) for s in sizes]
    out = torch.cat(boxes)
    out[:, 0::2] = out[:, 0::2].clamp(0, width)
    out[:, 1::2] = out[:, 1::2].clamp(0, height)
    return out


class TinySegmenter(nn.Module):
    """A stride-4 conv backbone, RoIAlign 14x14, a classifier and a 28x28 per-class mask head.

    ``forward(images, targets)`` in training returns a loss dict; at inference
    ``forward(images)`` returns one dict per image: boxes, labels, scores and masks
    (Tensor[n, 1, H, W] probabilities pasted in the image), at most ``max_detections``.
    ``images``: Tensor[B, 3, H, W] in [0, 1]; ``num_classes`` counts the background.
    """

    def __init__(self, num_classes: int = 3, channels: int = 16, jitter: float = 2.0,
                 max_detections: int = 20) -> None:
        super().__init__()
        self.num_classes, self.channels, self.jitter = num_classes, channels, jitter
        self.max_detections = max_detections
        self.backbone = nn.Sequential(
            nn.Conv2d(3, channels, 3, 2, 1), nn.ReLU(), nn.Conv2d(channels, channels, 3, 2, 1),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(channels, num_classes)
        self.mask_head = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1), nn.ReLU(),
                                       nn.ConvTranspose2d(channels, channels, 2, 2), nn.ReLU())
        self.mask_predictor = nn.Conv2d(channels, num_classes, 1)

    def forward(self, images: Tensor, targets: list[dict[str, Tensor]] | None = None) -> Any:
        feats = self.backbone(images)
        if self.training:
            proposals = [t["boxes"] + self.jitter * torch.randn_like(t["boxes"]) for t in targets]
        else:
            grid = grid_boxes(*images.shape[-2:]).to(images.device)
            proposals = [grid] * len(images)
        rois = roi_align(feats, proposals, (14, 14), spatial_scale=0.25, sampling_ratio=2,
                         aligned=True)
        class_logits = self.classifier(rois.mean((2, 3)))
        mask_logits = self.mask_predictor(self.mask_head(rois))
        if self.training:
            return self.losses(rois, class_logits, mask_logits, proposals, targets)
        keep = self.select(class_logits, proposals)
        return self.detections(rois, class_logits, mask_logits, proposals, keep,
                               tuple(images.shape[-2:]))

    def losses(self, rois: Tensor, class_logits: Tensor, mask_logits: Tensor,
               proposals: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        labels = torch.cat([t["labels"] for t in targets])
        gt = torch.cat([project_masks(t["masks"], p, torch.arange(len(p)), mask_logits.shape[-1])
                        for t, p in zip(targets, proposals)])
        loss_mask = F.binary_cross_entropy_with_logits(select_masks(mask_logits, labels), gt)
        return {"loss_classifier": F.cross_entropy(class_logits, labels), "loss_mask": loss_mask}

    def select(self, class_logits: Tensor, proposals: list[Tensor]) -> list[Tensor]:
        """Per image, the indices (into all images' RoIs) of its final detections: the best
        foreground class of each proposal, NMS at 0.5, highest first."""
        probs = class_logits.softmax(-1)[:, 1:]
        scores, labels = probs.max(-1)
        keep, start = [], 0
        for p in proposals:
            idx = torch.arange(start, start + len(p), device=p.device)
            k = batched_nms(p, scores[idx], labels[idx], 0.5)[:self.max_detections]
            keep.append(idx[k])
            start += len(p)
        return keep

    def detections(self, rois: Tensor, class_logits: Tensor, mask_logits: Tensor,
                   proposals: list[Tensor], keep: list[Tensor], image_size: tuple[int, int]
                   ) -> list[dict[str, Tensor]]:
        boxes_all = torch.cat(proposals)
        probs = class_logits.softmax(-1)
        out = []
        for k in keep:
            labels = probs[k, 1:].argmax(-1) + 1
            scores = probs[k, labels]
            masks = select_masks(mask_logits[k], labels).sigmoid()[:, None]
            out.append({"boxes": boxes_all[k], "labels": labels, "scores": scores,
                        "masks": paste_masks_in_image(masks, boxes_all[k], image_size)})
        return out


# --- the adapter ------------------------------------------------------------------------------


class _ScoredTinySegmenter(TinySegmenter):
    """TinySegmenter whose two steps also run the MaskIoU branch (core functions only)."""

    maskiou_head: nn.Module

    def losses(self, rois, class_logits, mask_logits, proposals, targets):  # noqa: D102
        losses = super().losses(rois, class_logits, mask_logits, proposals, targets)
        labels = [t["labels"] for t in targets]
        # the head's score input in training: the classifier's probability of the GT class
        cls = class_logits.detach().softmax(-1)[torch.arange(len(rois)), torch.cat(labels)]
        losses["loss_maskiou"] = maskiou_training_loss(
            self.maskiou_head, rois, mask_logits, labels, proposals,
            [t["masks"] for t in targets], [torch.arange(len(p)) for p in proposals],
            cls_scores=list(cls.split([len(p) for p in proposals])),
            loss_weight=self.maskiou_loss_weight, detach_inputs=self.maskiou_detach_inputs)
        return losses

    def detections(self, rois, class_logits, mask_logits, proposals, keep, image_size):  # noqa: D102
        results = super().detections(rois, class_logits, mask_logits, proposals, keep, image_size)
        kept = torch.cat(keep)
        quality, mask_maskness = maskiou_inference(
            self.maskiou_head, rois[kept], mask_logits[kept], [r["labels"] for r in results],
            cls_scores=[r["scores"] for r in results])
        for r, q, mk in zip(results, quality, mask_maskness):
            final = self.maskiou_head.calibration(r["scores"], q, mk, r["boxes"], r["labels"],
                                                  image_size)
            add_maskiou_outputs(r, q, mk, self.maskiou_rescore, final)
        return results


class TinySegmenterAdapter:
    """The adapter contract for ``TinySegmenter`` (see :mod:`maskiou.contract`)."""

    name = "TinySegmenter (examples/custom_adapter.py)"
    framework = "tiny-segmenter"
    capabilities = frozenset({"predict", "collect", "load", "losses"})

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, TinySegmenter)

    def head_defaults(self, model: nn.Module) -> dict[str, Any]:
        return {"in_channels": model.channels, "num_classes": model.num_classes, "roi_size": 14}

    def install(self, model: nn.Module, head: nn.Module, config: Any) -> None:
        model.__class__ = _ScoredTinySegmenter
        install_head(model, head, config)

    def predict(self, model: nn.Module, images: list[Tensor]) -> list[dict[str, Tensor]]:
        model.eval()
        with torch.no_grad():
            return model(torch.stack(images))

    def collect(self, model: nn.Module, images: list[Tensor]) -> list[dict[str, Tensor]]:
        model.eval()
        return records_with_head_inputs(model, lambda: model(torch.stack(images)))

    def load_detector(self, detector: Mapping[str, Any]) -> nn.Module:
        return TinySegmenter(int(detector["num_classes"]), int(detector["channels"])).eval()

    def losses(self, model: nn.Module, images: list[Tensor],
               targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        model.train()
        return model(torch.stack(images), targets)


def tiny_checkpoint(model: TinySegmenter, class_names: list[str],
                    label_to_cat_id: dict[int, int]) -> dict[str, Any]:
    """A maskiou checkpoint of a plain ``TinySegmenter`` (``torch.save`` it): what
    ``maskiou-addon --detector`` and ``load_trained_model`` read."""
    return {"schema": 2, "framework": TinySegmenterAdapter.framework,
            "detector": {"num_classes": model.num_classes, "channels": model.channels,
                         "source": {}},
            "maskiou_head": None, "class_names": list(class_names),
            "label_to_cat_id": dict(label_to_cat_id), "model": model.state_dict()}

