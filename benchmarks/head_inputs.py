"""What the MaskIoU head sees, rewired for the head-input rows of ``ablation.py``: the mask
head's last-layer features, or the RoI features with those of an enlarged box beside them.

Each function changes an attached torchvision Mask R-CNN in place so that the head's recorded
``roi_features`` are the other features while the detector's boxes, scores and masks stay as
they were; the add-on's collection and training then run unchanged on them. Measurement levers
of the benchmarks, not maskiou options (docs/benchmarks/levers.md, "The head's inputs").
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

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
    head = rh.maskiou_head
    rh.mask_roi_pool = _PoolWithContext(rh.mask_roi_pool, scale)
    rh.mask_head = _FirstChannels(rh.mask_head, head.in_channels)
    rh.maskiou_head = MaskIoUHead(2 * head.in_channels, head.num_classes,
                                  roi_size=head.roi_size, mask_size=head.mask_size,
                                  config=head.config).to(next(head.parameters()).device)
    return model


# rows whose head sees other features than the mask branch's RoI features: their detector
# change (collected into their own cache, the validation split collected again)
FEATURE_ROWS = {"mask-head-features": mask_head_features, "context-features": context_features}
