"""Hand-made add-on samples for the tests: random head inputs whose mask probabilities scale with
the target, so quality shows in the inputs."""

from __future__ import annotations

import torch

from maskiou.addon.cache import HeadSamples


def random_samples(n: int = 64, seed: int = 0) -> HeadSamples:
    """n samples: 8 x 14 x 14 RoI features, 28 x 28 masks, labels 1-2, one image each."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.rand(n, generator=g)
    probs = torch.rand(n, 28, 28, generator=g) * targets[:, None, None]  # quality shows
    return HeadSamples(torch.randn(n, 8, 14, 14, generator=g).half(), probs.half(),
                       torch.randint(1, 3, (n,), generator=g), torch.rand(n, generator=g),
                       probs.float().mean((1, 2)), torch.rand(n, generator=g), targets,
                       torch.arange(n), torch.zeros(n, dtype=torch.int8),
                       torch.tensor([[0.0, 0.0, 16.0, 16.0]]).repeat(n, 1))
