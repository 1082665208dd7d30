"""One inference pass, three scorings, COCO AP for each: shared by the benchmarks and the demo.

Detections are kept as compact per-image records (RLE masks, not pixel arrays), the true MaskIoU
of each detection comes from pycocotools' RLE IoU against the GT masks of its class, and AP comes
from COCOeval (or faster-coco-eval, which must agree).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from tqdm import tqdm

from .metrics import SCORINGS, scorings

AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@dataclass
class Detections:
    """All detections of a dataset split, flattened: arrays of length N (RLEs a list)."""

    image_ids: np.ndarray
    category_ids: np.ndarray
    boxes_xywh: np.ndarray  # [N, 4]
    rles: list[dict[str, Any]]
    cls_scores: np.ndarray
    pred_ious: np.ndarray

    def __len__(self) -> int:
        return len(self.image_ids)

    @staticmethod
    def concat(parts: list[Detections]) -> Detections:
        if not parts:
            return Detections(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4)), [],
                              np.zeros(0), np.zeros(0))
        return Detections(
            np.concatenate([p.image_ids for p in parts]),
            np.concatenate([p.category_ids for p in parts]),
            np.concatenate([p.boxes_xywh for p in parts]).reshape(-1, 4),
            [r for p in parts for r in p.rles],
            np.concatenate([p.cls_scores for p in parts]),
            np.concatenate([p.pred_ious for p in parts]),
        )


def encode_masks(masks: torch.Tensor) -> list[dict[str, Any]]:
    """Tensor[n, H, W] bool -> n compressed RLEs (``counts`` as str, JSON-ready)."""
    if len(masks) == 0:
        return []
    arr = np.asfortranarray(masks.permute(1, 2, 0).cpu().numpy().astype(np.uint8))
    rles = mask_utils.encode(arr)
    for r in rles:
        r["counts"] = r["counts"].decode("ascii")
    return rles


def output_to_detections(output: dict[str, torch.Tensor], image_id: int,
                         label_to_cat_id: dict[int, int], mask_threshold: float = 0.5
                         ) -> Detections:
    """One image's model output -> :class:`Detections`.

    Args:
        output: boxes Tensor[n, 4] xyxy, labels Tensor[n], masks Tensor[n, 1, H, W]
            probabilities, ``cls_scores`` and ``mask_ious`` Tensor[n] (or only ``scores`` for a
            model without the head: then the predicted IoU is taken as 1).
    """
    n = len(output["boxes"])
    boxes = output["boxes"].detach().float().cpu().numpy()
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1) if n else \
        np.zeros((0, 4))
    cls = output.get("cls_scores", output["scores"]).detach().float().cpu().numpy()
    pred = output["mask_ious"].detach().float().cpu().numpy() if "mask_ious" in output \
        else np.ones(n)
    labels = output["labels"].cpu().tolist()
    return Detections(
        np.full(n, image_id, dtype=np.int64),
        np.array([label_to_cat_id[int(x)] for x in labels], dtype=np.int64),
        xywh, encode_masks(output["masks"][:, 0] > mask_threshold), cls, pred,
    )


@torch.no_grad()
def predict(model: torch.nn.Module, dataset: Any, indices: list[int] | None = None, *,
            device: str | torch.device = "cpu", batch_size: int = 4, progress: bool = True,
            desc: str = "inference") -> Detections:
    """Run ``model`` over ``dataset`` items (all, or ``indices``) in batches."""
    model.eval().to(device)
    indices = list(range(len(dataset))) if indices is None else indices
    parts = []
    for start in tqdm(range(0, len(indices), batch_size), desc=desc, disable=not progress,
                      dynamic_ncols=True):
        batch = [dataset[i] for i in indices[start:start + batch_size]]
        outputs = model([img.to(device) for img, _ in batch])
        for (_, target), out in zip(batch, outputs):
            parts.append(output_to_detections(out, int(target["image_id"]),
                                              dataset.label_to_cat_id))
    return Detections.concat(parts)


def true_mask_ious(dets: Detections, coco_gt: Any) -> np.ndarray:
    """For each detection, the best mask IoU with a non-crowd GT instance of its category in its
    image (0 when there is none). One pycocotools call per (image, category)."""
    out = np.zeros(len(dets))
    keys = np.stack([dets.image_ids, dets.category_ids], 1) if len(dets) else np.zeros((0, 2))
    for image_id, cat_id in {tuple(k) for k in keys.tolist()}:
        sel = np.where((dets.image_ids == image_id) & (dets.category_ids == cat_id))[0]
        ann_ids = coco_gt.getAnnIds(imgIds=[int(image_id)], catIds=[int(cat_id)], iscrowd=False)
        anns = coco_gt.loadAnns(ann_ids)
        if not anns:
            continue
        gts = [coco_gt.annToRLE(a) for a in anns]
        ious = mask_utils.iou([dets.rles[i] for i in sel], gts, [0] * len(gts))
        out[sel] = np.asarray(ious).reshape(len(sel), len(gts)).max(axis=1)
    return out


def coco_results(dets: Detections, scores: np.ndarray, iou_type: str) -> list[dict[str, Any]]:
    """COCO results JSON entries for ``iou_type`` "segm" or "bbox" with the given scores."""
    out = []
    for i in range(len(dets)):
        entry = {"image_id": int(dets.image_ids[i]), "category_id": int(dets.category_ids[i]),
                 "score": float(scores[i])}
        if iou_type == "segm":
            entry["segmentation"] = dets.rles[i]
        else:
            entry["bbox"] = [round(float(v), 2) for v in dets.boxes_xywh[i]]
        out.append(entry)
    return out


def coco_ap(coco_gt: Any, results: list[dict[str, Any]], iou_type: str,
            backend: str = "pycocotools") -> dict[str, float]:
    """AP, AP50, AP75, APs, APm, APl in percent (pycocotools' stats x 100; -1 where the split
    has no GT of that size)."""
    if not results:
        return dict.fromkeys(AP_KEYS, 0.0)
    if backend not in ("pycocotools", "faster-coco-eval"):
        raise ValueError(f"eval backend must be pycocotools or faster-coco-eval, got {backend!r}")
    with contextlib.redirect_stdout(io.StringIO()):
        if backend == "pycocotools":
            from pycocotools.cocoeval import COCOeval
        else:
            from faster_coco_eval import COCO
            from faster_coco_eval import COCOeval_faster as COCOeval

            gt = COCO()
            gt.dataset = coco_gt.dataset
            gt.createIndex()
            coco_gt = gt
        dt = coco_gt.loadRes([dict(r) for r in results])  # loadRes edits the dicts it gets
        ev = COCOeval(coco_gt, dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # -1 (no GT in that area range) stays -1, as pycocotools reports it
    return {k: round(float(v) * 100, 3) if v >= 0 else -1.0 for k, v in zip(AP_KEYS, ev.stats[:6])}


def evaluate_scorings(dets: Detections, coco_gt: Any, backend: str = "pycocotools",
                      true_ious: np.ndarray | None = None) -> dict[str, Any]:
    """``{"segm": {scoring: APs}, "bbox": {...}}`` for the three scorings of the same
    detections, plus the results lists under ``"results"`` (for writing JSON files)."""
    if true_ious is None:
        true_ious = true_mask_ious(dets, coco_gt)
    scores = scorings(dets.cls_scores, dets.pred_ious, true_ious)
    out: dict[str, Any] = {"segm": {}, "bbox": {}, "results": {}}
    for iou_type in ("segm", "bbox"):
        for name in SCORINGS:
            res = coco_results(dets, scores[name], iou_type)
            out[iou_type][name] = coco_ap(coco_gt, res, iou_type, backend)
            out["results"][f"{iou_type}_{name}"] = res
    return out
