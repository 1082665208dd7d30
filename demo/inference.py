"""The demo's logic without any UI: run a model once, then draw both scorings and the table.

``run_detection`` = :func:`predict` (the model, once per image) + :func:`render` (cheap, once
per threshold). Everything here takes and returns numpy arrays and plain Python values, so tests
call it directly and the Gradio app is a thin layer over it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from demo.images import ImageSource, load_image
from maskiou.evaluation.predict import encode_masks

MASK_THRESHOLD = 0.5  # mask probability -> binary mask, as in COCO evaluation
TABLE_HEADERS = ["class", "classification score", "predicted MaskIoU", "rescored score",
                 "rank (classification)", "rank (rescored)", "true MaskIoU", "shown"]
PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
           "#bfef45", "#fabed4", "#469990", "#dcbeff", "#9a6324", "#fffac8", "#800000",
           "#aaffc3", "#808000", "#ffd8b1", "#000075", "#a9a9a9", "#ffe119"]

Annotated = tuple[np.ndarray, list[tuple[np.ndarray, str]]]
ColorMaps = tuple[dict[str, str], dict[str, str]]


def default_device() -> torch.device:
    """The GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Predictor:
    """A detection model with its class names, a device and a lock (one forward at a time).

    Args:
        model: called as ``model([Tensor[3, H, W] float in [0, 1]])``; returns a list with one
            dict: boxes Tensor[n, 4], labels Tensor[n], scores Tensor[n] (rescored when the
            model has the MaskIoU head), masks Tensor[n, 1, H, W] probabilities, and, with the
            head, cls_scores and mask_ious Tensor[n].
        class_names: index 0 is the background.
    """

    def __init__(self, model: Any, class_names: list[str], device: str | torch.device | None = None,
                 source: str = "") -> None:
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device).eval() if isinstance(model, torch.nn.Module) else model
        self.class_names = list(class_names)
        self.source = source
        self.lock = threading.Lock()

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device | None = None
                        ) -> Predictor:
        """Load a ``maskiou-train`` checkpoint (raises ``CheckpointError`` with one line)."""
        from maskiou.training.models import load_trained_model

        device = torch.device(device) if device is not None else default_device()
        model, meta = load_trained_model(path, device)
        return cls(model, meta["class_names"], device, source=str(path))

    @torch.inference_mode()
    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """image: UInt8[H, W, 3]. Returns numpy arrays: boxes [n, 4], labels [n], cls_scores [n],
        mask_ious [n], scores [n] (rescored), masks Bool[n, H, W]; ``has_head`` says whether
        mask_ious came from a MaskIoU head (else they are all 1)."""
        tensor = torch.from_numpy(np.array(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        tensor = tensor.to(self.device)
        with self.lock:
            out = self.model([tensor])[0]
        n = len(out["boxes"])
        has_head = "mask_ious" in out
        cls_scores = out.get("cls_scores", out["scores"])
        return {
            "boxes": out["boxes"].float().cpu().numpy().reshape(n, 4),
            "labels": out["labels"].cpu().numpy().astype(np.int64),
            "cls_scores": cls_scores.float().cpu().numpy(),
            "mask_ious": out["mask_ious"].float().cpu().numpy() if has_head else np.ones(n),
            "scores": out["scores"].float().cpu().numpy(),
            "masks": (out["masks"][:, 0] > MASK_THRESHOLD).cpu().numpy(),
            "has_head": np.array(has_head),
        }


@dataclass
class GroundTruth:
    """The GT instances of one image: masks UInt8/Bool[K, H, W], labels Int[K] (1..C),
    class_names with the background at 0 (matched to the model's classes by name)."""

    masks: np.ndarray
    labels: np.ndarray
    class_names: list[str]


@dataclass
class Prediction:
    """One image's detections, kept compact (RLE masks) between threshold changes.

    Arrays are [n], in the model's order; ``true_ious`` is None without ground truth.
    """

    image: np.ndarray  # UInt8[H, W, 3]
    class_names: list[str]
    labels: np.ndarray
    cls_scores: np.ndarray
    mask_ious: np.ndarray
    scores: np.ndarray  # rescored: cls x predicted MaskIoU
    rles: list[dict[str, Any]]
    true_ious: np.ndarray | None = None
    has_head: bool = True
    notes: list[str] = field(default_factory=list)
    caption: str = ""  # where it came from (model, image), for the page

    def __len__(self) -> int:
        return len(self.labels)

    def class_name(self, label: int) -> str:
        return self.class_names[label] if 0 <= label < len(self.class_names) else f"class {label}"


def ranks(scores: np.ndarray) -> np.ndarray:
    """1-based rank of each score, highest first; ties keep the input order. Int[n]."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    out = np.empty(len(order), dtype=np.int64)
    out[order] = np.arange(1, len(order) + 1)
    return out


def true_mask_ious(rles: list[dict[str, Any]], labels: np.ndarray, class_names: list[str],
                   gt: GroundTruth) -> np.ndarray:
    """Best mask IoU of each detection with a GT instance of the same class (0 if none).

    Same rule as :func:`maskiou.evaluation.true_mask_ious`, for one image whose GT is given as
    masks rather than a COCO object. Classes are matched by name. Returns Float[n].
    """
    out = np.zeros(len(rles))
    if not rles or len(gt.labels) == 0:
        return out
    gt_rles = encode_masks(torch.as_tensor(np.asarray(gt.masks, dtype=bool)))
    gt_names = np.array([gt.class_names[int(x)] for x in gt.labels])
    names = [class_names[int(x)] if int(x) < len(class_names) else "" for x in labels]
    for name in set(names):
        sel = [i for i, x in enumerate(names) if x == name]
        cols = np.where(gt_names == name)[0]
        if not len(cols):
            continue
        ious = mask_utils.iou([rles[i] for i in sel], [gt_rles[j] for j in cols],
                              [0] * len(cols))
        out[sel] = np.asarray(ious).reshape(len(sel), len(cols)).max(axis=1)
    return out


def predict(image: ImageSource, predictor: Predictor, ground_truth: GroundTruth | None = None
            ) -> Prediction:
    """Run the model once on ``image`` (see :func:`demo.images.load_image` for what is accepted;
    raises ``ImageInputError`` for what is not)."""
    loaded = load_image(image)
    out = predictor(loaded.array)
    rles = encode_masks(torch.from_numpy(out["masks"]))
    pred = Prediction(loaded.array, predictor.class_names, out["labels"], out["cls_scores"],
                      out["mask_ious"], out["scores"], rles, has_head=bool(out["has_head"]),
                      notes=list(loaded.notes))
    if ground_truth is not None:
        if ground_truth.masks.shape[1:] != loaded.array.shape[:2]:
            pred.notes.append("ground truth not used: its size differs from the image's")
        else:
            pred.true_ious = true_mask_ious(rles, pred.labels, pred.class_names, ground_truth)
    if not pred.has_head:
        pred.notes.append("this model has no MaskIoU head: both sides use the "
                          "classification score")
    return pred


def _annotations(pred: Prediction, idx: np.ndarray, scores: np.ndarray
                 ) -> tuple[list[tuple[np.ndarray, str]], dict[str, str]]:
    anns, colors, cls_rank = [], {}, ranks(pred.cls_scores)
    for i in idx:
        # the number (= rank by classification, as in the table) keeps labels unique
        label = f"{pred.class_name(int(pred.labels[i]))} {scores[i]:.2f} (#{cls_rank[i]})"
        mask = mask_utils.decode(pred.rles[i]).astype(np.float32)
        anns.append((mask, label))
        colors[label] = PALETTE[(cls_rank[i] - 1) % len(PALETTE)]
    return anns, colors


def render(pred: Prediction, threshold: float
           ) -> tuple[Annotated, Annotated, list[list[Any]], ColorMaps]:
    """Draw both scorings at ``threshold`` and build the per-instance table.

    Returns:
        left: (image, [(mask Float[H, W] in {0, 1}, "ring 0.91 (#1)"), ...]) with the detections
            whose classification score is >= threshold, highest first (#k: the detection's
            rank by classification score, as in the table);
        right: the same with the rescored score (cls x predicted MaskIoU);
        rows: one per detection shown on the left, by classification rank, with the columns
            of :data:`TABLE_HEADERS` (scores rounded to 3 decimals, ranks among all detections
            of the image, true MaskIoU None without ground truth);
        colors: (left, right) label -> colour maps; a detection has the same colour on both
            sides.
    """
    cls, rescored = pred.cls_scores, pred.scores
    rank_cls, rank_new = ranks(cls), ranks(rescored)
    left_idx = np.argsort(-cls, kind="stable")
    left_idx = left_idx[cls[left_idx] >= threshold]
    right_idx = np.argsort(-rescored, kind="stable")
    right_idx = right_idx[rescored[right_idx] >= threshold]
    left_anns, left_colors = _annotations(pred, left_idx, cls)
    right_anns, right_colors = _annotations(pred, right_idx, rescored)
    shown_right = set(right_idx.tolist())
    rows = []
    for i in left_idx:
        true = None if pred.true_ious is None else round(float(pred.true_ious[i]), 3)
        rows.append([pred.class_name(int(pred.labels[i])), round(float(cls[i]), 3),
                     round(float(pred.mask_ious[i]), 3), round(float(rescored[i]), 3),
                     int(rank_cls[i]), int(rank_new[i]), true,
                     "both" if i in shown_right else "left only"])
    return (pred.image, left_anns), (pred.image, right_anns), rows, (left_colors, right_colors)


def run_detection(image: ImageSource, threshold: float, predictor: Predictor,
                  ground_truth: GroundTruth | None = None
                  ) -> tuple[Annotated, Annotated, list[list[Any]]]:
    """Detect once and render both scorings: ``(left, right, table_rows)`` as in :func:`render`.

    Raises:
        ImageInputError: ``image`` is not a usable image (one line saying why).
    """
    left, right, rows, _ = render(predict(image, predictor, ground_truth), threshold)
    return left, right, rows
