"""The demo's logic without any UI: run a model once, then draw every scoring and the table.

``predict`` runs the model (once per image and model); ``render`` is cheap and runs again for a
new threshold, scoring order or ground-truth toggle. Everything here takes and returns numpy
arrays, pandas frames and plain values, so tests call it directly and the Gradio app is a thin
layer over it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pycocotools import mask as mask_utils

from demo.draw import DROPPED_COLOR, Shape, color, draw
from demo.images import ImageSource, load_image
from maskiou.attach import find_maskiou_head
from maskiou.configs import TARGET_NAMES
from maskiou.evaluation.metrics import scorings
from maskiou.evaluation.predict import predictor
from maskiou.keep import stored_thresholds
from maskiou.records import encode_masks
from maskiou.scoring import maskness

MASK_THRESHOLD = 0.5  # mask probability -> binary mask, as in COCO evaluation
PANELS = {"cls": "classification score (Mask R-CNN)",
          "maskness": "cls × maskness (free)",
          "rescored": "cls × the head's output",
          "final": "final score: what the model returns",
          "oracle": "cls × true MaskIoU (oracle)"}
SCORE_COLUMNS = {"cls": "cls score", "maskness": "maskness", "final": "final score",
                 "oracle": "true MaskIoU"}


def default_device() -> torch.device:
    """The GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Predictor:
    """A detection model with its class names, a device and a lock (one forward at a time).

    Args:
        model: a detector run through its adapter's ``predict`` (an ``nn.Module``), or any
            callable: ``model([Tensor[3, H, W] float in [0, 1]])`` returns a list with one
            dict: boxes Tensor[n, 4], labels Tensor[n], scores Tensor[n], masks
            Tensor[n, 1, H, W] probabilities, and, with the MaskIoU head, cls_scores,
            mask_quality and maskness Tensor[n].
        class_names: index 0 is the background.
        kind: ``"plain"`` (no head) or ``"add-on"``/``"end to end"``, for the page.
    """

    def __init__(self, model: Any, class_names: list[str], device: str | torch.device | None = None,
                 source: str = "", kind: str = "") -> None:
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device).eval() if isinstance(model, torch.nn.Module) else model
        self.class_names = list(class_names)
        self.source = source
        self.kind = kind
        self.lock = threading.Lock()

    @property
    def model(self) -> Any:
        return self._model

    @model.setter
    def model(self, model: Any) -> None:
        """The model, and how to run it: through its adapter's ``predict`` (found once here,
        not on every image) for an ``nn.Module``, else called as it is."""
        self._model = model
        self._run = predictor(model) if isinstance(model, torch.nn.Module) else model

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device | None = None
                        ) -> Predictor:
        """Load any maskiou checkpoint (raises ``CheckpointError`` with one line)."""
        from maskiou.models.load import load_trained_model, model_kind

        device = torch.device(device) if device is not None else default_device()
        model, meta = load_trained_model(path, device)
        return cls(model, meta["class_names"], device, source=str(path), kind=model_kind(meta))

    @torch.inference_mode()
    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """image: UInt8[H, W, 3]. Returns numpy arrays: boxes [n, 4], labels [n], cls_scores
        [n], maskness [n], mask_quality [n] and scores [n] (the head's output and the final
        score the model returns; None without a head), kept Bool[n] (whether the final score
        reaches its class's stored threshold, :func:`maskiou.kept`; None without a head),
        masks Bool[n, H, W]."""
        tensor = torch.from_numpy(np.array(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        with self.lock:
            out = self._run([tensor.to(self.device)])[0]
        n = len(out["boxes"])
        probs = out["masks"][:, 0].float()
        mk = out["maskness"] if "maskness" in out else maskness(probs, MASK_THRESHOLD)
        return {
            "boxes": out["boxes"].float().cpu().numpy().reshape(n, 4),
            "labels": out["labels"].cpu().numpy().astype(np.int64),
            "cls_scores": out.get("cls_scores", out["scores"]).float().cpu().numpy(),
            "maskness": mk.float().cpu().numpy(),
            "mask_quality": head_field(out, "mask_quality"),
            "scores": head_field(out, "scores"),
            "kept": self.kept(out),
            "masks": (probs > MASK_THRESHOLD).cpu().numpy(),
        }

    def kept(self, out: dict[str, torch.Tensor]) -> np.ndarray | None:
        """Bool[n]: the detections of one output whose final score reaches its label's
        threshold stored in the model's head (all of them where none was fitted); None for a
        model without the head."""
        thresholds = (stored_thresholds(self.model) if isinstance(self.model, torch.nn.Module)
                      else None)
        if thresholds is None or "mask_quality" not in out:
            return None
        labels = out["labels"].to(thresholds.device).long()
        return (out["scores"].to(thresholds) >= thresholds[labels]).cpu().numpy()

    @property
    def target(self) -> str:
        """What the head's output estimates (its ``target``: ``"iou"`` or ``"coco"``)."""
        head = find_maskiou_head(self.model) if isinstance(self.model, torch.nn.Module) else None
        return getattr(head, "target", "iou")


def head_field(out: dict[str, torch.Tensor], name: str) -> np.ndarray | None:
    """A field a model with the head returns (``scores`` then being the final score), as numpy;
    None for a model without the head."""
    if "mask_quality" not in out:
        return None
    return out[name].float().cpu().numpy()


@dataclass
class GroundTruth:
    """The GT instances of one image: masks UInt8/Bool[K, H, W], labels Int[K] (1..C),
    class_names with the background at 0 (matched to the model's classes by name)."""

    masks: np.ndarray
    labels: np.ndarray
    class_names: list[str]


@dataclass
class Prediction:
    """One image's detections, kept compact (RLE masks) between redraws. Arrays are [n], in the
    model's order; ``mask_quality`` (the head's output), ``final_scores`` (the score the
    model returns) and ``kept`` (Bool[n]: the masks worth keeping, by the thresholds stored in
    the model) are None without a head, ``true_ious`` without ground truth; ``target`` says
    what the head's output estimates."""

    image: np.ndarray  # UInt8[H, W, 3]
    class_names: list[str]
    labels: np.ndarray
    boxes: np.ndarray
    cls_scores: np.ndarray
    maskness: np.ndarray
    mask_quality: np.ndarray | None
    rles: list[dict[str, Any]]
    final_scores: np.ndarray | None = None
    target: str = "iou"
    true_ious: np.ndarray | None = None
    ground_truth: GroundTruth | None = None
    notes: list[str] = field(default_factory=list)
    caption: str = ""
    kept: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def class_name(self, label: int) -> str:
        return self.class_names[label] if 0 <= label < len(self.class_names) else f"class {label}"

    def scores(self) -> dict[str, np.ndarray]:
        """Every scoring this prediction has: cls and maskness always, rescored (cls x the
        head's output) and final (the score the model returns) with a head, oracle with ground
        truth; in :data:`PANELS` order."""
        true = self.true_ious if self.true_ious is not None else np.zeros(len(self))
        out = scorings(self.cls_scores, self.mask_quality, self.maskness, true)
        if self.final_scores is not None:
            out["final"] = np.asarray(self.final_scores, dtype=np.float64)
        if self.true_ious is None:
            out.pop("oracle")
        return {k: out[k] for k in PANELS if k in out}

    @property
    def head_name(self) -> str:
        """What the head's output column is called (by the head's target)."""
        return TARGET_NAMES[self.target]


def ranks(scores: np.ndarray) -> np.ndarray:
    """1-based rank of each score, highest first; ties keep the input order. Int[n]."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    out = np.empty(len(order), dtype=np.int64)
    out[order] = np.arange(1, len(order) + 1)
    return out


def true_mask_ious(rles: list[dict[str, Any]], labels: np.ndarray, class_names: list[str],
                   gt: GroundTruth) -> np.ndarray:
    """Best mask IoU of each detection with a GT instance of the same class (0 if none).

    Same rule as :func:`maskiou.evaluation.cocoeval.true_mask_ious`, for one image whose GT is
    given as masks rather than a COCO object. Classes are matched by name. Returns Float[n].
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
    pred = Prediction(loaded.array, predictor.class_names, out["labels"], out["boxes"],
                      out["cls_scores"], out["maskness"], out["mask_quality"], rles,
                      final_scores=out["scores"], target=predictor.target,
                      notes=list(loaded.notes), kept=out.get("kept"))
    if ground_truth is not None:
        if ground_truth.masks.shape[1:] != loaded.array.shape[:2]:
            pred.notes.append("ground truth not used: its size differs from the image's")
        elif [n for n in ground_truth.class_names] != pred.class_names:
            pred.notes.append("ground truth not used: the model's classes are not the "
                              "dataset's")
        else:
            pred.ground_truth = ground_truth
            pred.true_ious = true_mask_ious(rles, pred.labels, pred.class_names, ground_truth)
    if pred.mask_quality is None:
        pred.notes.append("this model has no MaskIoU head: classification score and maskness "
                          "only (load an add-on checkpoint for the head's scores)")
    return pred


def panel(pred: Prediction, scoring: str, threshold: float, show_gt: bool = False,
          only_kept: bool = False) -> np.ndarray:
    """The image with the detections whose ``scoring`` score is >= ``threshold``, labelled
    ``#k class cls→score`` (k: the detection's number in the table), best on top. Where the
    model has stored thresholds (``pred.kept``), a detection they drop is drawn dimmed (grey,
    its label ending in "dropped"); with ``only_kept`` it is not drawn at all."""
    scores = pred.scores()[scoring]
    shapes = []
    if show_gt and pred.ground_truth is not None:
        for m in pred.ground_truth.masks:
            shapes.append(Shape(np.asarray(m, bool), (0, 0, 0, 0), "#ffffff", "", True))
    for i in np.argsort(scores, kind="stable"):  # lowest first: the best is drawn on top
        dropped = pred.kept is not None and not bool(pred.kept[i])
        if scores[i] < threshold or (dropped and only_kept):
            continue
        text = f"#{i + 1} {pred.class_name(int(pred.labels[i]))} "
        text += f"{scores[i]:.2f}" if scoring == "cls" else \
            f"{pred.cls_scores[i]:.2f}→{scores[i]:.2f}"
        shapes.append(Shape(mask_utils.decode(pred.rles[i]).astype(bool),
                            tuple(pred.boxes[i]), DROPPED_COLOR if dropped else color(i),
                            text + " dropped" if dropped else text, dimmed=dropped))
    return draw(pred.image, shapes)


def table(pred: Prediction, order_by: str = "final") -> pd.DataFrame:
    """One row per detection: its number, class, every score it has (the final score the model
    returns among them), its rank under every scoring, and how far the final score moves it
    against the classification score; sorted by the rank under ``order_by`` (or the
    classification score where that scoring is missing)."""
    scores = pred.scores()
    order_by = order_by if order_by in scores else "cls"
    df = pd.DataFrame({"#": np.arange(1, len(pred) + 1),
                       "class": [pred.class_name(int(x)) for x in pred.labels],
                       "cls score": pred.cls_scores.round(3),
                       "maskness": pred.maskness.round(3)})
    if pred.mask_quality is not None:
        df[pred.head_name] = pred.mask_quality.round(3)
    if pred.final_scores is not None:
        df["final score"] = np.asarray(pred.final_scores).round(3)
    if pred.true_ious is not None:
        df["true MaskIoU"] = pred.true_ious.round(3)
    if pred.kept is not None:  # the masks worth keeping, by the model's stored thresholds
        df["kept"] = np.where(pred.kept, "kept", "dropped")
    for name, s in scores.items():
        df[f"rank: {name}"] = ranks(s)
    if "final" in scores:
        df["move"] = df["rank: cls"] - df["rank: final"]  # > 0: the final score moves it up
    return df.sort_values(f"rank: {order_by}", kind="stable").reset_index(drop=True)


def style_moves(df: pd.DataFrame) -> Any:
    """The table with the rows whose rank the learned score changes highlighted."""
    def row_style(row: pd.Series) -> list[str]:
        move = row.get("move", 0)
        tint = "background-color: #d8f5d0" if move > 0 else (
            "background-color: #fbd9d3" if move < 0 else "")
        return [tint] * len(row)

    return df.style.apply(row_style, axis=1).format(precision=3)


def iou_plot(pred: Prediction) -> np.ndarray | None:
    """The head's output (and maskness) against the true MaskIoU of this image's detections,
    numbered as in the table: the benchmark's correlation plot for one image. None without
    ground truth."""
    if pred.true_ious is None or len(pred) == 0:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.6, 3.4), dpi=100)
    ax.plot([0, 1], [0, 1], color="gray", ls=":", lw=1)
    if pred.mask_quality is not None:
        ax.scatter(pred.true_ious, pred.mask_quality, s=28,
                   c=[color(i) for i in range(len(pred))], edgecolors="k", linewidths=0.5,
                   label=pred.head_name, zorder=3)
        for i, (x, y) in enumerate(zip(pred.true_ious, pred.mask_quality)):
            ax.annotate(str(i + 1), (x, y), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.scatter(pred.true_ious, pred.maskness, s=14, marker="x", c="gray", label="maskness")
    ax.set(xlim=(-0.03, 1.03), ylim=(-0.03, 1.03), xlabel="true MaskIoU",
           ylabel="score", title="this image")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.canvas.draw()
    out = np.asarray(fig.canvas.buffer_rgba())[:, :, :3].copy()
    plt.close(fig)
    return out


def rank_changes(pred: Prediction) -> int:
    """How many detections the final score ranks differently from the classification score
    (0 without a head)."""
    s = pred.scores()
    if "final" not in s:
        return 0
    return int((ranks(s["cls"]) != ranks(s["final"])).sum())
