"""The MaskIoU head of Mask Scoring R-CNN (Huang et al., CVPR 2019, section 3.2).

It regresses, for every RoI and every class, the IoU between the predicted mask and the
ground-truth mask. Input: the RoI feature of the mask branch (before the mask convs) and the
predicted mask probability of the target class, max-pooled to the RoI feature's size.
"""

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Fusion = Literal["concat", "multiply", "mask", "roi"]
FUSIONS: tuple[str, ...] = ("concat", "multiply", "mask", "roi")


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
        conv_channels: channels of the four convolutions.
        num_convs: number of convolutions; the last one has stride 2.
        fc_dim: width of the two hidden fully connected layers.
        fusion: how the mask enters the head, the cases of the paper's table 4:
            ``"concat"`` (a, default) concatenates the pooled mask to the RoI feature;
            ``"multiply"`` (b) multiplies the RoI feature by it; ``"mask"`` (e) uses the mask only;
            ``"roi"`` (f) uses the RoI feature only.
    """

    def __init__(
        self,
        in_channels: int = 256,
        num_classes: int = 81,
        *,
        roi_size: int = 14,
        mask_size: int = 0,
        conv_channels: int = 256,
        num_convs: int = 4,
        fc_dim: int = 1024,
        fusion: Fusion = "concat",
    ) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if num_convs < 1:
            raise ValueError(f"num_convs must be >= 1, got {num_convs}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.roi_size = roi_size
        self.mask_size = mask_size or 2 * roi_size
        # 0: adaptive pooling; k: a fixed k x k max pool (TorchScript and ONNX keep it constant)
        self.mask_pool = self.mask_size // roi_size if self.mask_size % roi_size == 0 else 0
        self.fusion = fusion
        first = {"concat": in_channels + 1, "multiply": in_channels, "mask": 1, "roi": in_channels}
        convs = []
        channels = first[fusion]
        for i in range(num_convs):
            stride = 2 if i == num_convs - 1 else 1
            convs.append(nn.Conv2d(channels, conv_channels, 3, stride=stride, padding=1))
            channels = conv_channels
        self.convs = nn.ModuleList(convs)
        out_size = (roi_size + 1) // 2
        self.fc1 = nn.Linear(conv_channels * out_size * out_size, fc_dim)
        self.fc2 = nn.Linear(fc_dim, fc_dim)
        self.predictor = nn.Linear(fc_dim, num_classes)
        for conv in self.convs:
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
            Tensor[N, K, S, S] with K = in_channels + 1, in_channels or 1 by ``fusion``.
        """
        mask = mask_probs[:, None].to(roi_features.dtype)
        if self.mask_pool > 0 and mask.shape[-1] == self.mask_size:
            pooled = F.max_pool2d(mask, self.mask_pool, self.mask_pool)
        else:
            pooled = F.adaptive_max_pool2d(mask, [roi_features.shape[-2], roi_features.shape[-1]])
        if self.fusion == "concat":
            return torch.cat([roi_features, pooled], dim=1)
        if self.fusion == "multiply":
            return roi_features * pooled
        if self.fusion == "mask":
            return pooled
        return roi_features

    def forward(self, roi_features: Tensor, mask_probs: Tensor) -> Tensor:
        """Args: see :meth:`fuse`. Returns: Tensor[N, num_classes], raw predicted IoUs."""
        x = self.fuse(roi_features, mask_probs)
        for conv in self.convs:
            x = F.relu(conv(x))
        x = x.flatten(1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.predictor(x)
