"""Detection transforms: known flips of known boxes and masks."""

from __future__ import annotations

import pytest
import torch

from maskiou.data.transforms import Compose, RandomHorizontalFlip, default_transforms, hflip


def _sample() -> tuple[torch.Tensor, dict]:
    image = torch.zeros(3, 4, 10)
    image[0, 1, 2] = 1.0
    masks = torch.zeros(2, 4, 10, dtype=torch.uint8)
    masks[0, 1:3, 1:4] = 1  # tight box [1, 1, 4, 3]
    masks[1, 0, 9] = 1  # last column: tight box [9, 0, 10, 1]
    boxes = torch.tensor([[1.0, 1.0, 4.0, 3.0], [9.0, 0.0, 10.0, 1.0]])
    return image, {"boxes": boxes, "masks": masks, "labels": torch.tensor([3, 1]), "image_id": 7}


def test_hflip_known_result() -> None:
    image, target = _sample()
    out_image, out = hflip(image, target)
    assert out_image[0, 1, 7] == 1.0 and out_image.sum() == 1.0  # x -> W - 1 - x for pixels
    assert out["boxes"].tolist() == [[6.0, 1.0, 9.0, 3.0], [0.0, 0.0, 1.0, 1.0]]
    expected = torch.zeros(2, 4, 10, dtype=torch.uint8)
    expected[0, 1:3, 6:9] = 1
    expected[1, 0, 0] = 1
    assert torch.equal(out["masks"], expected)
    assert out["labels"].tolist() == [3, 1] and out["image_id"] == 7
    for box, mask in zip(out["boxes"], out["masks"]):  # boxes stay tight around the masks
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert torch.equal(target["boxes"], _sample()[1]["boxes"])  # input untouched
    twice_image, twice = hflip(out_image, out)
    assert torch.equal(twice_image, image) and torch.equal(twice["masks"], target["masks"])


def test_hflip_empty_target() -> None:
    target = {"boxes": torch.zeros(0, 4), "masks": torch.zeros(0, 5, 6, dtype=torch.uint8)}
    _, out = hflip(torch.rand(3, 5, 6), target)
    assert out["boxes"].shape == (0, 4) and out["masks"].shape == (0, 5, 6)


def test_random_flip_probability_and_seed() -> None:
    image, target = _sample()
    assert RandomHorizontalFlip(1.0)(image, target)[1]["boxes"][0, 0] == 6.0
    assert RandomHorizontalFlip(0.0)(image, target)[1] is target

    def pattern(seed: int) -> list[bool]:
        flip = RandomHorizontalFlip(0.5, generator=torch.Generator().manual_seed(seed))
        return [flip(image, target)[1] is not target for _ in range(64)]

    assert pattern(0) == pattern(0) and pattern(0) != pattern(1)
    assert 16 < sum(pattern(0)) < 48
    with pytest.raises(ValueError, match="p must be in"):
        RandomHorizontalFlip(1.5)


def test_compose_applies_in_order() -> None:
    image, target = _sample()
    calls: list[str] = []

    def tag(name: str):
        def t(img, tgt):
            calls.append(name)
            return img, tgt

        return t

    flip_twice = Compose([tag("a"), RandomHorizontalFlip(1.0), tag("b"), RandomHorizontalFlip(1.0)])
    out_image, out = flip_twice(image, target)
    assert calls == ["a", "b"] and torch.equal(out_image, image)
    assert torch.equal(out["boxes"], target["boxes"])
    assert default_transforms(train=False) is None
    assert isinstance(default_transforms(train=True), Compose)
