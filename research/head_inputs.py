"""What the MaskIoU head sees, rewired for the head-input rows of ``ablation.py``: the mask
head's last-layer features, or the RoI features with those of an enlarged box, or the box's
image pixels, beside them.

Each function changes an attached torchvision Mask R-CNN in place so that the head's recorded
``roi_features`` are the other features while the detector's boxes, scores and masks stay as
they were; the add-on's collection and training then run unchanged on them. Measurement levers
of the research scripts, not maskiou options (docs/benchmarks/levers.md, "The head's inputs").
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.ops import roi_align

from maskiou.head import MaskIoUHead

CONTEXT_SCALE = 2.0  # the context row's box enlargement


class _PoolThenMaskHead(nn.Module):
    """The mask branch's RoI pooling followed by its mask head."""

    def __init__(self, pool: nn.Module, mask_head: nn.Module) -> None:
        super().__init__()
        self.pool, self.mask_head = pool, mask_head

    def forward(self, features: Any, proposals: Any, image_shapes: Any) -> Any:
        return self.mask_head(self.pool(features, proposals, image_shapes))


def mask_head_features(model: nn.Module) -> nn.Module:
    """``model`` (a torchvision Mask R-CNN with the head attached) changed so that the MaskIoU
    head's feature input is the mask head's output, Tensor[N, C', S, S], instead of the pooled
    RoI features Tensor[N, C, S, S] (the same shape in maskiou's recipes): the RoI pooling runs
    the mask head and the mask head becomes the identity, so the masks are unchanged. A
    measurement lever of this script, not a maskiou option."""
    rh = model.roi_heads
    if isinstance(rh.mask_roi_pool, _PoolThenMaskHead):
        return model
    rh.mask_roi_pool = _PoolThenMaskHead(rh.mask_roi_pool, rh.mask_head)
    rh.mask_head = nn.Identity()
    return model


class _PoolWithContext(nn.Module):
    """The mask branch's RoI pooling of each box and of the box enlarged ``scale`` times around
    its centre, concatenated on the channels: Tensor[N, 2C, S, S]."""

    def __init__(self, pool: nn.Module, scale: float) -> None:
        super().__init__()
        self.pool, self.scale = pool, scale

    def forward(self, features: Any, proposals: Any, image_shapes: Any) -> Any:
        wide = []
        for b in proposals:
            centre, half = (b[:, :2] + b[:, 2:]) / 2, (b[:, 2:] - b[:, :2]) * self.scale / 2
            wide.append(torch.cat([centre - half, centre + half], 1))
        return torch.cat([self.pool(features, proposals, image_shapes),
                          self.pool(features, wide, image_shapes)], 1)


class _FirstChannels(nn.Module):
    """A module applied to the first ``channels`` channels of its input only."""

    def __init__(self, module: nn.Module, channels: int) -> None:
        super().__init__()
        self.module, self.channels = module, channels

    def forward(self, x: Any) -> Any:
        return self.module(x[:, :self.channels])


def _widen_head(roi_heads: nn.Module, extra: int) -> None:
    """After the mask branch's pooling gained ``extra`` channels behind its C own: the mask
    head keeps seeing the C channels, and the MaskIoU head is rebuilt (fresh) with C + extra
    input channels."""
    head = roi_heads.maskiou_head
    roi_heads.mask_head = _FirstChannels(roi_heads.mask_head, head.in_channels)
    roi_heads.maskiou_head = MaskIoUHead(
        head.in_channels + extra, head.num_classes, roi_size=head.roi_size,
        mask_size=head.mask_size, config=head.config).to(next(head.parameters()).device)


def context_features(model: nn.Module, scale: float = CONTEXT_SCALE) -> nn.Module:
    """``model`` (a torchvision Mask R-CNN with the head attached) changed so that the MaskIoU
    head's feature input is Tensor[N, 2C, S, S]: the pooled RoI features of each box and of the
    box enlarged ``scale`` times around its centre (RoIAlign reads zeros outside the image). The
    mask head still sees the box's own C channels, so the masks are unchanged; the MaskIoU head
    is rebuilt with 2C input channels. A measurement lever of this script, not a maskiou
    option."""
    rh = model.roi_heads
    if isinstance(rh.mask_roi_pool, _PoolWithContext):
        return model
    rh.mask_roi_pool = _PoolWithContext(rh.mask_roi_pool, scale)
    _widen_head(rh, rh.maskiou_head.in_channels)
    return model


class _ImageTap(nn.Module):
    """The detector's backbone, keeping the batch of (transformed) images it was last given,
    Tensor[B, 3, H, W], for :class:`_PoolWithPixels`."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone, self.out_channels = backbone, backbone.out_channels
        self.images: torch.Tensor | None = None

    def forward(self, images: torch.Tensor) -> Any:
        self.images = images
        return self.backbone(images)


class _PoolWithPixels(nn.Module):
    """The mask branch's RoI pooling of each box followed by the box's image pixels at the same
    size (RoIAlign of the normalized image the backbone saw): Tensor[N, C + 3, S, S]."""

    def __init__(self, pool: nn.Module, tap: _ImageTap) -> None:
        super().__init__()
        self.pool, self.tap = pool, tap

    def forward(self, features: Any, proposals: Any, image_shapes: Any) -> Any:
        roi = self.pool(features, proposals, image_shapes)
        pixels = roi_align(self.tap.images, list(proposals), output_size=roi.shape[-2:],
                           spatial_scale=1.0, sampling_ratio=2, aligned=True)
        return torch.cat([roi, pixels.to(roi.dtype)], 1)


def image_pixels(model: nn.Module) -> nn.Module:
    """``model`` (a torchvision Mask R-CNN with the head attached) changed so that the MaskIoU
    head's feature input is Tensor[N, C + 3, S, S]: the pooled RoI features of each box followed
    by its image pixels at S x S (the detector's normalized input, RoIAligned): the object's
    edges at the image's own resolution, which the RoI features see only through the backbone's
    strides. The mask head still sees the C feature channels, so the masks are unchanged; the
    MaskIoU head is rebuilt with C + 3 input channels. A measurement lever of this script, not
    a maskiou option."""
    rh = model.roi_heads
    if isinstance(rh.mask_roi_pool, _PoolWithPixels):
        return model
    model.backbone = _ImageTap(model.backbone)
    rh.mask_roi_pool = _PoolWithPixels(rh.mask_roi_pool, model.backbone)
    _widen_head(rh, 3)
    return model


# rows whose head sees other features than the mask branch's RoI features: their detector
# change (collected into their own cache, the validation split collected again)
FEATURE_ROWS = {"mask-head-features": mask_head_features, "context-features": context_features,
                "image-pixels": image_pixels}
