"""Deterministic, resumable batches: a seeded permutation per epoch, sharded by rank, with
optional aspect-ratio grouping (landscape and portrait images batched apart, as Detectron does).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch


def epoch_batches(
    aspect_ratios: Sequence[float], batch_size: int, seed: int, epoch: int, *, rank: int = 0,
    world_size: int = 1, group_by_aspect: bool = False,
) -> list[list[int]]:
    """The batches of dataset indices this rank sees in one epoch.

    Every rank draws the same permutation (``seed``, ``epoch``), forms global batches of
    ``batch_size * world_size`` images (one aspect group per batch when ``group_by_aspect``),
    drops the incomplete ones, and keeps its own slice of each. All ranks get the same number of
    batches, so DDP steps stay in lockstep.

    Args:
        aspect_ratios: width / height of every image (len = dataset size).
    """
    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    order = torch.randperm(len(aspect_ratios), generator=g).tolist()
    step = batch_size * world_size
    batches: list[list[int]] = []
    if group_by_aspect:
        buckets: dict[bool, list[int]] = {True: [], False: []}
        for i in order:
            bucket = buckets[aspect_ratios[i] >= 1.0]
            bucket.append(i)
            if len(bucket) == step:
                batches.append(bucket.copy())
                bucket.clear()
    else:
        batches = [order[i:i + step] for i in range(0, len(order) - step + 1, step)]
    return [b[rank * batch_size:(rank + 1) * batch_size] for b in batches]


class ResumableBatchSampler:
    """Iterates :func:`epoch_batches` of one epoch from batch ``start`` on."""

    def __init__(self, batches: list[list[int]], start: int = 0) -> None:
        self.batches, self.start = batches, start

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches[self.start:])

    def __len__(self) -> int:
        return max(0, len(self.batches) - self.start)
