"""What a frozen detector gives the MaskIoU head, computed once: the cache head-only training
runs on.

A frozen detector's RoI features and mask probabilities never change, so the add-on runs the
detector once over its labeled images (under ``no_grad``, in eval mode, exactly as at test time)
and keeps, for every final detection, the head's two inputs and the detection's true MaskIoU.
The head then trains for as many epochs as it needs without touching the detector again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from maskiou.attach import find_maskiou_head

from .checkpoint import save_atomic


@dataclass
class HeadSamples:
    """Detections of a frozen detector with the MaskIoU head's inputs, D rows.

    Attributes:
        roi_features: Tensor[D, C, S, S] float16, the mask branch's RoI features.
        mask_probs: Tensor[D, M, M] float16, the predicted class's mask probabilities.
        labels: Tensor[D] int64, predicted classes (contiguous labels).
        cls_scores: Tensor[D] float32, classification confidence.
        maskness: Tensor[D] float32, :func:`maskiou.maskness` of the mask.
        rel_areas: Tensor[D] float32, box area / image area.
        targets: Tensor[D] float32, true MaskIoU of the pasted mask with the best GT instance
            of its class in its image (0 when none: a false positive).
        image_ids: Tensor[D] int64, the dataset's image id of each detection.
    """

    roi_features: Tensor
    mask_probs: Tensor
    labels: Tensor
    cls_scores: Tensor
    maskness: Tensor
    rel_areas: Tensor
    targets: Tensor
    image_ids: Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: Tensor) -> HeadSamples:
        return HeadSamples(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @staticmethod
    def concat(parts: list[HeadSamples]) -> HeadSamples:
        return HeadSamples(**{f.name: torch.cat([getattr(p, f.name) for p in parts])
                              for f in fields(HeadSamples)})

    def save(self, path: str | Path, meta: dict[str, Any]) -> None:
        save_atomic({"samples": {f.name: getattr(self, f.name) for f in fields(self)},
                     "meta": meta}, path)

    @staticmethod
    def load(path: str | Path) -> tuple[HeadSamples, dict[str, Any]]:
        data = torch.load(path, map_location="cpu", weights_only=True)
        return HeadSamples(**data["samples"]), data["meta"]


def file_sha1(path: str | Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def image_fingerprints(dataset: Any, indices: list[int] | None = None) -> dict[str, int]:
    """``{sha1 of the image file: image id}`` of a :class:`CocoInstanceDataset`: the images a
    head or a recalibration was fitted on, recognised again whatever their ids or names."""
    indices = list(range(len(dataset))) if indices is None else indices
    return {file_sha1(dataset.image_path(i)): int(dataset.image_ids[i]) for i in indices}


def _flip_back(output: dict[str, Tensor], width: int) -> dict[str, Tensor]:
    """Detections of a mirrored image, mirrored back onto the original image."""
    out = dict(output)
    b = output["boxes"]
    out["boxes"] = torch.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], dim=1)
    out["masks"] = output["masks"].flip(-1)
    return out


@torch.no_grad()
def collect_samples(model: nn.Module, dataset: Any, indices: list[int] | None = None, *,
                    device: str | torch.device = "cpu", batch_size: int = 8,
                    flip: bool = False, progress: bool = True, return_detections: bool = False,
                    max_detections: int = 100) -> Any:
    """Run a torchvision Mask R-CNN with an attached head over ``dataset`` and keep, for every
    final detection, what the head sees and the detection's true MaskIoU.

    Args:
        model: a torchvision ``MaskRCNN`` with the head attached (its weights do not matter:
            only the head's inputs are kept).
        dataset: a :class:`maskiou.data.CocoInstanceDataset` with ground truth.
        indices: the images to use (default: all).
        flip: run on the mirrored images (augmentation: new detections of the same objects);
            the masks are mirrored back before their true MaskIoU is measured.
        max_detections: keep at most this many detections per image, the highest scored (the
            cache holds C x S x S float16 per detection: 100 KB for an R-50-FPN, so 1,000
            images of 100 detections take about 10 GB of memory).
        return_detections: also return the :class:`maskiou.evaluation.predict.Detections`
            (same rows), for evaluating a head on cached samples.

    Returns:
        :class:`HeadSamples`, or ``(samples, detections)``.
    """
    from maskiou.evaluation.cocoeval import true_mask_ious
    from maskiou.evaluation.predict import Detections, output_to_detections

    head = find_maskiou_head(model)
    if head is None:
        raise ValueError("collect_samples: attach the MaskIoU head first")
    model.eval().to(device)
    rh = model.roi_heads
    rescore = rh.maskiou_rescore
    rh.maskiou_rescore = False  # keep the detector's order: rows align with the hook's inputs
    seen: list[tuple[Tensor, Tensor]] = []
    handle = head.register_forward_hook(
        lambda mod, inputs, out: seen.append((inputs[0].half().cpu(), inputs[1].half().cpu())))
    indices = list(range(len(dataset))) if indices is None else indices
    parts, feats, probs = [], [], []
    try:
        for start in tqdm(range(0, len(indices), batch_size), disable=not progress,
                          desc="detector on the add-on images" + (" (mirrored)" if flip else ""),
                          dynamic_ncols=True):
            batch = [dataset[i] for i in indices[start:start + batch_size]]
            images = [img.to(device) for img, _ in batch]
            outputs = model([img.flip(-1) for img in images] if flip else images)
            f, p = seen.pop()
            start = 0
            for img, (_, target), out in zip(images, batch, outputs):
                n = len(out["boxes"])
                keep = min(n, max_detections)  # the detector's order: highest score first
                feats.append(f[start:start + keep])
                probs.append(p[start:start + keep])
                start += n
                out = {k: v[:keep] for k, v in out.items()}
                if flip:
                    out = _flip_back(out, img.shape[-1])
                parts.append(output_to_detections(out, int(target["image_id"]),
                                                  dataset.label_to_cat_id))
    finally:
        handle.remove()
        rh.maskiou_rescore = rescore
    dets = Detections.concat(parts)
    true = true_mask_ious(dets, dataset.coco)
    as_tensor = lambda a, dtype=torch.float32: torch.as_tensor(np.asarray(a), dtype=dtype)  # noqa: E731
    samples = HeadSamples(
        roi_features=torch.cat(feats) if feats else torch.zeros(0, head.in_channels,
                                                                 head.roi_size, head.roi_size,
                                                                 dtype=torch.float16),
        mask_probs=torch.cat(probs) if probs else torch.zeros(0, head.mask_size,
                                                              head.mask_size,
                                                              dtype=torch.float16),
        labels=as_tensor(dets.labels, torch.int64), cls_scores=as_tensor(dets.cls_scores),
        maskness=as_tensor(dets.maskness), rel_areas=as_tensor(dets.rel_areas),
        targets=as_tensor(true), image_ids=as_tensor(dets.image_ids, torch.int64))
    if len(samples.roi_features) != len(samples):
        raise RuntimeError(f"collect_samples: the head saw {len(samples.roi_features)} RoIs for "
                           f"{len(samples)} detections; does the adapter rescore in place?")
    return (samples, dets) if return_detections else samples
