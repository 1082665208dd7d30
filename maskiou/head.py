"""The MaskIoU head of Mask Scoring R-CNN (Huang et al., CVPR 2019, section 3.2).

It regresses, for every RoI and every class, the IoU between the predicted mask and the
ground-truth mask. Input: the RoI feature of the mask branch (before the mask convs) and the
predicted mask probability of the target class, max-pooled to the RoI feature's size.
"""

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .calibration import ScoreCalibration
from .configs import FUSIONS, Fusion, HeadConfig

__all__ = ["FUSIONS", "Fusion", "HeadConfig", "MASK_LOGIT_CLAMP", "MaskIoUHead", "boundary_band"]

MASK_LOGIT_CLAMP = 8.0
"""|logit| bound of a head with ``mask_input="logits"`` (float16 probabilities resolve about
e^-7.6 below 1)."""


def boundary_band(mask_probs: Tensor) -> Tensor:
    """The boundary band of masks: the 3x3 dilation minus the 3x3 erosion of ``mask >= 0.5``.

    Args:
        mask_probs: Tensor[N, 1, M, M], float in [0, 1].

    Returns:
        Tensor[N, 1, M, M] of 0 and 1: 1 on the pixels within one pixel of the mask's edge
        (inside or outside), 0 elsewhere; max pools only, so it scripts and exports to ONNX.
    """
    binary = (mask_probs >= 0.5).to(mask_probs.dtype)
    dilated = F.max_pool2d(binary, 3, 1, 1)
    eroded = -F.max_pool2d(-binary, 3, 1, 1)
    return dilated - eroded


class MaskIoUHead(nn.Module):
    """Predicts the mask IoU of each RoI for each class.

    The default arguments give the paper's architecture exactly: a 257-channel input
    (256 RoI-feature channels + 1 pooled mask channel), four 3x3 convolutions with 256 channels
    (the last one with stride 2, 14x14 -> 7x7), then FC 1024, FC 1024 and FC ``num_classes``.

    Args:
        in_channels: channels of the RoI feature (256 for an FPN backbone).
        num_classes: number of outputs, one IoU per class (torchvision: background included).
        roi_size: spatial size S of the RoI feature (14 for torchvision's mask RoIAlign).
        mask_size: side M of the mask probabilities (28 for torchvision); when M is a multiple
            of S the mask is max-pooled with a fixed M/S x M/S kernel (2 x 2 in the paper),
            which exports to ONNX, else adaptively to S x S.
        config: the architecture options (:class:`HeadConfig`), or give them one by one as
            keyword arguments (``conv_channels=64, fusion="concat", ...``); an unknown or
            invalid option raises with one line.
    """

    def __init__(
        self,
        in_channels: int = 256,
        num_classes: int = 81,
        *,
        roi_size: int = 14,
        mask_size: int = 0,
        config: HeadConfig | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        if config is not None and options:
            raise TypeError("MaskIoUHead: give config= or options, not both")
        unknown = sorted(options.keys() - {f.name for f in dataclasses.fields(HeadConfig)})
        if unknown:
            raise TypeError(f"MaskIoUHead: unknown option(s) {', '.join(unknown)}; the options "
                            "are HeadConfig's fields")
        cfg = config if config is not None else HeadConfig(**options)
        self.config = cfg
        fusion, mask_features, score_inputs = cfg.fusion, cfg.mask_features, cfg.score_inputs
        conv_channels, reduce_channels, num_convs = (cfg.conv_channels, cfg.reduce_channels,
                                                     cfg.num_convs)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.roi_size = roi_size
        self.mask_size = mask_size or 2 * roi_size
        # 0: adaptive pooling; k: a fixed k x k max pool (TorchScript and ONNX keep it constant)
        self.mask_pool = self.mask_size // roi_size if self.mask_size % roi_size == 0 else 0
        self.fusion = fusion
        self.score_inputs = score_inputs
        self.sigmoid_output = cfg.output == "sigmoid"
        self.target = cfg.target
        # the final score of a detection from its signals (fitted by the add-on; until then
        # cls x the head's output): tensors, so checkpoints, TorchScript and ONNX carry it
        self.calibration = ScoreCalibration(num_classes)
        self.mask_logits = cfg.mask_input == "logits"
        self.logit_clamp = MASK_LOGIT_CLAMP
        self.boundary_band = cfg.boundary_band
        first = {"concat": in_channels + 1, "multiply": in_channels, "mask": 1, "roi": in_channels}
        convs = []
        channels = first[fusion] + mask_features + int(cfg.boundary_band)
        self.mask_conv: nn.Conv2d | None = None
        if mask_features > 0:
            if self.mask_size != 2 * roi_size:
                raise ValueError("mask_features needs masks of twice the RoI size")
            self.mask_conv = nn.Conv2d(1, mask_features, 3, stride=2, padding=1)
        self.reduce: nn.Conv2d | None = None
        if reduce_channels > 0:
            self.reduce = nn.Conv2d(channels, reduce_channels, 1)
            channels = reduce_channels
        for i in range(num_convs):
            stride = 2 if i == num_convs - 1 else 1
            convs.append(nn.Conv2d(channels, conv_channels, 3, stride=stride, padding=1))
            channels = conv_channels
        self.convs = nn.ModuleList(convs)
        out_size = (roi_size + 1) // 2
        self.fc1 = nn.Linear(conv_channels * out_size * out_size, cfg.fc_dim)
        self.fc2 = nn.Linear(cfg.fc_dim + score_inputs, cfg.fc_dim)
        self.predictor = nn.Linear(cfg.fc_dim, num_classes)
        extra = [c for c in (self.reduce, self.mask_conv) if c is not None]
        for conv in [*self.convs, *extra]:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        for fc in (self.fc1, self.fc2):
            nn.init.kaiming_uniform_(fc.weight, a=1)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.predictor.weight, std=0.01)
        nn.init.zeros_(self.predictor.bias)

    def fuse(self, roi_features: Tensor, mask_probs: Tensor) -> Tensor:
        """Build the head's input.

        Args:
            roi_features: Tensor[N, in_channels, S, S], float.
            mask_probs: Tensor[N, M, M], float in [0, 1], the target (or predicted) class's mask
                probability; max-pooled to S x S (a 2x2 max pool when M == 2 S, as in the paper).

        Returns:
            Tensor[N, K, S, S] with K = in_channels + 1, in_channels or 1 by ``fusion``, then
            ``mask_features`` channels and the boundary band's one where configured.
        """
        probs = mask_probs[:, None].to(roi_features.dtype)
        mask = probs
        if self.mask_logits:
            mask = torch.logit(probs).clamp(-self.logit_clamp, self.logit_clamp)
        size = [roi_features.shape[-2], roi_features.shape[-1]]
        pooled = self._pool(mask, size)
        if self.fusion == "concat":
            x = torch.cat([roi_features, pooled], dim=1)
        elif self.fusion == "multiply":
            x = roi_features * pooled
        elif self.fusion == "mask":
            x = pooled
        else:
            x = roi_features
        if self.mask_conv is not None:
            x = torch.cat([x, F.relu(self.mask_conv(mask))], dim=1)
        if self.boundary_band:
            x = torch.cat([x, self._pool(boundary_band(probs), size)], dim=1)
        return x

    def _pool(self, mask: Tensor, size: list[int]) -> Tensor:
        """Tensor[N, 1, M, M] max-pooled to Tensor[N, 1, S, S] (a fixed kernel when M is a
        multiple of S, as the paper's 2 x 2)."""
        if self.mask_pool > 0 and mask.shape[-1] == self.mask_size:
            return F.max_pool2d(mask, self.mask_pool, self.mask_pool)
        return F.adaptive_max_pool2d(mask, size)

    def forward(self, roi_features: Tensor, mask_probs: Tensor,
                scores: Tensor | None = None) -> Tensor:
        """Args: see :meth:`fuse`; ``scores``: Tensor[N, score_inputs] when the head has score
        inputs. Returns: Tensor[N, num_classes], predicted IoUs (raw unless ``output`` is
        ``"sigmoid"``)."""
        x = self.fuse(roi_features, mask_probs)
        if self.reduce is not None:
            x = F.relu(self.reduce(x))
        for conv in self.convs:
            x = F.relu(conv(x))
        x = F.relu(self.fc1(x.flatten(1)))
        if self.score_inputs > 0:
            if scores is None:
                raise ValueError("this MaskIoU head needs its score inputs")
            x = torch.cat([x, scores.to(x.dtype)], dim=1)
        elif scores is not None:  # an adapter that computes scores the head would drop
            raise ValueError("this MaskIoU head has no score inputs (score_inputs=0); pass "
                             "scores=None")
        x = self.predictor(F.relu(self.fc2(x)))
        if self.sigmoid_output:
            x = torch.sigmoid(x)
        return x

