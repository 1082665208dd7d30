"""Adapter for ``torchvision.models.detection.MaskRCNN`` (any backbone), installed as
``maskiou_integrations.torchvision_maskrcnn`` and found through the ``maskiou.adapters`` entry
point.

torchvision's ``RoIHeads`` has no hook between the mask RoI pooling and the mask convs, and a
scripted ``forward`` cannot call its parent's, so the adapter gives ``model.roi_heads`` a class
whose ``forward`` is torchvision's with the MaskIoU branch added. That class is made on top of
the model's own ``RoIHeads`` class: a subclass that overrides anything but ``forward`` (say
``postprocess_detections``) keeps its override. No parameter moves: a checkpoint of the plain
detector loads into the attached model with ``strict=False`` (only ``roi_heads.maskiou_head.*``
is new), and the attached model still scripts with TorchScript.

Its detectors are maskiou's own recipe (``maskiou.models``: a ``TrainConfig``, built by
``build_model``, trained by ``maskiou-train``); the adapter is the door to them, as detectron2's
and ultralytics' adapters are to theirs: ``load`` rebuilds one, ``train`` trains the embedded
one with ``maskiou-train``, ``export`` gives what TorchScript and ONNX need.
"""

import os
import subprocess
import sys
from typing import Any, Dict, List, Mapping, Tuple

import torch
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.roi_heads import (
    RoIHeads,
    fastrcnn_loss,
    maskrcnn_inference,
    maskrcnn_loss,
)

from maskiou.branch import (
    head_score_inputs,
    maskiou_outputs,
    maskiou_training_inputs,
    predicted_mask_probs,
)
from maskiou.keep import keep_as_switched
from maskiou.loss import mask_iou_loss
from maskiou.roi_heads import RoIHeadsAdapter, records_with_head_inputs, roi_size_of
from maskiou.scoring import add_maskiou_outputs


class MaskScoringRoIHeads(RoIHeads):
    """torchvision's RoIHeads plus a MaskIoU head.

    Attributes set by the adapter: ``maskiou_head`` (:class:`maskiou.MaskIoUHead`) and the
    :class:`maskiou.MaskIoUConfig` values ``maskiou_rescore``, ``maskiou_loss_weight``,
    ``maskiou_detach_inputs`` (plain attributes, so that TorchScript can compile them).
    """

    def forward(
        self,
        features: Dict[str, Tensor],
        proposals: List[Tensor],
        image_shapes: List[Tuple[int, int]],
        targets: List[Dict[str, Tensor]] | None = None,
    ) -> Tuple[List[Dict[str, Tensor]], Dict[str, Tensor]]:
        """``RoIHeads.forward`` with the MaskIoU branch: ``loss_maskiou`` in training;
        ``cls_scores``, ``mask_quality``, ``maskness`` (and the final ``scores``) at inference."""
        check_target_types(targets)
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(
                proposals, targets)
        else:  # TorchScript needs the Optionals defined; inference never reads them
            matched_idxs = None  # pragma: no mutate
            labels = None  # pragma: no mutate
            regression_targets = None  # pragma: no mutate

        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)

        result: List[Dict[str, Tensor]] = []
        losses: Dict[str, Tensor] = {}
        pos_matched: List[Tensor] = []
        if self.training:
            # TorchScript refines the Optionals here; select_training_samples set all three
            if (labels is None or regression_targets is None  # pragma: no mutate
                    or matched_idxs is None):  # pragma: no mutate
                raise ValueError("training samples missing")  # pragma: no mutate (unreachable)
            loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels,
                                                          regression_targets)
            losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
            mask_proposals, pos_matched, pos_labels, pos_scores = self._maskiou_positive_rois(
                class_logits, proposals, labels, matched_idxs)
        else:
            result, mask_proposals, pos_labels, pos_scores = self._maskiou_detections(
                class_logits, box_regression, proposals, image_shapes)

        # TorchScript refines the Optional; attach refuses a model without a mask branch
        if self.mask_roi_pool is None:  # pragma: no mutate
            raise ValueError("this RoIHeads has no mask branch")  # pragma: no mutate
        roi_features = self.mask_roi_pool(features, mask_proposals, image_shapes)
        mask_logits = self.mask_predictor(self.mask_head(roi_features))

        if self.training:
            if targets is None:  # pragma: no mutate (TorchScript refinement; checked above)
                raise ValueError("targets are required")  # pragma: no mutate (unreachable)
            loss_mask, loss_maskiou = self._maskiou_mask_losses(
                roi_features, mask_logits, mask_proposals, pos_matched, pos_labels, pos_scores,
                targets)
            losses["loss_mask"] = loss_mask
            losses["loss_maskiou"] = loss_maskiou
        else:
            self._maskiou_add_outputs(result, roi_features, mask_logits, pos_labels, pos_scores,
                                      image_shapes)
            if self.maskiou_rescore:  # the switch of maskiou.set_keep, a buffer: no branch
                calibration = self.maskiou_head.calibration
                result = [keep_as_switched(r, calibration.class_thresholds,
                                           calibration.keep_worth_only) for r in result]
        return result, losses

    def _maskiou_positive_rois(
        self,
        class_logits: Tensor,
        proposals: List[Tensor],
        labels: List[Tensor],
        matched_idxs: List[Tensor],
    ) -> Tuple[List[Tensor], List[Tensor], List[Tensor], List[Tensor]]:
        """Per image, the positive training RoIs (label > 0), as the mask loss takes them:
        (boxes Tensor[P, 4], matched GT index Tensor[P], label Tensor[P], classification
        probability of that label Tensor[P], detached)."""
        mask_proposals: List[Tensor] = []
        pos_matched: List[Tensor] = []
        pos_labels: List[Tensor] = []
        pos_scores: List[Tensor] = []  # classification score of each mask RoI's class
        probs_all = class_logits.detach().softmax(1).split([p.shape[0] for p in proposals])
        for props, lab, idx, cls_probs in zip(proposals, labels, matched_idxs, probs_all):
            pos = torch.where(lab > 0)[0]
            mask_proposals.append(props[pos])
            pos_matched.append(idx[pos])
            pos_labels.append(lab[pos])
            pos_scores.append(cls_probs[pos, lab[pos]])
        return mask_proposals, pos_matched, pos_labels, pos_scores

    def _maskiou_detections(
        self,
        class_logits: Tensor,
        box_regression: Tensor,
        proposals: List[Tensor],
        image_shapes: List[Tuple[int, int]],
    ) -> Tuple[List[Dict[str, Tensor]], List[Tensor], List[Tensor], List[Tensor]]:
        """The detector's final detections (its ``postprocess_detections``) as result dicts
        (boxes, labels, scores), with per image their boxes, labels and scores for the mask
        branch."""
        boxes, scores, det_labels = self.postprocess_detections(
            class_logits, box_regression, proposals, image_shapes)
        result: List[Dict[str, Tensor]] = []
        for b, s, lab in zip(boxes, scores, det_labels):
            result.append({"boxes": b, "labels": lab, "scores": s})
        return result, boxes, det_labels, scores

    def _maskiou_mask_losses(
        self,
        roi_features: Tensor,
        mask_logits: Tensor,
        mask_proposals: List[Tensor],
        pos_matched: List[Tensor],
        pos_labels: List[Tensor],
        pos_scores: List[Tensor],
        targets: List[Dict[str, Tensor]],
    ) -> Tuple[Tensor, Tensor]:
        """(torchvision's ``loss_mask``, ``loss_maskiou``) of the positive RoIs: the head on
        their RoI features (Tensor[P, C, S, S]) and predicted masks of the GT class, against
        the whole-instance MaskIoU of those masks."""
        gt_masks = [t["masks"] for t in targets]
        gt_labels = [t["labels"] for t in targets]
        loss_mask = maskrcnn_loss(mask_logits, mask_proposals, gt_masks, gt_labels, pos_matched)
        probs, iou_targets, all_labels = maskiou_training_inputs(
            mask_logits, pos_labels, mask_proposals, gt_masks, pos_matched)
        head_features = roi_features
        if self.maskiou_detach_inputs:
            head_features, probs = roi_features.detach(), probs.detach()
        pred = self.maskiou_head(head_features, probs,
                                 head_score_inputs(self.maskiou_head.score_inputs, pos_scores,
                                                   probs))
        return loss_mask, mask_iou_loss(pred, all_labels, iou_targets, self.maskiou_loss_weight)

    def _maskiou_add_outputs(
        self,
        result: List[Dict[str, Tensor]],
        roi_features: Tensor,
        mask_logits: Tensor,
        pos_labels: List[Tensor],
        pos_scores: List[Tensor],
        image_shapes: List[Tuple[int, int]],
    ) -> None:
        """Put each detection's pasted-in-box mask, ``cls_scores``, ``mask_quality`` (the head
        on its RoI features and predicted mask), ``maskness`` and final score in ``result``."""
        probs, all_labels = predicted_mask_probs(mask_logits, pos_labels)
        pred = self.maskiou_head(roi_features, probs,
                                 head_score_inputs(self.maskiou_head.score_inputs, pos_scores,
                                                   probs))
        quality, mask_maskness = maskiou_outputs(pred, probs, all_labels,
                                                 [x.shape[0] for x in pos_labels])
        masks = maskrcnn_inference(mask_logits, pos_labels)
        for i, r in enumerate(result):
            r["masks"] = masks[i]
            final = self.maskiou_head.calibration(
                r["scores"], quality[i], mask_maskness[i], r["boxes"], r["labels"],
                image_shapes[i])
            add_maskiou_outputs(r, quality[i], mask_maskness[i], self.maskiou_rescore, final)


def check_target_types(targets: List[Dict[str, Tensor]] | None) -> None:
    """torchvision's checks of the targets' types: float boxes, int64 labels."""
    if targets is not None:
        for t in targets:
            if not t["boxes"].is_floating_point():
                raise TypeError("target boxes must be of float type")
            if t["labels"].dtype != torch.int64:
                raise TypeError("target labels must be of int64 type")


#: torchrun's variables: a child trainer that saw them would wait for the other ranks.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                      "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")


def embedded_training_args(output_dir: str, device: str = "cpu") -> List[str]:
    """``maskiou-train``'s arguments that train the shipped plain detector's recipe again."""
    return ["--config", "synthetic-cpu", "--no-maskiou", "--output-dir", str(output_dir),
            "--device", str(device)]


class TorchvisionMaskRCNNAdapter(RoIHeadsAdapter):
    """Attaches the head to ``model.roi_heads`` of a torchvision ``MaskRCNN``: the whole
    adapter contract (:mod:`maskiou.contract`)."""

    name = "torchvision MaskRCNN (maskiou_integrations.torchvision_maskrcnn)"
    framework = "torchvision"
    capabilities = frozenset({"predict", "collect", "load", "train", "losses", "cost",
                              "export"})
    mixin = MaskScoringRoIHeads
    base = RoIHeads

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, MaskRCNN)

    def head_defaults(self, model: nn.Module) -> Dict[str, Any]:
        rh = model.roi_heads
        if not isinstance(rh, RoIHeads):
            raise TypeError(f"attach_maskiou_head: model.roi_heads is a {type(rh).__name__}, not "
                            "torchvision's RoIHeads; write an adapter for it "
                            "(see examples/custom_adapter.py)")
        if type(rh).forward is not RoIHeads.forward:
            raise TypeError(f"attach_maskiou_head: {type(rh).__name__} overrides "
                            "RoIHeads.forward, which the MaskIoU branch replaces; write an "
                            "adapter for it (see examples/custom_adapter.py)")
        if not rh.has_mask():
            raise TypeError("attach_maskiou_head: this MaskRCNN has no mask branch")
        if rh.has_keypoint():
            raise TypeError("attach_maskiou_head: keypoint branches are not supported")
        num_classes = rh.box_predictor.cls_score.out_features
        channels = getattr(model.backbone, "out_channels", None)
        if channels is None:
            raise TypeError("attach_maskiou_head: model.backbone has no out_channels")
        roi_size = roi_size_of(getattr(rh.mask_roi_pool, "output_size", (14, 14)))
        return {"in_channels": int(channels), "num_classes": num_classes, "roi_size": roi_size}

    def load_detector(self, detector: Mapping[str, Any]) -> nn.Module:
        """The plain Mask R-CNN a checkpoint's ``"detector"`` entry describes: ``"config"``,
        the ``maskiou.models.config.TrainConfig`` of maskiou's own recipe (how it was built),
        and ``"num_classes"`` (with the background); random weights, CPU, eval mode."""
        from maskiou.models.load import build_detector

        return build_detector(detector["config"], int(detector["num_classes"])).eval()

    def train_embedded(self, output_dir: str, device: str = "cpu") -> str:
        """Train the plain Mask R-CNN of the embedded recipe (``synthetic-cpu``, no head: the
        shipped ``torchvision_plain``'s) with ``maskiou-train``, torchvision's trainer here,
        into ``output_dir``; returns ``output_dir/model_final.pt``. The trainer runs as its
        own process (the adapters sit below maskiou's trainer, ``docs/development.md``), one
        process even under torchrun (its variables are left out of the child's environment)."""
        command = [sys.executable, "-m", "maskiou.training", *embedded_training_args(
            output_dir, device)]
        env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES}
        done = subprocess.run(command, env=env, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"maskiou-train exited with {done.returncode} training the "
                               f"embedded torchvision detector into {output_dir} (its output "
                               "is above)")
        return os.path.join(output_dir, "model_final.pt")

    def export_example(self, model: nn.Module,
                       size: Tuple[int, int] | None = None) -> List[Tensor]:
        """One example image for tracing the ONNX graph: ``[Tensor[3, H, W]]`` uniform in
        [0, 1], ``size`` (H, W) or square at the model's test size (``transform.min_size``).
        The model (head attached or not) scripts with ``torch.jit.script`` and traces with the
        TorchScript-based ONNX exporter (``maskiou.training.deploy``)."""
        if size is None:
            side = int(model.transform.min_size[0])
            size = (side, side)
        return [torch.rand(3, int(size[0]), int(size[1]))]

    def losses(self, model: nn.Module, images: List[Tensor],
               targets: List[Dict[str, Tensor]]) -> Dict[str, Tensor]:
        """torchvision's own training forward: its targets are maskiou's."""
        model.train()
        return model(images, targets)

    def predict(self, model: nn.Module, images: List[Tensor]) -> List[Dict[str, Tensor]]:
        """The model's own output (eval mode, no grad): torchvision's detection dicts are
        maskiou's records already."""
        with torch.no_grad():
            return model(images)

    def mask_branch(self, model: nn.Module) -> Any:
        """The mask head and predictor as a function of the pooled RoI features (its cost)."""
        rh = model.roi_heads
        return lambda x: rh.mask_predictor(rh.mask_head(x))

    def collect(self, model: nn.Module, images: List[Tensor]) -> List[Dict[str, Tensor]]:
        """Run the attached model on ``images`` (eval mode, no grad) and return, per image, its
        detections in the detector's order (``scores`` = class confidence) with the head's
        inputs beside them: ``roi_features`` Tensor[n, C, S, S] (``mask_roi_pool``'s output)
        and ``mask_probs`` Tensor[n, M, M] (the predicted class's mask probabilities). The
        add-on's collection pass calls this (``maskiou.addon.collect``)."""
        return records_with_head_inputs(model.roi_heads, lambda: model(images))
