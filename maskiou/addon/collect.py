"""The collection pass: run a frozen detector once over labeled images and keep, for every final
detection, the MaskIoU head's inputs and the detection's true MaskIoU.

The detector is run through its adapter (capability ``collect`` of :mod:`maskiou.contract`),
never through a framework's own output format, so a third framework needs one more adapter and
nothing else. What the adapter returns for each image, in the detector's order (highest score
first):

- ``boxes`` Tensor[n, 4] xyxy, ``labels`` Tensor[n] (contiguous), ``scores`` Tensor[n] (the
  class confidence), ``masks`` Tensor[n, 1, H, W] (probabilities pasted in the image),
  ``maskness`` Tensor[n];
- ``roi_features`` Tensor[n, C, S, S] and ``mask_probs`` Tensor[n, M, M]: what the head sees.

Under torchrun every rank runs the detector over its share of the shards and writes them; the
shards are the same whatever the number of processes (a shard is a fixed slice of the images,
batched the same way).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from maskiou import distributed as D
from maskiou.attach import find_adapter, find_maskiou_head
from maskiou.contract import require
from maskiou.records import Detections, output_to_detections, true_mask_ious

from .cache import (
    FEATURES,
    SCALARS,
    DiskSamples,
    HeadSamples,
    ShardWriter,
    check_shard,
    claim_shards,
    key_hash,
    no_rows,
    require_writable,
    write_manifest,
)
from .views import SHARD_PREFIX, VIEWS, to_image, view_of, visible_window


def collecting_adapter(model: nn.Module) -> Any:
    """The model's adapter, if it declares the capability ``collect`` (else an
    :class:`~maskiou.contract.AdapterContractError` saying so)."""
    return require(find_adapter(model), "collect", "the add-on")


@torch.no_grad()
def detection_rows(model: nn.Module, dataset: Any, indices: list[int], *,
                   device: str | torch.device = "cpu", batch_size: int = 8,
                   view: str = "image", max_detections: int = 100
                   ) -> Iterator[tuple[int, dict[str, np.ndarray], Detections]]:
    """Run the detector over ``dataset[indices]`` in batches; yield, per batch, (images done,
    rows for the cache: float16 head inputs and the scalars of
    :data:`maskiou.addon.cache.SCALARS`, the same rows as :class:`Detections`).

    Args:
        model: a detector with the MaskIoU head attached (its weights do not matter: only the
            head's inputs are kept), its adapter able to ``collect``.
        dataset: a :class:`maskiou.data.CocoInstanceDataset` with ground truth.
        view: run on the images as they are (``"image"``) or on a view of them (see
            :mod:`maskiou.addon.views`: new detections of the same objects); a view's boxes and
            masks are brought back onto the image before their true MaskIoU is measured
            (against the visible part of each GT in a crop).
        max_detections: keep at most this many detections per image, the highest scored.
    """
    adapter = collecting_adapter(model)
    model.eval().to(device)
    for start in range(0, len(indices), batch_size):
        batch = [dataset[i] for i in indices[start:start + batch_size]]
        images = [img.to(device) for img, _ in batch]
        ids = [int(target["image_id"]) for _, target in batch]
        outputs = adapter.collect(model, [view_of(img, view, i) for img, i in zip(images, ids)])
        feats, probs, parts, boxes, windows = [], [], [], [], {}
        for img, image_id, out in zip(images, ids, outputs):
            out = {k: v[:max_detections] for k, v in out.items()}
            feats.append(out.pop("roi_features").half().cpu())
            probs.append(out.pop("mask_probs").half().cpu())
            height, width = img.shape[-2:]
            out = to_image(out, view, image_id, height, width)
            boxes.append(out["boxes"].float().cpu().numpy().reshape(-1, 4))
            window = visible_window(view, image_id, height, width)
            if window is not None:
                windows[image_id] = window
            parts.append(output_to_detections(out, image_id, dataset.label_to_cat_id))
        dets = Detections.concat(parts)
        rows = {"roi_features": torch.cat(feats).numpy(), "mask_probs": torch.cat(probs).numpy(),
                "labels": dets.labels, "cls_scores": dets.cls_scores, "maskness": dets.maskness,
                "rel_areas": dets.rel_areas,
                "targets": true_mask_ious(dets, dataset.coco, windows),
                "image_ids": dets.image_ids,
                "views": np.full(len(dets), VIEWS.index(view), dtype=np.int8),
                "boxes": np.concatenate(boxes) if boxes else no_rows("boxes")}
        if len(rows["roi_features"]) != len(dets):
            raise RuntimeError(f"the adapter gave {len(rows['roi_features'])} head inputs for "
                               f"{len(dets)} detections")
        yield len(batch), rows, dets


def collect_samples(model: nn.Module, dataset: Any, indices: list[int] | None = None, *,
                    device: str | torch.device = "cpu", batch_size: int = 8,
                    view: str = "image", progress: bool = True, return_detections: bool = False,
                    max_detections: int = 100) -> Any:
    """:func:`detection_rows` kept in memory: :class:`HeadSamples`, or ``(samples,
    detections)`` with ``return_detections`` (for scoring a split with cached head inputs). For
    a cache that does not fit in memory, :func:`collect_to_cache`."""
    indices = list(range(len(dataset))) if indices is None else indices
    head = find_maskiou_head(model)
    if head is None:
        raise ValueError("collect_samples: attach the MaskIoU head first")
    rows, dets = [], []
    bar = tqdm(total=len(indices), disable=not progress, dynamic_ncols=True,
               desc="detector on the add-on images" + (f" ({view})" if view != "image" else ""))
    for n, r, d in detection_rows(model, dataset, indices, device=device, batch_size=batch_size,
                                  view=view, max_detections=max_detections):
        rows.append(HeadSamples.from_numpy(r))
        dets.append(d)
        bar.update(n)
    bar.close()
    if rows:
        samples = HeadSamples.concat(rows)
    else:
        samples = HeadSamples.from_numpy(empty_rows(head))
    return (samples, Detections.concat(dets)) if return_detections else samples


def empty_rows(head: nn.Module) -> dict[str, np.ndarray]:
    """No detection: rows of every field with the shapes ``head`` takes."""
    return {"roi_features": np.zeros((0, head.in_channels, head.roi_size, head.roi_size),
                                     np.float16),
            "mask_probs": np.zeros((0, head.mask_size, head.mask_size), np.float16),
            **{f: no_rows(f) for f in SCALARS}}


def shard_plan(num_images: int, views: dict[str, list[int]], shard_images: int
               ) -> list[tuple[str, list[int], str]]:
    """The shards of a collection: (name, image indices, view), every image as it is, then the
    other views in :data:`VIEWS` order, each shard ``shard_images`` images (a multiple of the
    batch size keeps the batches those of one pass over the images)."""
    plan = []
    todo = {"image": list(range(num_images)), **{v: list(i) for v, i in views.items()
                                                  if v != "image"}}
    for view in VIEWS:
        indices = todo.get(view, [])
        for k, start in enumerate(range(0, len(indices), shard_images)):
            plan.append((f"{SHARD_PREFIX[view]}-{k:05d}", indices[start:start + shard_images],
                         view))
    return plan


def collect_to_cache(model: nn.Module, dataset: Any, directory: str | Path,
                     key: dict[str, Any], views: dict[str, list[int]], *,
                     device: str | torch.device = "cpu", batch_size: int = 8,
                     max_detections: int = 100, shard_images: int = 64, progress: bool = True,
                     log: Any = print) -> DiskSamples:
    """The detections of every image of ``dataset``, and of the other ``views`` of the images
    at their indices (``{"mirror": [...], "photometric": [...]}``), as a disk cache in
    ``directory`` written for ``key``.

    Complete shards of the same key already there are checked (sizes and checksums) and kept
    (an interrupted collection resumes), damaged ones moved aside and written again; under
    torchrun shard k is written by rank k mod world size and every rank returns the finished
    cache after a barrier. Other processes may share ``directory``: each shard is written by
    one of them (:func:`maskiou.addon.cache.claim_shards`). A finished cache is only read (it
    may be read-only). Memory: one detector batch of rows at a time.
    """
    if shard_images % batch_size:
        raise ValueError(f"shard_images ({shard_images}) must be a multiple of batch_size "
                         f"({batch_size})")
    directory = Path(directory)
    h = key_hash(key)
    plan = shard_plan(len(dataset), views, shard_images)
    rank, world = D.rank_and_world()
    mine = [shard for k, shard in enumerate(plan) if k % world == rank]
    states = {name: check_shard(directory, name, h) for name, _, _ in mine}
    todo = [shard for shard in mine if states[shard[0]][0] != "ok"]
    if todo:
        name, (state, why) = todo[0][0], states[todo[0][0]]
        require_writable(directory, f"{len(todo)} of its shards are unfinished or damaged "
                         f"(shard {name}: {why or state})")
    t0, done = time.perf_counter(), 0
    bar = tqdm(total=sum(len(idx) for _, idx, _ in todo), disable=not (progress and D.is_main()),
               dynamic_ncols=True, desc="detector on the add-on images (and their views)",
               unit="img")
    for name, idx, view in claim_shards(directory, todo, h, log):  # each locked while written
        done += len(idx)
        writer = ShardWriter(directory, name, h)
        try:
            for n, rows, dets in detection_rows(model, dataset, idx, device=device,
                                                batch_size=batch_size, view=view,
                                                max_detections=max_detections):
                writer.append(rows, dets.rles)
                bar.update(n)
        except BaseException:
            writer.abort()
            raise
        writer.close()
    bar.close()
    if done:
        log(f"collected {done} images in {time.perf_counter() - t0:.0f} s "
            f"({done / max(time.perf_counter() - t0, 1e-9):.1f} images/s"
            f"{f' on rank {rank} of {world}' if world > 1 else ''})")
    D.barrier()
    if D.is_main():
        head = find_maskiou_head(model)
        shapes = {f: list(a.shape[1:]) for f, a in empty_rows(head).items() if f in FEATURES}
        write_manifest(directory, key, [name for name, _, _ in plan], shapes)
    D.barrier()
    return DiskSamples(directory, key, verified=[name for name, _, _ in plan])  # just checked
