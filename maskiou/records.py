"""Per-detection records that the add-on and the evaluation both use: a detection kept as a
compact record (an RLE mask, not a pixel array), its true MaskIoU against the best GT of its
class, and the content fingerprints that say which images a fit has seen.

Below ``maskiou.addon`` and ``maskiou.evaluation``; imports only the core (and numpy,
pycocotools).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from maskiou.scoring import maskness

AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@dataclass
class Detections:
    """All detections of a dataset split, flattened: arrays of length N (RLEs a list).

    ``cls_scores``: the detector's class confidence; ``pred_ious``: the head's output, the
    model's ``mask_quality`` (1 for a model without a head); ``maskness``:
    :func:`maskiou.maskness` of each mask; ``labels``: the model's contiguous labels
    (``category_ids`` are the dataset's ids); ``rel_areas``: box area / image area;
    ``scores``: the score the model returned (its final score; the class confidence for a model
    without a head).
    """

    image_ids: np.ndarray
    category_ids: np.ndarray
    boxes_xywh: np.ndarray  # [N, 4]
    rles: list[dict[str, Any]]
    cls_scores: np.ndarray
    pred_ious: np.ndarray
    maskness: np.ndarray
    labels: np.ndarray
    rel_areas: np.ndarray
    scores: np.ndarray

    ARRAYS = ("image_ids", "category_ids", "boxes_xywh", "cls_scores", "pred_ious", "maskness",
              "labels", "rel_areas", "scores")

    def __len__(self) -> int:
        return len(self.image_ids)

    @staticmethod
    def empty() -> Detections:
        return Detections(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4)), [],
                          np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0, np.int64),
                          np.zeros(0), np.zeros(0))

    @staticmethod
    def concat(parts: list[Detections]) -> Detections:
        if not parts:
            return Detections.empty()
        arrays = {k: np.concatenate([getattr(p, k) for p in parts]) for k in Detections.ARRAYS}
        arrays["boxes_xywh"] = arrays["boxes_xywh"].reshape(-1, 4)
        return Detections(rles=[r for p in parts for r in p.rles], **arrays)

    def subset(self, index: np.ndarray) -> Detections:
        """The detections at ``index`` (an int array or a boolean mask)."""
        index = np.flatnonzero(index) if np.asarray(index).dtype == bool else np.asarray(index)
        arrays = {k: getattr(self, k)[index] for k in Detections.ARRAYS}
        return Detections(rles=[self.rles[int(i)] for i in index], **arrays)


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
            probabilities, ``cls_scores``, ``mask_quality`` and ``maskness`` Tensor[n]. A model
            without the head has only ``scores``: the head's output is then taken as 1 and the
            maskness is computed from the pasted masks (the same quantity up to resampling).
            ``scores`` (the model's final score) is kept as it is.
    """
    n = len(output["boxes"])
    boxes = output["boxes"].detach().float().cpu().numpy().reshape(n, 4)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    cls = output.get("cls_scores", output["scores"]).detach().float().cpu().numpy()
    pred = output["mask_quality"].detach().float().cpu().numpy() if "mask_quality" in output \
        else np.ones(n)
    probs = output["masks"][:, 0]
    mk = output["maskness"] if "maskness" in output else maskness(probs, mask_threshold)
    labels = output["labels"].cpu().numpy().astype(np.int64)
    height, width = probs.shape[-2:]
    return Detections(
        np.full(n, image_id, dtype=np.int64),
        np.array([label_to_cat_id[int(x)] for x in labels], dtype=np.int64),
        xywh, encode_masks(probs > mask_threshold), cls, pred,
        mk.detach().float().cpu().numpy(), labels,
        (xywh[:, 2] * xywh[:, 3]) / float(height * width),
        output["scores"].detach().float().cpu().numpy(),
    )


def mask_iou_groups(dets: Detections, coco_gt: Any,
                    windows: dict[int, tuple[int, int, int, int]] | None = None
                    ) -> list[tuple[np.ndarray, np.ndarray]]:
    """The mask IoU of each detection with each non-crowd GT instance of its category in its
    image, one group per (image, category) that has both: ``(indices of the group's detections
    Int[n] into dets, IoU Float[n, g])``. One pycocotools call per group. The true MaskIoU
    (:func:`true_mask_ious`) and the COCO-style matching of LaECE and LRP both read these.

    ``windows``: ``{image id: (x0, y0, x1, y1)}``, the part of an image a detector saw (a crop):
    that image's GT masks are cut to it first, so a detection is judged against what was
    visible."""
    groups = []
    windows = windows or {}
    keys = np.stack([dets.image_ids, dets.category_ids], 1) if len(dets) else np.zeros((0, 2))
    for image_id, cat_id in sorted({tuple(k) for k in keys.tolist()}):
        sel = np.where((dets.image_ids == image_id) & (dets.category_ids == cat_id))[0]
        ann_ids = coco_gt.getAnnIds(imgIds=[int(image_id)], catIds=[int(cat_id)], iscrowd=False)
        anns = coco_gt.loadAnns(ann_ids)
        if not anns:
            continue
        gts = [coco_gt.annToRLE(a) for a in anns]
        if int(image_id) in windows:
            gts = [_cut(g, windows[int(image_id)]) for g in gts]
        ious = mask_utils.iou([dets.rles[i] for i in sel], gts, [0] * len(gts))
        groups.append((sel, np.asarray(ious, dtype=np.float64).reshape(len(sel), len(gts))))
    return groups


def true_mask_ious(dets: Detections, coco_gt: Any,
                   windows: dict[int, tuple[int, int, int, int]] | None = None,
                   groups: list[tuple[np.ndarray, np.ndarray]] | None = None) -> np.ndarray:
    """For each detection, the best mask IoU with a non-crowd GT instance of its category in its
    image (0 when there is none): the row maxima of :func:`mask_iou_groups` (``groups``, when
    they are already computed; ``windows`` as there)."""
    out = np.zeros(len(dets))
    for sel, ious in groups if groups is not None else mask_iou_groups(dets, coco_gt, windows):
        out[sel] = ious.max(axis=1)
    return out


def _cut(rle: dict[str, Any], window: tuple[int, int, int, int]) -> dict[str, Any]:
    """An RLE mask cut to the box ``window`` = (x0, y0, x1, y1) (zero outside it)."""
    h, w = rle["size"]
    x0, y0, x1, y1 = window
    box = mask_utils.frPyObjects(np.array([[x0, y0, x1 - x0, y1 - y0]], np.float64), h, w)[0]
    return mask_utils.merge([rle, box], intersect=True)


def file_sha1(path: str | Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def image_fingerprints(dataset: Any, indices: list[int] | None = None) -> dict[str, int]:
    """``{sha1 of the image file: image id}`` of a :class:`CocoInstanceDataset`: the images a
    head or a recalibration was fitted on, recognised again whatever their ids or names."""
    indices = list(range(len(dataset))) if indices is None else indices
    prints = {}
    for i in indices:
        path, image_id = dataset.image_path(i), int(dataset.image_ids[i])
        try:
            prints[file_sha1(path)] = image_id
        except OSError as e:  # one line naming the file and the image id
            raise FileNotFoundError(f"{path}: image file not found or unreadable (image id "
                                    f"{image_id}): {e.strerror or e}") from None
    return prints


def coco_ap(coco_gt: Any, results: list[dict[str, Any]], iou_type: str,
            backend: str = "pycocotools", image_ids: list[int] | None = None
            ) -> dict[str, float]:
    """AP, AP50, AP75, APs, APm, APl in percent (pycocotools' stats x 100; -1 where the split
    has no GT of that size), over ``image_ids`` (default: every image of ``coco_gt``)."""
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
        if image_ids is not None:
            ev.params.imgIds = sorted(int(i) for i in image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # -1 (no GT in that area range) stays -1, as pycocotools reports it
    return {k: round(float(v) * 100, 3) if v >= 0 else -1.0 for k, v in zip(AP_KEYS, ev.stats[:6])}


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
