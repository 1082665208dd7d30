"""The final score, inside the model: a logistic recalibration of the scores a detection already
has, stored as tensors in the head and run in its forward (eager, TorchScript, ONNX alike).

For each detection it combines five signals, the detector's class score, the head's output
(``mask_quality``), the maskness, the box's share of the image and how uncontested the detection
is (1 minus its largest box IoU with a higher-scored detection of its class in its image,
:func:`maskiou.signals.uncontested`), as

    final = sigmoid(bias + w_cls log cls + w_head log quality + w_mask log maskness
                    + w_area log rel_area + w_free log uncontested)

(each signal clipped to [1e-4, 1] first): a score monotone in ``cls^a quality^b maskness^c
area^d uncontested^e``, whose weights the add-on fits on detections neither the detector nor the
head trained on (:mod:`maskiou.addon.recalibration`). Until it is fitted (``fitted`` is False)
the final score is the paper's rescoring, ``cls x quality``. The weights are chosen for the
order COCO AP rewards (:mod:`maskiou.addon.apsearch`), then scaled so that the score estimates
what the head regresses (its ``target``): the mask's IoU with its object, or the share of COCO's
ten IoU thresholds it passes.

Last, a map per class: ``final = (1 - CURVE_MIX) x curve_label(score) + CURVE_MIX x score``,
where ``curve_c`` interpolates linearly between its values at ``CURVE_KNOTS`` equal steps of
[0, 1], a nondecreasing curve fitted so that the score estimates precision x mask IoU among the
detections of the class it scores alike (what mask LaECE measures,
:mod:`maskiou.quality.laece`); the small share of the score itself makes the map strictly
increasing, so that no class's order, and so no AP, changes. Until it is fitted
(``class_fitted`` False) the score stays as it is.
"""

from typing import List, Tuple

import torch
from torch import Tensor, nn

from .scoring import rescore
from .signals import uncontested

SIGNALS = ("cls", "head", "maskness", "rel_area", "uncontested")
EPS = 1e-4  # signals are clipped to [EPS, 1] before their logarithm
CURVE_KNOTS = 26  # the map per class: its values at 0, 1/25, ..., 1 (LaECE's 25 bins' edges)
CURVE_MIX = 0.01  # the share of the score in the mapped score: strictly increasing


def class_curve(scores: Tensor, labels: Tensor, curves: Tensor) -> Tensor:
    """Each score in [0, 1] (Tensor[n]) through its label's curve: ``curves`` Tensor[C, K], the
    values at K equal steps of [0, 1], interpolated linearly; Tensor[n] in the dtype of
    ``scores``."""
    knots = curves.shape[1]
    pos = scores.clamp(0.0, 1.0) * (knots - 1)
    lo = pos.floor().clamp(max=knots - 2)
    frac = pos - lo
    flat = curves.to(scores.dtype).reshape(-1)
    at = labels * knots + lo.long()  # a flat gather: one ONNX Gather
    return flat[at] * (1.0 - frac) + flat[at + 1] * frac


def signal_logs(cls_scores: Tensor, quality: Tensor, mask_maskness: Tensor,
                rel_areas: Tensor, free: Tensor) -> Tensor:
    """Tensor[n, 5]: log of each signal (Tensor[n] each, in :data:`SIGNALS` order), clipped to
    [:data:`EPS`, 1] first; float32, float64 for float64 inputs."""
    x = torch.stack([cls_scores, quality.to(cls_scores.dtype),
                     mask_maskness.to(cls_scores.dtype), rel_areas.to(cls_scores.dtype),
                     free.to(cls_scores.dtype)], 1)
    if x.dtype != torch.float64:
        x = x.float()
    return x.clamp(1e-4, 1.0).log()  # EPS (TorchScript takes no float globals)


def image_signal_logs(cls_scores: Tensor, quality: Tensor, mask_maskness: Tensor,
                      boxes: Tensor, labels: Tensor, image_size: Tuple[int, int]) -> Tensor:
    """:func:`signal_logs` of one image's n detections from what a detector returns: class
    scores, the head's output and maskness Tensor[n], boxes Tensor[n, 4] (x1, y1, x2, y2) in
    the image's (height, width) ``image_size``, labels Tensor[n]."""
    return signal_logs(cls_scores, quality, mask_maskness, box_area_share(boxes, image_size),
                       uncontested(cls_scores, boxes, labels))


def box_area_share(boxes: Tensor, image_size: Tuple[int, int]) -> Tensor:
    """Box area / image area: Tensor[n, 4] (x1, y1, x2, y2) and (height, width) -> Tensor[n]."""
    area = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    # tensors, not a Python float: an ONNX trace keeps the image size dynamic (as torchvision's
    # clip_boxes_to_image does)
    height = torch.tensor(image_size[0], dtype=area.dtype, device=area.device)
    width = torch.tensor(image_size[1], dtype=area.dtype, device=area.device)
    return area / (height * width)


class ScoreCalibration(nn.Module):
    """The final score of each detection from its signals (see the module docstring).

    Buffers (in the model's state dict, so every checkpoint carries them): ``weights``
    Tensor[5] (per signal of ``SIGNALS``), ``bias`` Tensor[] and ``fitted`` Tensor[] bool;
    ``class_curves`` Tensor[num_classes, CURVE_KNOTS], the map per class (indexed by the
    detection's label, as the head's outputs are), and ``class_fitted`` Tensor[] bool;
    ``class_thresholds`` Tensor[num_classes], the masks worth keeping (:func:`maskiou.kept`),
    and ``keep_worth_only`` Tensor[] bool, whether the model's own output keeps only those
    (:func:`maskiou.set_keep`). A state dict written before any of these (no such keys) loads
    without them: no map, every mask kept.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"ScoreCalibration: num_classes must be >= 1, got {num_classes}")
        self.register_buffer("weights", torch.zeros(len(SIGNALS)))
        self.register_buffer("bias", torch.zeros(()))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.register_buffer("class_curves", torch.linspace(0, 1, CURVE_KNOTS).repeat(
            num_classes, 1))
        self.register_buffer("class_fitted", torch.zeros((), dtype=torch.bool))
        # per label, the threshold of the final score (the add-on's: one LRP-optimal value for
        # every class, maskiou.quality.lrp.common_threshold; 0: keep every mask)
        self.register_buffer("class_thresholds", torch.zeros(num_classes))
        # the model's own output keeps only the masks worth keeping (maskiou.set_keep)
        self.register_buffer("keep_worth_only", torch.zeros((), dtype=torch.bool))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        if prefix + "weights" in state_dict:  # written before the map: none fitted
            for name in ("class_curves", "class_fitted", "class_thresholds",
                         "keep_worth_only"):
                if prefix + name not in state_dict:
                    state_dict[prefix + name] = getattr(self, name).clone()
                    if name != "class_curves":
                        state_dict[prefix + name].zero_()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def set_class_curves(self, curves: List[List[float]]) -> None:
        """Install the map per class: for each label index, the curve's ``CURVE_KNOTS`` values
        at equal steps of [0, 1], nondecreasing, in [0, 1]."""
        c = torch.tensor(curves, dtype=self.class_curves.dtype)
        if c.shape != self.class_curves.shape:
            raise ValueError(f"the class map needs {tuple(self.class_curves.shape)} values (one "
                             f"curve of {CURVE_KNOTS} per label), got {tuple(c.shape)}")
        if bool((c[:, 1:] < c[:, :-1]).any()) or bool((c < 0).any()) or bool((c > 1).any()):
            raise ValueError("the class map's curves must be nondecreasing, in [0, 1]")
        self.class_curves.copy_(c)
        self.class_fitted.fill_(True)

    @torch.no_grad()
    def set_class_thresholds(self, thresholds: List[float]) -> None:
        """Install the masks worth keeping: per label index, keep a detection whose final
        score is at least this (0: every one; above 1: none)."""
        if len(thresholds) != len(self.class_thresholds):
            raise ValueError(f"{len(thresholds)} thresholds for {len(self.class_thresholds)} "
                             "labels")
        self.class_thresholds.copy_(torch.tensor(thresholds, dtype=self.class_thresholds.dtype))

    @torch.no_grad()
    def set(self, weights: List[float], bias: float) -> None:
        """Install fitted coefficients (``weights`` in ``SIGNALS`` order)."""
        if len(weights) != len(SIGNALS):
            raise ValueError(f"{len(weights)} weights for the {len(SIGNALS)} signals {SIGNALS}")
        self.weights.copy_(torch.tensor(weights, dtype=self.weights.dtype))
        self.bias.fill_(float(bias))
        self.fitted.fill_(True)

    @torch.no_grad()
    def clear(self) -> None:
        """Back to the rescored score (no fitted recalibration)."""
        self.weights.zero_()
        self.bias.zero_()
        self.fitted.fill_(False)
        self.class_curves.copy_(torch.linspace(0, 1, CURVE_KNOTS).expand_as(self.class_curves))
        self.class_fitted.fill_(False)
        self.class_thresholds.zero_()

    def forward(self, cls_scores: Tensor, quality: Tensor, mask_maskness: Tensor,
                boxes: Tensor, labels: Tensor, image_size: Tuple[int, int]) -> Tensor:
        """One image's detections (see ``image_signal_logs``) -> the final score Tensor[n]
        in [0, 1], in the dtype of ``cls_scores``: the recalibrated score once fitted (then
        through the map of each detection's class once that is fitted, ``labels`` Tensor[n]
        int64 in [0, num_classes)), else ``cls x quality``."""
        x = image_signal_logs(cls_scores, quality, mask_maskness, boxes, labels, image_size)
        fitted = torch.sigmoid(x @ self.weights.to(x.dtype) + self.bias.to(x.dtype))
        mapped = (1.0 - 0.01) * class_curve(fitted, labels, self.class_curves) + 0.01 * fitted
        fitted = torch.where(self.class_fitted, mapped, fitted)  # 0.01: CURVE_MIX
        plain = rescore(cls_scores, quality)
        # no Python branch on a tensor: the same graph scripts and exports to ONNX
        return torch.where(self.fitted, fitted.to(cls_scores.dtype), plain)
