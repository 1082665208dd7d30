"""Detection transforms on ``(image, target)`` pairs, in torchvision's detection format.

Resizing and normalisation happen inside the model (torchvision's GeneralizedRCNNTransform),
so this module only holds what the model cannot do: random flips for training.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

Target = dict[str, Any]
Transform = Callable[[Tensor, Target], tuple[Tensor, Target]]


class Compose:
    """Apply transforms one after the other."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transforms!r})"


def hflip(image: Tensor, target: Target) -> tuple[Tensor, Target]:
    """Mirror left-right.

    Args:
        image: Tensor[C, H, W].
        target: "boxes" Tensor[K, 4] xyxy pixels (x -> W - x, so x1' = W - x2, x2' = W - x1),
            "masks" Tensor[K, H, W]; other entries are copied unchanged.
    """
    width = image.shape[-1]
    out = dict(target)
    if "boxes" in target:
        boxes = target["boxes"]
        out["boxes"] = torch.stack(
            [width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1
        )
    if "masks" in target:
        out["masks"] = target["masks"].flip(-1)
    return image.flip(-1), out


class RandomHorizontalFlip:
    """Flip image, boxes and masks left-right with probability ``p``.

    Draws from ``generator`` if given, else from torch's global RNG (seeded by
    ``torch.manual_seed`` and per DataLoader worker), so runs are reproducible.
    """

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = p
        self.generator = generator

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        if torch.rand(1, generator=self.generator).item() < self.p:
            return hflip(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"


def default_transforms(train: bool) -> Transform | None:
    """Transforms of the training recipe: a horizontal flip (p = 0.5) for training, none else."""
    return Compose([RandomHorizontalFlip(0.5)]) if train else None
