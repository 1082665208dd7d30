"""Benchmark output for people and machines: Markdown tables, metrics.json, PNG plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .cocoeval import AP_KEYS
from .metrics import SCORINGS, binned_means

SCORING_TITLES = {"cls": "Mask R-CNN (classification score)",
                  "rescored": "MS R-CNN (cls x predicted MaskIoU)",
                  "oracle": "MS R-CNN* (oracle MaskIoU)"}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if np.isnan(v) else f"{v:.1f}"
    return str(v)


def ap_table(metrics: dict[str, Any], iou_type: str) -> str:
    """Markdown table of the three scorings for ``iou_type`` ("segm" or "bbox"), with the
    change against the classification score."""
    rows = metrics[iou_type]
    head = "| scoring | " + " | ".join(AP_KEYS) + " |"
    lines = [head, "|" + "---|" * (len(AP_KEYS) + 1)]
    for name in SCORINGS:
        lines.append(f"| {SCORING_TITLES[name]} | " +
                     " | ".join(_fmt(rows[name][k]) for k in AP_KEYS) + " |")
    for name in ("rescored", "oracle"):
        d = {k: rows[name][k] - rows["cls"][k] for k in AP_KEYS}
        lines.append(f"| change, {name} vs cls | " +
                     " | ".join(f"{d[k]:+.1f}" for k in AP_KEYS) + " |")
    return "\n".join(lines)


def baseline_table(metrics: dict[str, Any]) -> str:
    """Paper table 1: plain Mask R-CNN vs MS R-CNN, mask and box AP. As in the paper, only
    masks are rescored: the MS R-CNN box AP uses the classification score."""
    b = metrics["baseline"]
    lines = ["| model | mask AP | mask AP50 | mask AP75 | box AP | box AP50 | box AP75 |",
             "|---|---|---|---|---|---|---|"]
    for title, segm, bbox in (("Mask R-CNN (trained without the head)", b["segm"], b["bbox"]),
                              ("MS R-CNN (masks rescored, boxes by cls score)",
                               metrics["segm"]["rescored"], metrics["bbox"]["cls"])):
        lines.append(f"| {title} | " + " | ".join(_fmt(segm[k]) for k in ("AP", "AP50", "AP75"))
                     + " | " + " | ".join(_fmt(bbox[k]) for k in ("AP", "AP50", "AP75")) + " |")
    return "\n".join(lines)


def correlation_table(corr: dict[str, float]) -> str:
    return "\n".join([
        "| quantity | value |", "|---|---|",
        f"| Pearson, predicted vs true MaskIoU (paper: 0.74) | {corr['pearson']:.3f} |",
        f"| Spearman, predicted vs true MaskIoU | {corr['spearman']:.3f} |",
        f"| Pearson, classification score vs true MaskIoU | {corr['cls_pearson']:.3f} |",
        f"| Pearson over detections that overlap a GT of their class "
        f"({100 * corr['matched_fraction']:.0f}% of them): predicted MaskIoU / classification "
        f"score | {corr['pearson_matched']:.3f} / {corr['cls_pearson_matched']:.3f} |",
        f"| ECE of the classification score vs true MaskIoU | {corr['ece_cls']:.3f} |",
        f"| ECE of the rescored score vs true MaskIoU | {corr['ece_rescored']:.3f} |",
    ])


def cost_table(cost: dict[str, Any]) -> str:
    return "\n".join([
        "| cost of the head | value |", "|---|---|",
        f"| MaskIoU head parameters | {cost['head_params'] / 1e6:.2f} M "
        f"({100 * cost['head_params'] / cost['model_params']:.1f}% of the model) |",
        f"| MaskIoU head GFLOPs per RoI | {cost['head_gflops_per_roi']:.3f} |",
        f"| mask head GFLOPs per RoI | {cost['mask_head_gflops_per_roi']:.3f} |",
    ])


def markdown_report(metrics: dict[str, Any]) -> str:
    parts = [f"# MaskIoU rescoring: {metrics['num_images']} images, "
             f"{metrics['num_detections']} detections", "",
             "## Mask AP (segm)", "", ap_table(metrics, "segm"), "",
             "## Box AP (bbox)", "", ap_table(metrics, "bbox"), "",
             "## Predicted vs true MaskIoU (top-100 detections per image)", "",
             correlation_table(metrics["correlation"])]
    if "baseline" in metrics:
        parts += ["", "## Same recipe without the head (paper table 1)", "",
                  baseline_table(metrics)]
    if "cost" in metrics:
        parts += ["", "## Cost", "", cost_table(metrics["cost"])]
    return "\n".join(parts) + "\n"


def write_metrics(path: Path, metrics: dict[str, Any]) -> None:
    path.write_text(json.dumps(metrics, indent=2, allow_nan=True) + "\n")


def plot_correlation(path: Path, pred: np.ndarray, true: np.ndarray, pearson: float) -> None:
    """Paper figure 5: predicted vs true MaskIoU, as a density (hexbin) with the diagonal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    if len(pred):
        hb = ax.hexbin(true, np.clip(pred, 0, 1), gridsize=30, extent=(0, 1, 0, 1), bins="log",
                       cmap="viridis", mincnt=1)
        fig.colorbar(hb, ax=ax, label="detections (log)")
    ax.plot([0, 1], [0, 1], "r--", lw=1)
    ax.set(xlabel="true MaskIoU", ylabel="predicted MaskIoU", xlim=(0, 1), ylim=(0, 1),
           title=f"Predicted vs true MaskIoU (Pearson {pearson:.2f})")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_score_vs_iou(path: Path, true: np.ndarray, cls: np.ndarray, rescored: np.ndarray
                      ) -> None:
    """Paper figure 2c: mean score per true-MaskIoU bin, for both scores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centres, m_cls, counts = binned_means(true, cls)
    _, m_res, _ = binned_means(true, rescored)
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    ax.plot([0, 1], [0, 1], color="gray", ls=":", lw=1, label="ideal (score = MaskIoU)")
    ax.plot(centres, m_cls, "o-", label="classification score (Mask R-CNN)")
    ax.plot(centres, m_res, "s-", label="cls x predicted MaskIoU (MS R-CNN)")
    ax2 = ax.twinx()
    ax2.bar(centres, counts, width=0.08, alpha=0.15, color="k")
    ax2.set_ylabel("detections per bin")
    ax.set(xlabel="true MaskIoU", ylabel="mean score", xlim=(0, 1), ylim=(0, 1),
           title="Score vs mask quality")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
