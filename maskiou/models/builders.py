"""torchvision Mask R-CNN builders by name, with the knobs the training configs need.

Nothing is downloaded unless ``weights`` or ``weights_backbone`` names torchvision weights.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import (
    BackboneWithFPN,
    _mobilenet_extractor,
    _resnet_fpn_extractor,
)
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.misc import FrozenBatchNorm2d

from .config import ModelName, Norm

MODEL_NAMES: tuple[str, ...] = typing.get_args(ModelName)
NORMS: tuple[str, ...] = typing.get_args(Norm)


def norm_layer(norm: str) -> Callable[[int], nn.Module]:
    """``"frozen_bn"`` (torchvision's default, for pretrained backbones), ``"bn"`` or ``"gn"``."""
    if norm == "frozen_bn":
        return FrozenBatchNorm2d
    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "gn":
        return lambda c: nn.GroupNorm(min(32, c // 4) or 1, c)
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def build_maskrcnn(
    name: str,
    num_classes: int,
    *,
    weights: str | None = None,
    weights_backbone: str | None = None,
    norm: str = "frozen_bn",
    trainable_layers: int | None = None,
    fpn_channels: int = 256,
    mask_head_channels: int = 256,
    mask_head_convs: int = 4,
    box_head_dim: int = 1024,
    head_norm: str | None = None,
    anchor_sizes: list[int] | None = None,
    returned_layers: list[int] | None = None,
    label_to_cat_id: dict[int, int] | None = None,
    keep_predictors: bool = False,
    **detector_kwargs: Any,
) -> MaskRCNN:
    """Build a torchvision ``MaskRCNN`` by name.

    Args:
        name: one of :data:`MODEL_NAMES`.
        num_classes: including background.
        weights: torchvision detector weights (e.g. ``"DEFAULT"``; resnet50 models only). With
            ``num_classes != 91`` the box and mask predictors are replaced (fine-tuning).
        weights_backbone: torchvision classification weights for the backbone.
        norm: backbone normalization, see :func:`norm_layer`; from scratch use ``"bn"`` or
            ``"gn"`` (frozen batch norm does not normalize a random network).
        trainable_layers: backbone stages that train (default: all from scratch, 3 pretrained).
        fpn_channels, mask_head_channels, mask_head_convs, box_head_dim: head widths
            (torchvision's are 256, 256, 4, 1024).
        head_norm: normalization inside the mask head and FPN (None, ``"bn"`` or ``"gn"``).
        anchor_sizes: one RPN anchor size per pyramid level (torchvision: 32 ... 512); smaller
            for small images.
        returned_layers: ResNet stages that feed the FPN (torchvision: [1, 2, 3, 4]); stages
            after the last one are not built at all (``[1, 2, 3]`` drops layer4, 75% of
            ResNet-18's weights).
        label_to_cat_id: the dataset's label -> COCO category id map; with COCO ``weights``
            (whose labels are the 91 category ids) the predictors keep the pretrained rows of
            these categories instead of starting from scratch.
        keep_predictors: raise instead of re-initializing predictors that cannot be mapped
            (a frozen detector with random predictors would be useless).
        **detector_kwargs: passed to ``MaskRCNN`` (min_size, max_size, rpn_*, box_*).
    """
    _check_build_args(name, anchor_sizes, returned_layers)
    stock = (fpn_channels, mask_head_channels, mask_head_convs, box_head_dim) == (256, 256, 4,
                                                                                  1024)
    if weights is not None:
        return _pretrained_detector(name, num_classes, weights, stock, label_to_cat_id,
                                    keep_predictors, detector_kwargs)
    if name == "maskrcnn_resnet50_fpn_v2":
        return _resnet50_v2(num_classes, weights_backbone, stock and norm == "frozen_bn"
                            and not head_norm, detector_kwargs)
    if trainable_layers is None:
        trainable_layers = 3 if weights_backbone else 5
    fpn_norm = norm_layer(head_norm) if head_norm else None
    if name == "maskrcnn_mobilenet_v3_large_fpn":
        backbone, featmaps, anchors = _mobilenet_fpn(weights_backbone, norm, trainable_layers,
                                                     fpn_norm, anchor_sizes)
    else:
        backbone, featmaps, anchors = _resnet_fpn(name, weights_backbone, norm, trainable_layers,
                                                  returned_layers, fpn_norm, anchor_sizes)
    if fpn_channels != 256:
        backbone = _refit_fpn(backbone, fpn_channels, fpn_norm)
    if anchors is not None:
        detector_kwargs.setdefault("rpn_anchor_generator", anchors)
    return _with_heads(backbone, featmaps, num_classes, fpn_channels, mask_head_channels,
                       mask_head_convs, box_head_dim, head_norm, detector_kwargs)


def _with_heads(backbone: BackboneWithFPN, featmaps: list[str], num_classes: int,
                fpn_channels: int, mask_head_channels: int, mask_head_convs: int,
                box_head_dim: int, head_norm: str | None, detector_kwargs: dict[str, Any]
                ) -> MaskRCNN:
    """A ``MaskRCNN`` of ``backbone`` with box and mask heads of the given widths, pooling the
    feature maps ``featmaps`` (7 x 7 for boxes, 14 x 14 for masks)."""
    mask_norm = norm_layer(head_norm) if head_norm else None
    return MaskRCNN(
        backbone,
        num_classes=None,
        box_roi_pool=MultiScaleRoIAlign(featmaps, 7, 2),
        box_head=TwoMLPHead(fpn_channels * 7 * 7, box_head_dim),
        box_predictor=FastRCNNPredictor(box_head_dim, num_classes),
        mask_roi_pool=MultiScaleRoIAlign(featmaps, 14, 2),
        mask_head=MaskRCNNHeads(fpn_channels, [mask_head_channels] * mask_head_convs, 1,
                                norm_layer=mask_norm),
        mask_predictor=MaskRCNNPredictor(mask_head_channels, mask_head_channels, num_classes),
        **detector_kwargs,
    )


def _check_build_args(name: str, anchor_sizes: list[int] | None,
                      returned_layers: list[int] | None) -> None:
    """Refuse an unknown model name, or anchor sizes that are not one per FPN level (the ResNet
    stages that feed it, plus the pooled one)."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    levels = len(returned_layers or [1, 2, 3, 4]) + 1
    if anchor_sizes and len(anchor_sizes) != levels and name != "maskrcnn_mobilenet_v3_large_fpn":
        raise ValueError(f"anchor_sizes needs one size per FPN level ({levels}), got "
                         f"{anchor_sizes}")


def _pretrained_detector(name: str, num_classes: int, weights: str, stock: bool,
                         label_to_cat_id: dict[int, int] | None, keep_predictors: bool,
                         detector_kwargs: dict[str, Any]) -> MaskRCNN:
    """torchvision's detector ``name`` with its ``weights`` (resnet50 models with stock head
    widths only), its predictors given ``num_classes`` outputs (:func:`_adapt_predictors`)."""
    if name not in ("maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2") or not stock:
        raise ValueError(f"weights={weights!r}: torchvision has detector weights only for "
                         "maskrcnn_resnet50_fpn(_v2) with stock head widths")
    model = getattr(torchvision.models.detection, name)(weights=weights, **detector_kwargs)
    if num_classes != model.roi_heads.box_predictor.cls_score.out_features:
        _adapt_predictors(model, num_classes, label_to_cat_id, keep_predictors)
    return model


def _resnet50_v2(num_classes: int, weights_backbone: str | None, as_defined: bool,
                 detector_kwargs: dict[str, Any]) -> MaskRCNN:
    """torchvision's ``maskrcnn_resnet50_fpn_v2`` without detector weights; ``as_defined``:
    the widths and norms asked for are torchvision's (no other is built)."""
    if not as_defined:
        raise ValueError("maskrcnn_resnet50_fpn_v2 is built as torchvision defines it; "
                         "use maskrcnn_resnet50_fpn for custom widths or norms")
    return torchvision.models.detection.maskrcnn_resnet50_fpn_v2(
        weights=None, weights_backbone=weights_backbone, num_classes=num_classes,
        **detector_kwargs)


def _mobilenet_fpn(weights_backbone: str | None, norm: str, trainable_layers: int,
                   fpn_norm: Callable[[int], nn.Module] | None, anchor_sizes: list[int] | None
                   ) -> tuple[BackboneWithFPN, list[str], AnchorGenerator]:
    """MobileNetV3-Large with torchvision's two-level FPN (256 channels), the names of the
    feature maps the RoI heads pool, and its anchors (the sizes at each of its 3 levels)."""
    body = torchvision.models.mobilenet_v3_large(weights=weights_backbone,
                                                 norm_layer=norm_layer(norm))
    backbone = _mobilenet_extractor(body, True, min(trainable_layers + 1, 6),
                                    norm_layer=fpn_norm)
    sizes = (tuple(anchor_sizes or (32, 64, 128, 256, 512)),) * 3
    return backbone, ["0", "1"], AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 3)


def _resnet_fpn(name: str, weights_backbone: str | None, norm: str, trainable_layers: int,
                returned_layers: list[int] | None, fpn_norm: Callable[[int], nn.Module] | None,
                anchor_sizes: list[int] | None
                ) -> tuple[BackboneWithFPN, list[str], AnchorGenerator | None]:
    """ResNet-18 or -50 with an FPN (256 channels) over ``returned_layers``, the names of the
    feature maps the RoI heads pool, and anchors of ``anchor_sizes`` (None: torchvision's)."""
    arch = "resnet18" if name == "maskrcnn_resnet18_fpn" else "resnet50"
    body = getattr(torchvision.models, arch)(weights=weights_backbone,
                                             norm_layer=norm_layer(norm))
    backbone = _resnet_fpn_extractor(body, trainable_layers, returned_layers,
                                     norm_layer=fpn_norm)
    featmaps = [str(i) for i in range(len(returned_layers or [1, 2, 3, 4]))]
    anchors = None
    if anchor_sizes and tuple(anchor_sizes) != (32, 64, 128, 256, 512):
        anchors = AnchorGenerator(tuple((s,) for s in anchor_sizes),
                                  ((0.5, 1.0, 2.0),) * len(anchor_sizes))
    return backbone, featmaps, anchors


def _refit_fpn(backbone: BackboneWithFPN, channels: int,
               fpn_norm: Callable[[int], nn.Module] | None) -> BackboneWithFPN:
    """The same body with an FPN of ``channels`` output channels."""
    in_channels = [block[0].in_channels for block in backbone.fpn.inner_blocks]
    refit = BackboneWithFPN(nn.Sequential(), {}, in_channels, channels, norm_layer=fpn_norm)
    refit.body = backbone.body
    return refit


def _adapt_predictors(model: MaskRCNN, num_classes: int, label_to_cat_id: dict[int, int] | None,
                      keep: bool) -> None:
    """Give a COCO-pretrained model ``num_classes`` outputs: the pretrained rows of the
    dataset's categories when ``label_to_cat_id`` maps into COCO's ids, else fresh predictors."""
    rh = model.roi_heads
    old_n = rh.box_predictor.cls_score.out_features
    ids = [0] + [label_to_cat_id.get(label, -1) for label in range(1, num_classes)] \
        if label_to_cat_id else []
    if ids and all(0 < i < old_n for i in ids[1:]):
        idx = torch.tensor(ids)
        box, mask = rh.box_predictor, rh.mask_predictor.mask_fcn_logits
        new_box = FastRCNNPredictor(box.cls_score.in_features, num_classes)
        new_mask = MaskRCNNPredictor(mask.in_channels, mask.in_channels, num_classes)
        with torch.no_grad():
            new_box.cls_score.weight.copy_(box.cls_score.weight[idx])
            new_box.cls_score.bias.copy_(box.cls_score.bias[idx])
            rows = box.bbox_pred.weight.view(old_n, 4, -1)[idx]
            new_box.bbox_pred.weight.copy_(rows.flatten(0, 1))
            new_box.bbox_pred.bias.copy_(box.bbox_pred.bias.view(old_n, 4)[idx].flatten())
            new_mask.conv5_mask.load_state_dict(rh.mask_predictor.conv5_mask.state_dict())
            new_mask.mask_fcn_logits.weight.copy_(mask.weight[idx])
            new_mask.mask_fcn_logits.bias.copy_(mask.bias[idx])
        rh.box_predictor, rh.mask_predictor = new_box, new_mask
        return
    if keep:
        raise ValueError(f"the pretrained detector has {old_n} classes and this dataset's "
                         f"{num_classes} do not map onto them (category ids {ids[1:] or '?'}): "
                         "a frozen detector needs its own trained predictors")
    rh.box_predictor = FastRCNNPredictor(rh.box_predictor.cls_score.in_features, num_classes)
    rh.mask_predictor = MaskRCNNPredictor(256, 256, num_classes)
