"""The MaskIoU branch between a detector's mask branch and its outputs, shared by every adapter.

An adapter only has to find, in its detector, the RoI features of the mask branch, the mask
logits, and (in training) the proposals with their labels, GT masks and matched GT indices. The
tensor work is here, in functions TorchScript can compile (a scripted ``forward`` cannot pass a
module to a free function, so the adapter calls the head itself between them):

- training: ``probs, targets, labels = maskiou_training_inputs(...)``, then
  ``mask_iou_loss(head(roi_features, probs, head_score_inputs(head.score_inputs, cls, probs)),
  labels, targets, weight)``;
- inference: ``probs, labels = predicted_mask_probs(...)``, then
  ``maskiou_outputs(head(roi_features, probs, head_score_inputs(...)), probs, labels, sizes)``,
  then :func:`maskiou.add_maskiou_outputs` on each image's result.

:func:`maskiou_training_loss` and :func:`maskiou_inference` chain the same steps for adapters
written in plain Python (see ``examples/custom_adapter.py``). What adapters of RoI-head
detectors also share (the class swap, the install, the head's recorded inputs for the add-on)
is at the end of this module and in :mod:`maskiou.roi_heads`.
"""

from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Tuple

import torch
from torch import Tensor, nn

from .configs import MaskIoUConfig
from .loss import mask_iou_loss, select_class
from .scoring import maskness
from .targets import mask_iou_targets


def select_masks(mask_logits: Tensor, labels: Tensor) -> Tensor:
    """The mask of one class per RoI.

    Args:
        mask_logits: Tensor[N, K, M, M]; K == 1 for a class-agnostic mask predictor.
        labels: Tensor[N], int64.

    Returns:
        Tensor[N, M, M].
    """
    if mask_logits.shape[1] == 1:
        return mask_logits[:, 0]
    return select_class(mask_logits, labels)


def _cat_labels(labels: List[Tensor], like: Tensor) -> Tensor:
    if len(labels) == 0:
        return torch.zeros(0, dtype=torch.int64, device=like.device)  # pragma: no mutate (device)
    return torch.cat(labels)


def maskiou_training_inputs(
    mask_logits: Tensor,
    labels: List[Tensor],
    proposals: List[Tensor],
    gt_masks: List[Tensor],
    matched_idxs: List[Tensor],
) -> Tuple[Tensor, Tensor, Tensor]:
    """Head input and regression targets for a batch of training RoIs.

    Args:
        mask_logits: Tensor[N, K, M, M], the mask predictor's output for the RoIs of all images,
            concatenated in image order.
        labels: per image, Tensor[n_i] int64, GT class of each RoI (sum n_i == N).
        proposals: per image, Tensor[n_i, 4], boxes (x1, y1, x2, y2) in pixels.
        gt_masks: per image, Tensor[G_i, H, W], full-image GT masks.
        matched_idxs: per image, Tensor[n_i] int64, index into that image's ``gt_masks``.

    Returns:
        A tuple ``(probs, targets, labels)``: ``probs`` Tensor[N, M, M], the GT class's mask
        probability, the head's mask input; ``targets`` Tensor[N] float32, the full-instance
        MaskIoU (:func:`maskiou.mask_iou_targets`); ``labels`` Tensor[N] int64, concatenated.
    """
    all_labels = _cat_labels(labels, mask_logits)
    logits = select_masks(mask_logits, all_labels)
    sizes = [x.shape[0] for x in labels]
    targets: List[Tensor] = []
    for lg, p, g, m in zip(logits.split(sizes), proposals, gt_masks, matched_idxs):
        targets.append(mask_iou_targets(lg, p, g, m))
    target = torch.cat(targets) if len(targets) > 0 else logits.new_zeros(0)
    return logits.sigmoid(), target, all_labels


def predicted_mask_probs(mask_logits: Tensor, labels: List[Tensor]) -> Tuple[Tensor, Tensor]:
    """(Tensor[N, M, M] mask probability of each detection's predicted class, Tensor[N] labels).

    Args:
        mask_logits: Tensor[N, K, M, M] of the final detections of all images.
        labels: per image, Tensor[n_i] int64, the predicted classes.
    """
    all_labels = _cat_labels(labels, mask_logits)
    return select_masks(mask_logits, all_labels).sigmoid(), all_labels


def score_features(cls_scores: Tensor, mask_maskness: Tensor) -> Tensor:
    """The head's score inputs from their two signals: Tensor[N] each -> Tensor[N, 2]
    (classification score, maskness), in the dtype of ``cls_scores``."""
    return torch.stack([cls_scores, mask_maskness.to(cls_scores.dtype)], 1)


def head_score_inputs(num_inputs: int, cls_scores: List[Tensor], probs: Tensor
                      ) -> Tensor | None:
    """What a head with ``num_inputs`` score inputs (``head.score_inputs``) takes beside its RoI
    features and masks: None for a head without them (0, the paper's), else Tensor[N, 2], the
    classification score of each RoI's class and the maskness of its mask (computed from
    ``probs`` without gradient), in the dtype of ``probs``.

    Args:
        num_inputs: 0 or 2.
        cls_scores: per image, Tensor[n_i], the class confidence of each RoI (training: of its
            GT class; inference: of its predicted class), in the order of ``probs``' rows.
        probs: Tensor[N, M, M], the head's mask input.
    """
    if num_inputs == 0:
        return None
    if num_inputs != 2:
        raise ValueError(f"a head with {num_inputs} score inputs: maskiou computes 2 (class "
                         "score, maskness)")
    if len(cls_scores) == 0:
        return probs.new_zeros((0, 2))
    scores = torch.cat(cls_scores)
    if scores.shape[0] != probs.shape[0]:
        raise ValueError(f"{scores.shape[0]} class scores for {probs.shape[0]} RoIs")
    return score_features(scores.to(probs.dtype), maskness(probs.detach()).to(probs.dtype))


def maskiou_outputs(pred_ious: Tensor, probs: Tensor, labels: Tensor, sizes: List[int]
                    ) -> Tuple[List[Tensor], List[Tensor]]:
    """Per image, the predicted MaskIoU of each detection's class and its maskness.

    Args:
        pred_ious: Tensor[N, C], the head's output.
        probs: Tensor[N, M, M], the head's mask input (predicted class's probability).
        labels: Tensor[N] int64, predicted classes.
        sizes: detections per image (sum == N).

    Returns:
        A tuple ``(ious, maskness)`` of lists, per image Tensor[n_i] in [0, 1] and per image
        Tensor[n_i] maskness: float64 for a float64 head output (maskness: float64
        probabilities), else float32.
        :func:`maskiou.add_maskiou_outputs` stores both in the dtype of ``scores``.
    """
    ious = select_class(pred_ious, labels)
    if ious.dtype != torch.float64:  # half and bfloat16 (autocast) are widened
        ious = ious.float()
    ious = ious.clamp(0.0, 1.0)
    return list(ious.split(sizes)), list(maskness(probs).split(sizes))


def maskiou_training_loss(
    head: nn.Module,
    roi_features: Tensor,
    mask_logits: Tensor,
    labels: List[Tensor],
    proposals: List[Tensor],
    gt_masks: List[Tensor],
    matched_idxs: List[Tensor],
    cls_scores: List[Tensor] | None = None,
    loss_weight: float = 1.0,
    detach_inputs: bool = False,
) -> Tensor:
    """``loss_maskiou`` for a batch of positive RoIs (the RoIs of the mask loss), in one call.

    Args:
        head: the MaskIoU head.
        roi_features: Tensor[N, C, S, S], RoI features of all images, in image order.
        mask_logits, labels, proposals, gt_masks, matched_idxs: see
            :func:`maskiou_training_inputs`.
        cls_scores: per image, Tensor[n_i], the box classifier's probability of each RoI's GT
            class; needed by a head with score inputs (the add-on's), else ignored.
        loss_weight: weight of the loss.
        detach_inputs: keep the loss out of the RoI features and the mask branch.

    Returns:
        Scalar tensor; exactly 0 (in the graph) when no RoI has a positive target.
    """
    probs, targets, all_labels = maskiou_training_inputs(mask_logits, labels, proposals, gt_masks,
                                                         matched_idxs)
    if detach_inputs:
        roi_features, probs = roi_features.detach(), probs.detach()
    extra = head_score_inputs(head.score_inputs, _needed(cls_scores, head), probs)
    return mask_iou_loss(head(roi_features, probs, extra), all_labels, targets, loss_weight)


def _needed(cls_scores: List[Tensor] | None, head: nn.Module) -> List[Tensor]:
    """``cls_scores``, which a head with score inputs cannot do without."""
    if cls_scores is None:
        if head.score_inputs:
            raise ValueError("this MaskIoU head takes each RoI's class score as an input "
                             "(score_inputs=2): pass cls_scores")
        return []
    return cls_scores


def maskiou_inference(head: nn.Module, roi_features: Tensor, mask_logits: Tensor,
                      labels: List[Tensor], cls_scores: List[Tensor] | None = None
                      ) -> Tuple[List[Tensor], List[Tensor]]:
    """Predicted MaskIoU and maskness of each detection's predicted class, in one call.

    Args:
        head: the MaskIoU head.
        roi_features: Tensor[N, C, S, S], RoI features of the final detections of all images.
        mask_logits: Tensor[N, K, M, M], their mask logits.
        labels: per image, Tensor[n_i] int64, the predicted classes.
        cls_scores: per image, Tensor[n_i], each detection's class confidence; needed by a head
            with score inputs, else ignored.

    Returns:
        A tuple ``(ious, maskness)`` of lists, per image Tensor[n_i] IoUs in [0, 1] and per
        image Tensor[n_i] maskness, float32 (float64 for a float64 model): see
        :func:`maskiou_outputs`.
    """
    probs, all_labels = predicted_mask_probs(mask_logits, labels)
    extra = head_score_inputs(head.score_inputs, _needed(cls_scores, head), probs)
    return maskiou_outputs(head(roi_features, probs, extra), probs, all_labels,
                           [x.shape[0] for x in labels])



# --- what every adapter does to install the branch and to feed the add-on ----------------------


def install_head(module: nn.Module, head: nn.Module, config: MaskIoUConfig) -> None:
    """Put ``head`` in ``module`` (the detector's RoI heads) as ``maskiou_head``, with the
    config's values as plain attributes ``maskiou_rescore``, ``maskiou_loss_weight`` and
    ``maskiou_detach_inputs`` (plain, so that TorchScript compiles them)."""
    module.maskiou_head = head
    module.maskiou_rescore = bool(config.rescore_outputs)
    module.maskiou_loss_weight = float(config.loss_weight)
    module.maskiou_detach_inputs = bool(config.detach_inputs)


def scoring_subclass(base: type, mixin: type, made: Dict[type, type],
                     namespace: Dict[str, Any]) -> type:
    """``mixin`` put in front of ``base`` (a detector's RoI-heads class or a subclass of it):
    the mixin's methods first in the MRO, every other override of ``base`` kept. Made once per
    class (``made`` remembers them) and stored in ``namespace`` (the adapter module's globals)
    under its own name, so that pickling and TorchScript find it. The new class has its own
    ``__annotations__``, which TorchScript exports write into."""
    if base not in made:
        name = f"MaskScoring{base.__name__}_{len(made)}"
        cls = type(name, (mixin, base), {"__module__": namespace["__name__"],
                                         "__annotations__": {}})
        namespace[name] = cls
        made[base] = cls
    return made[base]


@contextmanager
def head_inputs_recorded(module: nn.Module) -> Iterator[List[Tuple[Tensor, Tensor]]]:
    """While inside, ``module``'s head (``module.maskiou_head``) records its inputs
    (roi_features Tensor[N, C, S, S], mask_probs Tensor[N, M, M]) in the yielded list, and
    the outputs are not rescored, so they stay in the detector's order, the order of the
    head's rows: what an adapter's ``collect`` reads."""
    seen: List[Tuple[Tensor, Tensor]] = []
    handle = module.maskiou_head.register_forward_hook(
        lambda mod, inputs, out: seen.append((inputs[0], inputs[1])))
    rescore_outputs = module.maskiou_rescore
    module.maskiou_rescore = False
    try:
        with torch.no_grad():
            yield seen
    finally:
        handle.remove()
        module.maskiou_rescore = rescore_outputs
