"""Head fitting: train the MaskIoU head alone on cached samples, and predict with it.

Each choice is a lever with a measured row in the README's ablation table (:class:`AddonConfig`):
which detections the head trains on, what it regresses, its loss, its architecture (a
:class:`maskiou.head.HeadConfig`, the same record the end-to-end trainer uses).

Feeding: the samples come from memory (:class:`HeadSamples`) or from the disk cache
(:class:`DiskSamples`). On a GPU the samples the head trains on are moved to device memory once
when they fit (half the free memory) and every batch is gathered there; otherwise batches are
read by DataLoader workers, pinned and copied ahead of use (on a CPU: read in the training
process, see :func:`default_workers`). Either way the batches, and so the
trained head, are the same: one seeded permutation of the rows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from maskiou.branch import score_features
from maskiou.head import MaskIoUHead
from maskiou.loss import select_class

from .cache import DiskSamples, HeadSamples
from .config import (  # noqa: F401 (re-exported: the add-on's config lives with its fitting)
    AUTO_CROSSFIT_BELOW,
    AUTO_CROSSFIT_FOLDS,
    LOSSES,
    TARGETS,
    AddonConfig,
    addon_head,
)

COCO_THRESHOLDS = torch.linspace(0.5, 0.95, 10)
Samples = HeadSamples | DiskSamples


def regression_target(true_ious: Tensor, kind: str) -> Tensor:
    """What the head learns to predict from a detection's true MaskIoU, Tensor[D] -> Tensor[D].

    ``"iou"``: the IoU itself (the paper). ``"coco"``: the share of COCO's IoU thresholds
    0.50, 0.55, ..., 0.95 it passes, i.e. at how many of the ten AP computations the detection
    can be a true positive: 0 below 0.5 (a 0.3 and a 0.45 mask are equally false positives),
    then 0.1 per 0.05 of IoU.
    """
    if kind == "iou":
        return true_ious
    if kind == "coco":
        thresholds = COCO_THRESHOLDS.to(true_ious.device)
        return (true_ious[:, None] >= thresholds - 1e-6).float().mean(1)
    raise ValueError(f"target must be one of {TARGETS}, got {kind!r}")


def score_inputs(samples: HeadSamples) -> Tensor:
    """Tensor[D, 2]: the classification score and the maskness, the head's score inputs (the
    same as an attached model computes, :func:`maskiou.branch.score_features`)."""
    return score_features(samples.cls_scores, samples.maskness)


def head_loss(pred: Tensor, target: Tensor, kind: str) -> Tensor:
    """Mean loss between predicted and true MaskIoU, Tensor[B] each."""
    if kind == "l2":
        return F.mse_loss(pred, target)
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target, beta=0.1)
    if kind == "bce":
        return F.binary_cross_entropy(pred.clamp(1e-6, 1 - 1e-6), target)
    raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")


def pairwise_rank_loss(scores: Tensor, target: Tensor, labels: Tensor, margin: float = 0.1,
                       temperature: float = 0.05) -> Tensor:
    """Mean logistic loss over the pairs of one class whose targets differ by more than
    ``margin``: the better detection's score should be the higher (AP ranks each class's
    detections by score). Tensor[B] each; exactly 0 (in the graph) without such a pair."""
    better = (target[:, None] > target[None, :] + margin) & (labels[:, None] == labels[None, :])
    if not bool(better.any()):
        return scores.sum() * 0.0
    diff = (scores[:, None] - scores[None, :]) / temperature
    return F.softplus(-diff)[better].mean()


def head_forward(head: MaskIoUHead, samples: HeadSamples) -> Tensor:
    """The head's prediction for each sample's class, Tensor[B] (samples on the head's device)."""
    extra = score_inputs(samples) if head.score_inputs else None
    features = samples.roi_features.float().contiguous(memory_format=torch.channels_last)
    out = head(features, samples.mask_probs.float(), extra)
    return select_class(out, samples.labels)


class _Batches(torch.utils.data.Dataset):
    """Batch k of a list of row-index batches, read from the samples (for a DataLoader)."""

    def __init__(self, samples: Samples, order: list[Tensor]) -> None:
        self.samples, self.order = samples, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, k: int) -> HeadSamples:
        return self.samples.batch(self.order[k])


def fits_on_device(nbytes: int, device: torch.device) -> bool:
    """Whether ``nbytes`` of samples fit in half the device's free memory (GPUs only)."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= free // 2


def default_workers(device: torch.device) -> int:
    """DataLoader processes for reading the disk cache: none on a CPU (positioned reads from the
    page cache cost about what gathering in memory does, measured, and workers would take the
    cores the head trains on), 2 on a GPU (reading and pinning overlap the device's work)."""
    return 2 if device.type == "cuda" else 0


def iter_batches(samples: Samples, order: list[Tensor], device: str | torch.device,
                 workers: int | None = None) -> Iterator[HeadSamples]:
    """The batches ``samples.batch(rows)`` for each ``rows`` of ``order``, on ``device``.

    In-memory samples are gathered where they are; disk samples are read by ``workers``
    DataLoader processes (pinned, copied without blocking, on a GPU) or in this process with
    ``workers=0`` (None: :func:`default_workers`).
    """
    device = torch.device(device)
    workers = default_workers(device) if workers is None else workers
    if isinstance(samples, HeadSamples) or workers == 0:
        for rows in order:
            yield samples.batch(rows).to(device, non_blocking=True)
        return
    loader = torch.utils.data.DataLoader(
        _Batches(samples, order), batch_size=None, shuffle=False, num_workers=workers,
        pin_memory=device.type == "cuda", prefetch_factor=4, persistent_workers=False)
    for batch in loader:
        yield batch.to(device, non_blocking=True)


def staged(samples: Samples, rows: Tensor, device: str | torch.device
           ) -> tuple[Samples, Tensor]:
    """(samples, rows) to train on: on a GPU where they fit, the rows moved to device memory
    once (and the rows renumbered); else unchanged."""
    device = torch.device(device)
    nbytes = len(rows) * (samples.nbytes // max(len(samples), 1))
    if fits_on_device(nbytes, device):
        moved = samples.load(rows, device) if isinstance(samples, DiskSamples) \
            else samples.subset(rows.to(samples.labels.device)).to(device)
        return moved, torch.arange(len(rows), device=device)
    return samples, rows


@torch.no_grad()
def predict_ious(head: MaskIoUHead, samples: Samples, rows: Tensor | None = None,
                 batch_size: int = 1024, workers: int | None = None) -> Tensor:
    """The head's predicted MaskIoU of each sample's class (all, or ``rows``), clamped to
    [0, 1]: Tensor[D] float32 on the CPU."""
    head.eval()
    rows = torch.arange(len(samples)) if rows is None else rows
    device = next(head.parameters()).device
    order = list(rows.split(batch_size))
    out = [head_forward(head, b).float().cpu() for b in iter_batches(samples, order, device,
                                                                       workers)]
    return torch.cat(out).clamp(0, 1) if out else torch.zeros(0)


@torch.no_grad()
def heldout_loss(head: MaskIoUHead, samples: Samples, rows: Tensor, cfg: AddonConfig,
                 workers: int | None = None) -> float:
    """The head's regression loss (``cfg.loss`` against ``cfg.target``, no ranking term) on
    the samples at ``rows``, which it does not train on; the head is left in eval mode."""
    head.eval()
    pred = predict_ious(head, samples, rows, workers=workers)
    target = regression_target(samples.targets[rows.cpu()], cfg.target)
    return float(head_loss(pred, target, cfg.loss))


def train_head(head: MaskIoUHead, samples: Samples, cfg: AddonConfig,
               rows: Tensor | None = None, *, progress: bool = True, workers: int | None = None,
               log: Any = None, heldout: Tensor | None = None) -> list[dict[str, float]]:
    """Train ``head`` alone on cached samples (all, or ``rows``): AdamW, cosine schedule,
    batches from one seeded permutation per epoch, on the head's device.

    Returns the per-epoch log (mean loss, seconds, samples/s; with ``heldout`` rows, the loss
    on them after the epoch, ``heldout_loss``: measured only, it changes nothing of the
    training).
    """
    rows = torch.arange(len(samples)) if rows is None else rows
    if cfg.min_target >= 0:
        rows = rows[samples.targets[rows] > cfg.min_target]
    if len(rows) == 0:
        raise ValueError("no detections to train the MaskIoU head on: the detector found "
                         "nothing on the add-on images (or none above min_target)")
    device = next(head.parameters()).device
    source = samples  # held-out rows index it, not the staged copy
    samples, rows = staged(samples, rows, device)
    g = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = math.ceil(len(rows) / cfg.batch_size)
    epochs = max(cfg.epochs, math.ceil(cfg.min_steps / steps_per_epoch))
    total = steps_per_epoch * epochs
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, steps_per_epoch // 2))
        * 0.5 * (1 + math.cos(math.pi * s / total)))
    epoch_log = []
    bar = tqdm(total=total, desc="MaskIoU head (detector frozen)", disable=not progress,
               dynamic_ncols=True)
    head.to(memory_format=torch.channels_last)  # about 10% faster convolutions on CPUs
    for epoch in range(epochs):
        head.train()
        t0, losses = time.perf_counter(), []
        perm = torch.randperm(len(rows), generator=g).to(rows.device)
        order = list(rows[perm].split(cfg.batch_size))
        for batch in iter_batches(samples, order, device, workers):
            pred = head_forward(head, batch)
            target = regression_target(batch.targets, cfg.target)
            loss = head_loss(pred, target, cfg.loss)
            if cfg.rank_weight > 0:
                final = batch.cls_scores * pred.clamp(0, 1)
                loss = loss + cfg.rank_weight * pairwise_rank_loss(final, target, batch.labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.detach())
            bar.update(1)
        mean = float(torch.stack(losses).mean())
        if not math.isfinite(mean):
            raise FloatingPointError(f"MaskIoU head training diverged in epoch {epoch + 1}")
        seconds = time.perf_counter() - t0
        epoch_log.append({"epoch": epoch + 1, "loss": mean, "seconds": seconds,
                          "samples_per_s": len(rows) / max(seconds, 1e-9)})
        if heldout is not None and len(heldout):
            epoch_log[-1]["heldout_loss"] = heldout_loss(head, source, heldout, cfg, workers)
        bar.set_postfix(loss=f"{mean:.4f}")
    bar.close()
    head.to(memory_format=torch.contiguous_format).eval()
    return epoch_log
