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
"""

from typing import List, Tuple

import torch
from torch import Tensor, nn

from .scoring import rescore
from .signals import uncontested

SIGNALS = ("cls", "head", "maskness", "rel_area", "uncontested")
EPS = 1e-4  # signals are clipped to [EPS, 1] before their logarithm


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
    Tensor[5] (per signal of ``SIGNALS``), ``bias`` Tensor[] and ``fitted`` Tensor[] bool.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("weights", torch.zeros(len(SIGNALS)))
        self.register_buffer("bias", torch.zeros(()))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

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

    def forward(self, cls_scores: Tensor, quality: Tensor, mask_maskness: Tensor,
                boxes: Tensor, labels: Tensor, image_size: Tuple[int, int]) -> Tensor:
        """One image's detections (see ``image_signal_logs``) -> the final score Tensor[n]
        in [0, 1], in the dtype of ``cls_scores``: the recalibrated score once fitted, else
        ``cls x quality``."""
        x = image_signal_logs(cls_scores, quality, mask_maskness, boxes, labels, image_size)
        fitted = torch.sigmoid(x @ self.weights.to(x.dtype) + self.bias.to(x.dtype))
        plain = rescore(cls_scores, quality)
        # no Python branch on a tensor: the same graph scripts and exports to ONNX
        return torch.where(self.fitted, fitted.to(cls_scores.dtype), plain)
