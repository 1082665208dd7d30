"""Adapter for detectron2's ``GeneralizedRCNN`` with ``StandardROIHeads`` or a subclass that
keeps its ``_forward_mask`` (``CascadeROIHeads`` among them) and any ``BaseMaskRCNNHead``,
installed as ``maskiou_integrations.detectron2_rcnn`` and found through the ``maskiou.adapters``
entry point.

The adapter gives ``model.roi_heads`` a class whose ``_forward_mask`` is detectron2's with the
MaskIoU branch added (made on top of the model's own ROI-heads class, so a subclass keeps every
other override; one with its own ``forward``, as a cascade, keeps that too: the branch runs where
it calls ``_forward_mask``). No detectron2 parameter moves: a detectron2 checkpoint loads into
the attached model with only ``roi_heads.maskiou_head.*`` new.

- Training: ``loss_maskiou`` joins the loss dict, on the mask branch's positive proposals, with
  full-instance targets from each proposal's matched GT mask (``PolygonMasks`` are rasterized
  to the image, ``BitMasks`` used as they are: the same targets for the same pixels).
- Inference: each ``Instances`` gains ``cls_scores``, ``mask_quality`` (the head's output) and
  ``maskness`` (dtype of ``scores``), and with ``rescore_outputs`` its ``scores`` become the
  final score (the head's calibration of these signals), re-sorted; with the head's switch
  ``maskiou.set_keep(model, "worth")``, only the masks worth keeping.

``predict`` and ``collect`` take maskiou's images through ``DefaultPredictor``'s test-time path
(the uint8 image in ``INPUT.FORMAT``, ``ResizeShortestEdge`` to the test size), so that a plain
model's detections are ``DefaultPredictor``'s.

Labels: detectron2 numbers classes 0..K-1; maskiou's records and its head count background as
0 (as torchvision does), so the head has K + 1 outputs and a detectron2 class c is maskiou's
label c + 1. ``predict`` and ``collect`` return maskiou's labels.
"""

from typing import Any, Dict, List, Mapping, Tuple

import numpy as np
import torch
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.modeling.roi_heads import StandardROIHeads
from detectron2.modeling.roi_heads.mask_head import (
    BaseMaskRCNNHead,
    mask_rcnn_inference,
    mask_rcnn_loss,
)
from detectron2.modeling.roi_heads.roi_heads import select_foreground_proposals
from detectron2.structures import BitMasks, ImageList, Instances, PolygonMasks
from torch import Tensor, nn

from maskiou.branch import (
    head_inputs_recorded,
    head_score_inputs,
    maskiou_outputs,
    maskiou_training_inputs,
    predicted_mask_probs,
    scoring_subclass,
)
from maskiou.loss import mask_iou_loss
from maskiou.roi_heads import RoIHeadsAdapter, roi_size_of, split_head_inputs
from maskiou.scoring import maskness, score_order


def full_image_masks(instances: Instances) -> Tuple[Tensor, Tensor]:
    """The distinct GT masks of a detectron2 image's proposals as full-image masks, and the index
    of each proposal's among them.

    detectron2 carries, on every sampled proposal, its matched GT's mask (``gt_masks``, one per
    proposal) as ``PolygonMasks`` or ``BitMasks``. Proposals matched to the same GT share its
    box, class and mask area, so the masks are rasterized once per GT, not once per proposal.

    Args:
        instances: n proposals with ``gt_boxes``, ``gt_classes`` and ``gt_masks``; its
            ``image_size`` (H, W).

    Returns:
        (Tensor[G, H, W] uint8 full-image masks, Tensor[n] int64 index of each proposal's mask).
    """
    h, w = instances.image_size
    n = len(instances)
    device = instances.gt_classes.device
    if n == 0:
        return (torch.zeros((0, h, w), dtype=torch.uint8, device=device),
                torch.zeros(0, dtype=torch.int64, device=device))
    masks = instances.gt_masks
    if isinstance(masks, PolygonMasks):
        areas = masks.area().to(device=device, dtype=torch.float64)
    elif isinstance(masks, BitMasks):
        areas = masks.tensor.flatten(1).sum(1).to(torch.float64)
    else:
        raise TypeError(f"gt_masks is a {type(masks).__name__}: the MaskIoU targets take "
                        "detectron2's PolygonMasks or BitMasks")
    key = torch.cat([instances.gt_boxes.tensor.to(torch.float64),
                     instances.gt_classes[:, None].to(torch.float64), areas[:, None]], 1)
    uniq, inverse = torch.unique(key, dim=0, return_inverse=True)
    first = torch.full((len(uniq),), n, dtype=torch.int64, device=device)
    first = first.scatter_reduce(0, inverse, torch.arange(n, device=device), "amin")
    chosen = masks[first.tolist()] if isinstance(masks, PolygonMasks) else masks[first]
    if isinstance(chosen, PolygonMasks):
        bits = BitMasks.from_polygon_masks(chosen, h, w).tensor.to(device)
    else:
        bits = chosen.tensor[:, :h, :w]
    return bits.to(torch.uint8), inverse


class MaskIoUMaskBranch(StandardROIHeads):
    """detectron2's mask branch (``_forward_mask``) with the MaskIoU branch: what every scoring
    class of the adapter shares (:class:`MaskScoringStandardROIHeads` for the ROI heads that
    keep ``StandardROIHeads.forward``, :class:`MaskScoringOwnForwardROIHeads` for those with
    their own, such as ``CascadeROIHeads``).

    Attributes set by the adapter: ``maskiou_head`` and the :class:`maskiou.MaskIoUConfig`
    values ``maskiou_rescore``, ``maskiou_loss_weight``, ``maskiou_detach_inputs``. In training
    each proposal given to ``_forward_mask`` carries ``maskiou_cls_score`` (the box classifier's
    probability of its GT class), put there by the subclass's box pass.
    """

    # its own annotations: detectron2's TorchScript export marks ``training`` constant in each
    # model class's own ``__annotations__`` (``freeze_training_mode``), and a class without one
    # would write into its base's
    maskiou_rescore: bool
    maskiou_loss_weight: float
    maskiou_detach_inputs: bool

    def _forward_mask(self, features: Dict[str, Tensor], instances: List[Instances]):
        """detectron2's mask branch with the MaskIoU branch: in training a loss dict with
        ``loss_mask`` and ``loss_maskiou``; at inference ``instances`` with ``pred_masks``,
        ``cls_scores``, ``mask_quality`` and ``maskness`` (and the final ``scores``)."""
        if not self.mask_on:
            return {} if self.training else instances
        if self.training:
            return self._maskiou_losses(features, instances)
        return self._maskiou_inference(features, instances)

    @torch.jit.unused
    def _maskiou_losses(self, features: Dict[str, Tensor], instances: List[Instances]
                        ) -> Dict[str, Tensor]:
        """``loss_mask`` as detectron2 computes it, and ``loss_maskiou`` on the same RoIs."""
        fg, _ = select_foreground_proposals(instances, self.num_classes)
        boxes = [x.proposal_boxes for x in fg]
        roi_features = self.mask_pooler([features[f] for f in self.mask_in_features], boxes)
        mask_logits = self.mask_head.layers(roi_features)
        mask_head = self.mask_head
        losses = {"loss_mask": mask_rcnn_loss(mask_logits, fg, mask_head.vis_period)
                  * mask_head.loss_weight}
        labels = [x.gt_classes for x in fg]
        gt = [full_image_masks(x) for x in fg]
        probs, targets, all_labels = maskiou_training_inputs(
            mask_logits, labels, [b.tensor for b in boxes], [g[0] for g in gt],
            [g[1] for g in gt])
        if self.maskiou_detach_inputs:
            roi_features, probs = roi_features.detach(), probs.detach()
        cls_scores: List[Tensor] = []
        if self.maskiou_head.score_inputs:
            if not all(x.has("maskiou_cls_score") for x in fg):
                raise RuntimeError(f"{type(self).__name__}: the mask branch's proposals carry "
                                   "no box-classifier score (its forward did not run "
                                   "_forward_box on them), which the head's score inputs need")
            cls_scores = [x.maskiou_cls_score for x in fg]
        score_inputs = head_score_inputs(self.maskiou_head.score_inputs, cls_scores, probs)
        pred = self.maskiou_head(roi_features, probs, score_inputs)
        losses["loss_maskiou"] = mask_iou_loss(pred, all_labels + 1, targets,
                                               self.maskiou_loss_weight)
        return losses

    def _maskiou_inference(self, features: Dict[str, Tensor], instances: List[Instances]
                           ) -> List[Instances]:
        if self.mask_pooler is None:  # TorchScript refines the Optional; install checks it
            raise ValueError("the MaskIoU head needs the ROI heads' mask pooler")
        boxes = [x.pred_boxes for x in instances]
        roi_features = self.mask_pooler([features[f] for f in self.mask_in_features], boxes)
        mask_logits = self.mask_head.layers(roi_features)
        mask_rcnn_inference(mask_logits, instances)
        classes = [x.pred_classes for x in instances]
        probs, all_labels = predicted_mask_probs(mask_logits, classes)
        score_inputs = head_score_inputs(self.maskiou_head.score_inputs,
                                         [x.scores for x in instances], probs)
        pred = self.maskiou_head(roi_features, probs, score_inputs)
        quality, mask_maskness = maskiou_outputs(pred, probs, all_labels + 1,
                                                 [len(c) for c in classes])
        results: List[Instances] = []
        for i, inst in enumerate(instances):
            results.append(self._with_maskiou(inst, quality[i], mask_maskness[i]))
        return results

    def _with_maskiou(self, inst: Instances, quality: Tensor, mask_maskness: Tensor
                      ) -> Instances:
        """``inst`` with ``cls_scores``, ``mask_quality``, ``maskness``; with rescoring,
        ``scores`` = the final score (the head's calibration of these signals and the box's
        share of the image) and every field re-sorted by it (ties keep detectron2's order)."""
        scores = inst.scores
        inst.cls_scores = scores
        inst.mask_quality = quality.to(scores.dtype)
        inst.maskness = mask_maskness.to(scores.dtype)
        if not self.maskiou_rescore:
            return inst
        final = self.maskiou_head.calibration(
            scores, inst.mask_quality, inst.maskness, inst.pred_boxes.tensor, inst.pred_classes,
            inst.image_size).to(scores.dtype)
        order = score_order(final)
        out = inst[order]
        out.scores = final[order]
        # maskiou.set_keep's switch (a buffer, no Python branch): only the masks worth keeping
        calibration = self.maskiou_head.calibration
        keep = (out.scores >= calibration.class_thresholds.to(out.scores.dtype)[
            out.pred_classes + 1]) | ~calibration.keep_worth_only
        return out[torch.where(keep)[0]]


class MaskScoringStandardROIHeads(MaskIoUMaskBranch):
    """detectron2's StandardROIHeads plus a MaskIoU head, for the ROI heads that keep
    ``StandardROIHeads.forward`` and ``forward_with_given_boxes`` (scriptable with detectron2's
    export; the box head's one run in training gives the head's score inputs)."""

    maskiou_rescore: bool
    maskiou_loss_weight: float
    maskiou_detach_inputs: bool

    def forward(self, images: ImageList, features: Dict[str, Tensor], proposals: List[Instances],
                targets: List[Instances] | None = None
                ) -> Tuple[List[Instances], Dict[str, Tensor]]:
        """detectron2's ``StandardROIHeads.forward``; in training the box classifier's
        probabilities of the sampled proposals are kept for the head's score inputs, from the
        box head's one run (:meth:`_maskiou_training_forward`)."""
        if self.training:
            return self._maskiou_training_forward(features, proposals, targets)
        pred_instances = self._forward_box(features, proposals)
        return self.forward_with_given_boxes(features, pred_instances), {}

    @torch.jit.unused
    def _maskiou_training_forward(self, features: Dict[str, Tensor], proposals: List[Instances],
                                  targets: List[Instances] | None
                                  ) -> Tuple[List[Instances], Dict[str, Tensor]]:
        """detectron2's training forward; the box predictor's output is read as it runs (a hook
        for the duration of ``_forward_box``) and each proposal gets ``maskiou_cls_score``, the
        probability of its GT class (detached): the head's training score input."""
        assert targets, "'targets' argument is required during training"
        proposals = self.label_and_sample_proposals(proposals, targets)
        seen: List[Any] = []
        handle = self.box_predictor.register_forward_hook(lambda m, i, out: seen.append(out))
        try:
            losses = self._forward_box(features, proposals)
        finally:
            handle.remove()
        with torch.no_grad():
            probs = self.box_predictor.predict_probs(seen[-1], proposals)
        for p, inst in zip(probs, proposals):
            inst.maskiou_cls_score = p[torch.arange(len(inst), device=p.device), inst.gt_classes]
        losses.update(self._forward_mask(features, proposals))
        losses.update(self._forward_keypoint(features, proposals))
        return proposals, losses

    def forward_with_given_boxes(self, features: Dict[str, Tensor], instances: List[Instances]
                                 ) -> List[Instances]:
        """detectron2's, without the keypoint branch (the adapter refuses keypoint models):
        TorchScript compiles every method a scripted one calls, and detectron2's
        ``_forward_keypoint`` reads ``keypoint_pooler``, which a model without keypoints lacks
        (a subclass of StandardROIHeads does not script otherwise)."""
        assert not self.training
        return self._maskiou_inference(features, instances)


class MaskScoringOwnForwardROIHeads(MaskIoUMaskBranch):
    """The MaskIoU head in a ``StandardROIHeads`` subclass with its own ``forward`` or
    ``forward_with_given_boxes`` (``CascadeROIHeads``): its own methods run as they are; the
    MaskIoU branch runs where they call ``_forward_mask`` (at inference on the final boxes, in
    training on the sampled proposals), and in training ``_forward_box`` is watched for the box
    classifier's probabilities of the proposals it is given (the head's score inputs: for a
    cascade, its first stage's, the stage that runs on the proposals the mask branch trains
    on)."""

    maskiou_rescore: bool
    maskiou_loss_weight: float
    maskiou_detach_inputs: bool

    def _forward_box(self, features: Dict[str, Tensor], proposals: List[Instances],
                     *args: Any, **kwargs: Any) -> Any:
        """The subclass's ``_forward_box``; in training, each proposal also gets
        ``maskiou_cls_score``, the probability of its GT class (detached) from the first run of
        a box predictor (``box_predictor``, or each of a cascade's) on all of ``proposals``."""
        if not self.training:
            return super()._forward_box(features, proposals, *args, **kwargs)
        box_predictor: Any = self.box_predictor
        predictors = list(box_predictor) if isinstance(box_predictor, nn.ModuleList) \
            else [box_predictor]
        seen: List[Tuple[nn.Module, Any]] = []
        handles = [p.register_forward_hook(lambda m, i, out: seen.append((m, out)))
                   for p in predictors]
        try:
            out = super()._forward_box(features, proposals, *args, **kwargs)
        finally:
            for h in handles:
                h.remove()
        n = sum(len(p) for p in proposals)
        runs = [(m, o) for m, o in seen if o[0].shape[0] == n]
        if runs:
            predictor, predictions = runs[0]
            with torch.no_grad():
                probs = predictor.predict_probs(predictions, proposals)
            for p, inst in zip(probs, proposals):
                inst.maskiou_cls_score = p[torch.arange(len(inst), device=p.device),
                                           inst.gt_classes]
        return out


def _keeps_standard_forward(cls: type) -> bool:
    """Whether a ``StandardROIHeads`` subclass runs detectron2's own ``forward`` and
    ``forward_with_given_boxes`` (then :class:`MaskScoringStandardROIHeads` can replace them)."""
    return all(getattr(cls, m) is getattr(StandardROIHeads, m)
               for m in ("forward", "forward_with_given_boxes"))


# each ROI-heads class -> its scoring class (StandardROIHeads' is the standard mixin itself)
_SCORING_CLASSES: Dict[type, type] = {StandardROIHeads: MaskScoringStandardROIHeads}


def uint8_image(image: Tensor) -> np.ndarray:
    """maskiou's image (Tensor[3, H, W] RGB in [0, 1], as its COCO reader gives an image file's
    bytes / 255) back as the file's bytes: uint8 HWC RGB, rounded to the nearest byte (so that
    ``bytes / 255`` comes back exactly as the bytes it came from)."""
    x = (image.detach() * 255.0).round_().clamp_(0, 255).to(torch.uint8)
    return x.permute(1, 2, 0).cpu().numpy()


def _test_transform(height: int, width: int, test_size: Tuple[int, int] | None) -> Any:
    """detectron2's test-time resize of a ``height`` x ``width`` image, as ``DefaultPredictor``
    makes it: ``ResizeShortestEdge([min, min], max)`` (PIL bilinear on the uint8 image,
    antialiased when shrinking), ``test_size`` = ``(INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST)``;
    none when the model's test size is not known or ``MIN_SIZE_TEST`` is 0. The transform is
    built from ``ResizeShortestEdge``'s own output shape and interpolation, not through its
    ``get_transform``, which draws the (fixed) size from numpy's global random state."""
    from detectron2.data.transforms import NoOpTransform, ResizeShortestEdge, ResizeTransform

    if test_size is None or int(test_size[0]) == 0:
        return NoOpTransform()
    aug = ResizeShortestEdge([int(test_size[0])] * 2, int(test_size[1]))
    new_h, new_w = ResizeShortestEdge.get_output_shape(height, width, int(test_size[0]),
                                                       int(test_size[1]))
    return ResizeTransform(height, width, new_h, new_w, aug.interp)


def _model_inputs(model: nn.Module, images: List[Tensor]) -> List[Dict[str, Any]]:
    """maskiou's images (Tensor[3, H, W] RGB in [0, 1]) as ``DefaultPredictor`` gives them to
    detectron2: the uint8 image (:func:`uint8_image`) in the model's ``input_format``
    (``INPUT.FORMAT``), resized by :func:`_test_transform` (``maskiou_test_size``, set by the
    loader), as a float CHW tensor on the image's device, with the image's ``height`` and
    ``width`` so that detectron2 returns detections in the image's own pixels."""
    size = getattr(model, "maskiou_test_size", None)
    fmt = getattr(model, "input_format", "BGR")
    if fmt not in ("RGB", "BGR"):
        raise ValueError(f"the detectron2 model's INPUT.FORMAT is {fmt!r}; maskiou's images go "
                         "in as RGB or BGR (as DefaultPredictor's)")
    inputs = []
    for img in images:
        h, w = int(img.shape[-2]), int(img.shape[-1])
        arr = uint8_image(img)
        if fmt == "BGR":
            arr = np.ascontiguousarray(arr[:, :, ::-1])
        arr = _test_transform(h, w, size).apply_image(arr)
        x = torch.as_tensor(arr.astype("float32").transpose(2, 0, 1)).to(img.device)
        inputs.append({"image": x, "height": h, "width": w})
    return inputs


def _record(inst: Instances) -> Dict[str, Tensor]:
    """One image's detectron2 ``Instances`` (postprocessed: boolean masks in the image) as
    maskiou's detection record (see ``maskiou.addon.collect``)."""
    out = {"boxes": inst.pred_boxes.tensor, "labels": inst.pred_classes + 1,
           "scores": inst.scores, "masks": inst.pred_masks[:, None].float()}
    for f in ("cls_scores", "mask_quality", "maskness"):
        if inst.has(f):
            out[f] = inst.get(f)
    return out


class Detectron2RCNNAdapter(RoIHeadsAdapter):
    """Attaches the head to ``model.roi_heads`` of a detectron2 ``GeneralizedRCNN``: the whole
    adapter contract (:mod:`maskiou.contract`)."""

    name = "detectron2 GeneralizedRCNN (maskiou_integrations.detectron2_rcnn)"
    framework = "detectron2"
    capabilities = frozenset({"predict", "collect", "load", "convert", "train", "losses",
                              "cost"})
    mixin = MaskScoringStandardROIHeads
    base = StandardROIHeads

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, GeneralizedRCNN)

    def scoring_class(self, cls: type) -> type:
        """The class an attached ``cls`` (``StandardROIHeads`` or a subclass) becomes:
        :class:`MaskScoringStandardROIHeads` in front of it where it keeps detectron2's
        ``forward`` and ``forward_with_given_boxes``, else :class:`MaskScoringOwnForwardROIHeads`
        (which only replaces ``_forward_mask`` and watches ``_forward_box`` in training), so
        that its own ``forward`` runs. Made once per class, named in this module."""
        mixin = MaskScoringStandardROIHeads if _keeps_standard_forward(cls) \
            else MaskScoringOwnForwardROIHeads
        return scoring_subclass(cls, mixin, _SCORING_CLASSES, globals())

    def head_defaults(self, model: nn.Module) -> Dict[str, Any]:
        rh = model.roi_heads
        if not isinstance(rh, StandardROIHeads):
            raise TypeError(f"attach_maskiou_head: model.roi_heads is a {type(rh).__name__}, "
                            "not detectron2's StandardROIHeads; write an adapter for it")
        if type(rh)._forward_mask is not StandardROIHeads._forward_mask:
            raise TypeError(f"attach_maskiou_head: {type(rh).__name__} overrides _forward_mask, "
                            "where the MaskIoU branch runs; write an adapter for it")
        if rh.keypoint_on:
            raise TypeError("attach_maskiou_head: keypoint branches are not supported")
        if not rh.mask_on:
            raise TypeError("attach_maskiou_head: this GeneralizedRCNN has no mask branch "
                            "(MODEL.MASK_ON is false)")
        if rh.mask_pooler is None:
            raise TypeError("attach_maskiou_head: the mask head takes whole feature maps "
                            "(ROI_MASK_HEAD.POOLER_TYPE is empty); the MaskIoU head needs "
                            "pooled RoI features")
        if not isinstance(rh.mask_head, BaseMaskRCNNHead) or \
                type(rh.mask_head).forward is not BaseMaskRCNNHead.forward:
            raise TypeError(f"attach_maskiou_head: the mask head {type(rh.mask_head).__name__} "
                            "is not a BaseMaskRCNNHead with detectron2's forward; write an "
                            "adapter for it")
        shapes = model.backbone.output_shape()
        channels = {shapes[f].channels for f in rh.mask_in_features}
        if len(channels) != 1:
            raise TypeError(f"attach_maskiou_head: the mask features {rh.mask_in_features} "
                            f"have different channel counts {sorted(channels)}")
        return {"in_channels": channels.pop(), "num_classes": rh.num_classes + 1,
                "roi_size": roi_size_of(rh.mask_pooler.output_size)}

    def load_detector(self, detector: Mapping[str, Any]) -> nn.Module:
        """The plain detectron2 model a maskiou checkpoint describes (``"config"``: the full
        detectron2 config as YAML), random weights, on the CPU, in eval mode; its test-time
        resize (``INPUT.MIN_SIZE_TEST``/``MAX_SIZE_TEST``) kept for :meth:`predict`."""
        from .detectron2_models import build_detector, config_from_yaml

        cfg = config_from_yaml(detector["config"])
        model = build_detector(cfg)
        model.maskiou_test_size = (int(cfg.INPUT.MIN_SIZE_TEST), int(cfg.INPUT.MAX_SIZE_TEST))
        return model

    def checkpoint_from_files(self, config_file: str, weights: str, class_names: List[str],
                              label_to_cat_id: Dict[int, int]) -> Dict[str, Any]:
        """A maskiou checkpoint of the detectron2 model that a config file and a weights file
        name (see ``maskiou_integrations.detectron2_models.checkpoint_from_files``)."""
        from .detectron2_models import checkpoint_from_files

        return checkpoint_from_files(config_file, weights, class_names, label_to_cat_id)

    def train_embedded(self, output_dir: str, device: str = "cpu") -> str:
        """Train the shipped detector again on the embedded data with detectron2's
        DefaultTrainer (its recipe, with the optimizer it was trained with:
        ``SHIPPED_OPTIMIZER``); returns the maskiou checkpoint's path."""
        from .detectron2_models import SHIPPED_OPTIMIZER, train_embedded

        return str(train_embedded(output_dir, device=device, optimizer=SHIPPED_OPTIMIZER))

    def mask_branch(self, model: nn.Module) -> Any:
        """The mask head's layers as a function of the pooled RoI features (its cost)."""
        return model.roi_heads.mask_head.layers

    @staticmethod
    def _run(model: nn.Module, images: List[Tensor], head_inputs: bool = False
             ) -> Tuple[List[Instances], List[Dict[str, Any]], List[Tuple[Tensor, Tensor]]]:
        """detectron2's inference (no postprocessing) on maskiou's images, one batch per size
        the model sees them at: detectron2 pads a batch to its largest image, and the padding
        changes a normalized network's features (GroupNorm's statistics, the bias the padding
        takes on after a layer), so each image gets what ``DefaultPredictor`` would give it
        alone. Returns each image's ``Instances``, its model input and, with ``head_inputs``,
        its head's inputs (``split_head_inputs``; empty otherwise)."""
        inputs = _model_inputs(model, images)
        groups: Dict[Tuple[int, ...], List[int]] = {}
        for i, x in enumerate(inputs):
            groups.setdefault(tuple(x["image"].shape), []).append(i)
        raw: List[Any] = [None] * len(inputs)
        recorded: List[Any] = [None] * len(inputs)
        for rows in groups.values():
            batch = [inputs[i] for i in rows]
            if head_inputs:
                with head_inputs_recorded(model.roi_heads) as seen:
                    out = model.inference(batch, do_postprocess=False)
                for i, pair in zip(rows, split_head_inputs(seen, [len(o) for o in out])):
                    recorded[i] = pair
            else:
                with torch.no_grad():
                    out = model.inference(batch, do_postprocess=False)
            for i, inst in zip(rows, out):
                raw[i] = inst
        return raw, inputs, recorded if head_inputs else []

    def losses(self, model: nn.Module, images: List[Tensor],
               targets: List[Dict[str, Tensor]]) -> Dict[str, Tensor]:
        """detectron2's training forward on maskiou's images and targets, as they are (no
        resize): each target becomes the image's ``Instances`` (``gt_boxes``, ``gt_classes`` =
        label - 1, ``gt_masks`` as ``BitMasks``)."""
        from detectron2.structures import Boxes
        from detectron2.utils.events import EventStorage, get_event_storage

        inputs = []
        for img, t in zip(images, targets):
            h, w = int(img.shape[-2]), int(img.shape[-1])
            x = img * 255.0
            if getattr(model, "input_format", "BGR") == "BGR":
                x = x.flip(0)
            inst = Instances((h, w), gt_boxes=Boxes(t["boxes"].float()),
                             gt_classes=t["labels"].to(torch.int64) - 1,
                             gt_masks=BitMasks(t["masks"].bool()))
            inputs.append({"image": x, "height": h, "width": w, "instances": inst})
        model.train()
        try:  # inside detectron2's trainer: its event storage
            get_event_storage()
        except AssertionError:
            with EventStorage(0):
                return model(inputs)
        return model(inputs)

    def predict(self, model: nn.Module, images: List[Tensor]) -> List[Dict[str, Tensor]]:
        """Run ``model`` (eval mode, no grad) on maskiou's images and return, per image, its
        detections as maskiou's records: ``boxes`` xyxy, ``labels`` (1..K), ``scores``,
        ``masks`` Tensor[n, 1, H, W] (detectron2's pasted, binarized masks), and with a head
        ``cls_scores``, ``mask_quality``, ``maskness``; a plain model gets ``maskness`` from its
        mask probabilities."""
        raw, inputs, _ = self._run(model, images)
        out = []
        for inst, x in zip(raw, inputs):
            if not inst.has("maskness"):
                inst.maskness = maskness(inst.pred_masks[:, 0]).to(inst.scores.dtype)
            out.append(_record(detector_postprocess(inst, x["height"], x["width"])))
        return out

    def collect(self, model: nn.Module, images: List[Tensor]) -> List[Dict[str, Tensor]]:
        """:meth:`predict` in the detector's order (``scores`` = class confidence) with the
        head's inputs beside each detection: ``roi_features`` Tensor[n, C, S, S] and
        ``mask_probs`` Tensor[n, M, M]. The add-on's collection pass calls this."""
        raw, inputs, head_inputs = self._run(model, images, head_inputs=True)
        out = []
        for inst, x, (f, p) in zip(raw, inputs, head_inputs):
            inst.maskiou_row = torch.arange(len(inst), device=f.device)
            kept = detector_postprocess(inst, x["height"], x["width"])
            rec = _record(kept)
            rec["scores"] = rec.pop("cls_scores")
            rec.pop("mask_quality")
            rows = kept.maskiou_row
            rec["roi_features"], rec["mask_probs"] = f[rows], p[rows]
            out.append(rec)
        return out
