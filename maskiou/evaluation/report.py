"""Benchmark output for people and machines: Markdown tables, metrics.json, PNG plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from maskiou.records import AP_KEYS

from .metrics import SCORINGS, binned_means

SCORING_TITLES = {
    "cls": "classification score (the detector's)",
    "maskness": "cls x maskness (free: SOLOv2, Mask2Former)",
    "rescored": "cls x the head's output (MS R-CNN rescoring)",
    "recalibrated": "recalibrated: what the model returns (cls, head, maskness, box size, "
                    "uncontested; weights searched for AP)",
    "oracle": "cls x true MaskIoU (oracle, paper table 7)",
}
MODEL_TITLES = {"plain": "plain detector (the one the user has)",
                "addon": "+ MaskIoU head trained alone (add-on)",
                "model": "the model", "baseline": "Mask R-CNN trained without the head",
                "end_to_end": "Mask Scoring R-CNN trained end to end"}
LEARNED = ("rescored", "recalibrated")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if np.isnan(v) else f"{v:.1f}"
    return str(v)


def best_learned(rows: dict[str, Any]) -> str | None:
    """The learned scoring with the highest mask AP (None for a model without the head)."""
    learned = [n for n in LEARNED if n in rows]
    return max(learned, key=lambda n: rows[n]["AP"]) if learned else None


def ap_table(metrics: dict[str, Any], iou_type: str) -> str:
    """Markdown table of every scoring for ``iou_type`` ("segm" or "bbox"), then the change of
    the best learned scoring against the free maskness and against the classification score."""
    rows = metrics[iou_type]
    lines = ["| scoring | " + " | ".join(AP_KEYS) + " |", "|" + "---|" * (len(AP_KEYS) + 1)]
    for name in SCORINGS:
        if name in rows:
            lines.append(f"| {SCORING_TITLES[name]} | " +
                         " | ".join(_fmt(rows[name][k]) for k in AP_KEYS) + " |")
    best = best_learned(rows)
    if best:
        for ref in ("maskness", "cls"):
            d = {k: rows[best][k] - rows[ref][k] for k in AP_KEYS}
            lines.append(f"| change, {best} vs {ref} | " +
                         " | ".join(f"{d[k]:+.1f}" for k in AP_KEYS) + " |")
    return "\n".join(lines)


def calibration_table(metrics: dict[str, Any]) -> str:
    """Mask LaECE (TP threshold 0.1, and 0.5) and moLRP (0.5) of every scoring that has them
    (lower is better for all three), then the LRP-optimal threshold per class of the score the
    model returns."""
    rows = metrics["segm"]
    names = [n for n in SCORINGS if n in rows and "LaECE" in rows[n]]
    if not names:
        return ""
    lines = ["| scoring | LaECE (TP IoU 0.1) | LaECE (TP IoU 0.5) | moLRP |", "|---|---|---|---|"]
    for name in names:
        r = rows[name]
        lines.append(f"| {SCORING_TITLES[name]} | {_fmt3(r['LaECE'])} | {_fmt3(r['LaECE50'])} "
                     f"| {_fmt3(r['moLRP'])} |")
    scoring = metrics.get("model_scoring", "cls")
    thresholds = rows.get(scoring, {}).get("LRP_thresholds")
    if thresholds:
        shown = ", ".join(f"{c}: {'none kept' if t is None else f'{t:.3f}'}"
                          for c, t in thresholds.items())
        lines.append(f"\nLRP-optimal thresholds of `{scoring}` (keep a mask whose score is at "
                     f"least this), per category id: {shown}.")
    return "\n".join(lines)


def _fmt3(v: float) -> str:
    return "nan" if v is None or np.isnan(v) else f"{v:.3f}"


def comparison_table(metrics: dict[str, Any]) -> str:
    """Plain detector, add-on and end-to-end (and a plain baseline) side by side: mask AP and
    AP75 under each of the model's scorings, box AP with the classification score."""
    lines = ["| model | scoring | mask AP | mask AP75 | box AP (cls) |", "|---|---|---|---|---|"]
    models = metrics["models"]
    for name in ("plain", "baseline", "addon", "model", "end_to_end"):
        if name not in models:
            continue
        m = models["addon"] if name == "plain" else models[name]
        names = ["cls", "maskness"] if name in ("plain", "baseline") else \
            [n for n in ("rescored", "recalibrated") if n in m["segm"]] or ["cls", "maskness"]
        if name in ("model", "end_to_end"):
            names = [n for n in ("cls", "maskness", "rescored", "recalibrated") if n in m["segm"]]
        for scoring in names:
            s = m["segm"][scoring]
            lines.append(f"| {MODEL_TITLES[name]} | {scoring} | {s['AP']:.1f} | "
                         f"{s['AP75']:.1f} | {m['bbox']['cls']['AP']:.1f} |")
    return "\n".join(lines)


def correlation_table(corr: dict[str, float]) -> str:
    lines = ["| signal vs true MaskIoU | Pearson | Spearman | Pearson, matched "
             f"({100 * corr['matched_fraction']:.0f}% of detections) |", "|---|---|---|---|"]
    for name, title in (("head", "predicted MaskIoU (head; paper: 0.74)"),
                        ("maskness", "maskness"), ("cls", "classification score")):
        if f"{name}_pearson" in corr:
            lines.append(f"| {title} | {corr[name + '_pearson']:.3f} | "
                         f"{corr[name + '_spearman']:.3f} | "
                         f"{corr[name + '_pearson_matched']:.3f} |")
    eces = ", ".join(f"{k[4:]} {v:.3f}" for k, v in corr.items() if k.startswith("ece_"))
    lines.append(f"\nExpected calibration error of each final score against the true MaskIoU: "
                 f"{eces}.")
    return "\n".join(lines)


def cost_table(cost: dict[str, Any]) -> str:
    """The head's cost; the mask head's row only where the adapter declares ``cost`` (a
    framework without a mask head per RoI, YOLO-seg, has none to compare with)."""
    rows = [
        "| cost of the head | value |", "|---|---|",
        f"| MaskIoU head parameters | {cost['head_params'] / 1e6:.2f} M "
        f"({100 * cost['head_params'] / cost['model_params']:.1f}% of the model) |",
        f"| MaskIoU head GMACs per RoI | {cost['head_gmacs_per_roi']:.4f} |",
    ]
    if "mask_head_gmacs_per_roi" in cost:
        rows.append(f"| mask head GMACs per RoI | {cost['mask_head_gmacs_per_roi']:.4f} |")
    return "\n".join(rows)


def markdown_report(metrics: dict[str, Any]) -> str:
    main = metrics["models"][metrics["main_model"]]
    parts = [f"# MaskIoU rescoring: {metrics['num_images']} images, "
             f"{metrics['num_detections']} detections", "",
             f"Model: `{metrics['checkpoint']}`", "",
             "## Mask AP (segm) under each scoring", "", ap_table(metrics, "segm"), "",
             *_section("## Calibration and operating point of each score (masks)",
                       CALIBRATION_NOTE, calibration_table(metrics)),
             "## Box AP (bbox)", "", ap_table(metrics, "bbox"), "",
             "## Models side by side", "", comparison_table(metrics), "",
             "## Predicted vs true MaskIoU (top-100 detections per image)", "",
             correlation_table(metrics["correlation"])]
    if metrics.get("calibration"):
        cal = metrics["calibration"]
        final = ("; the final score, mapped per class, estimates precision x mean mask IoU "
                 "among the detections it scores alike (see below); its expected calibration "
                 "error against the head's is" if cal.get("class_map") else
                 ", and so does the final score: its expected calibration error against it is")
        parts += ["", "## The score the model returns", "",
                  f"`model(images)` returns `{metrics.get('model_scoring')}` in `scores`; the "
                  f"head's output (`mask_quality`) estimates the "
                  f"{TARGET_NAMES_TRUE[cal['target']]}{final} {cal['ece']:.3f} "
                  "(reliability.png)."]
        if cal.get("laece_bins"):
            parts += ["", "Its reliability against precision x mean mask IoU (LaECE's target, "
                      "all classes pooled, TP at mask IoU 0.1; reliability.png):", "",
                      "| score bin mean | precision x IoU | detections |", "|---|---|---|",
                      *(f"| {r['score']:.3f} | {r['truth']:.3f} | {r['count']} |"
                        for r in cal["laece_bins"])]
    if metrics.get("keep"):
        k = metrics["keep"]
        parts += ["", "## The masks worth keeping", "",
                  "mLRP (lower is better; TP at mask IoU 0.5, mean over classes) of the masks "
                  "kept by: the thresholds stored in the model (LRP-optimal on the add-on's "
                  f"held-out images) {k['stored']:.3f}; the thresholds best on these images "
                  f"{k['optimal']:.3f}; final score >= 0.5 {k['final_0.5']:.3f}; class score "
                  f">= 0.5 {k['cls_0.5']:.3f}. `maskiou.kept(model(images), model)` keeps them."]
    if "cost" in main:
        parts += ["", "## Cost", "", cost_table(main["cost"])]
    if "seconds" in metrics:
        parts += ["", "Seconds: " + ", ".join(f"{k} {v:.0f}"
                                              for k, v in metrics["seconds"].items())]
    return "\n".join(parts) + "\n"


CALIBRATION_NOTE = (
    "LaECE: the localisation-aware calibration error (Oksuz et al. 2023) of the score against "
    "precision x mean mask IoU, per class over 25 score bins, a detection a true positive when "
    "COCO's greedy matching gives it a GT at mask IoU >= 0.1 (the paper's) or 0.5; moLRP: the "
    "LRP error (Oksuz et al. 2021, TP at IoU 0.5) of each class at its best threshold, mean over "
    "classes. Lower is better; AP cannot see either.")


def _section(title: str, note: str, table: str) -> list[str]:
    return [title, "", note, "", table, ""] if table else []


def write_metrics(path: Path, metrics: dict[str, Any]) -> None:
    path.write_text(json.dumps(metrics, indent=2, allow_nan=True) + "\n")


def write_plots(out: Path, metrics: dict[str, Any], pred: np.ndarray | None, true: np.ndarray,
                scores: dict[str, np.ndarray]) -> None:
    """maskiou_correlation.png (figure 5, when there is a head), reliability.png (the final
    score's calibration against what it estimates) and score_vs_maskiou.png."""
    if pred is not None:
        plot_correlation(out / "maskiou_correlation.png", pred, true,
                         metrics["correlation"]["head_pearson"])
    if metrics.get("calibration"):
        plot_reliability(out / "reliability.png", metrics["calibration"],
                         metrics.get("model_scoring", "final"))
    plot_score_vs_iou(out / "score_vs_maskiou.png", true,
                      {k: v for k, v in scores.items() if k != "oracle"})


def _figure(size: tuple[float, float]) -> tuple[Any, Any]:
    """A matplotlib figure of ``size`` inches at 120 dpi and its axes, made without pyplot: no
    backend is chosen or changed (the caller's, a notebook's included, stays as it was) and
    nothing is left open; ``savefig`` renders by the file's extension."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=120)
    return fig, fig.subplots()


def plot_correlation(path: Path, pred: np.ndarray, true: np.ndarray, pearson: float) -> None:
    """Paper figure 5: predicted vs true MaskIoU, as a density (hexbin) with the diagonal."""
    fig, ax = _figure((5, 5))
    if len(pred):
        hb = ax.hexbin(true, np.clip(pred, 0, 1), gridsize=30, extent=(0, 1, 0, 1), bins="log",
                       cmap="viridis", mincnt=1)
        fig.colorbar(hb, ax=ax, label="detections (log)")
    ax.plot([0, 1], [0, 1], "r--", lw=1)
    ax.set(xlabel="true MaskIoU (0: no GT of the class)", ylabel="predicted MaskIoU",
           xlim=(0, 1), ylim=(0, 1), title=f"Predicted vs true MaskIoU (Pearson {pearson:.2f})")
    fig.tight_layout()
    fig.savefig(path)


def plot_reliability(path: Path, calibration: dict[str, Any], scoring: str) -> None:
    """The reliability diagram of the score the model returns: per score bin, the mean of its
    head's target (with its ECE) and, where measured, precision x mean mask IoU (LaECE's
    target), against the diagonal."""
    what = TARGET_NAMES_TRUE[calibration["target"]]
    fig, ax = _figure((5, 5))
    ax.plot([0, 1], [0, 1], color="gray", ls=":", lw=1, label="perfectly calibrated")
    rows = calibration["bins"]
    ax.plot([r["score"] for r in rows], [r["truth"] for r in rows], "o-",
            label=f"{what} (ECE {calibration['ece']:.3f})")
    if calibration.get("laece_bins"):  # what the final score estimates once mapped per class
        rows = calibration["laece_bins"]
        ax.plot([r["score"] for r in rows], [r["truth"] for r in rows], "s-", ms=3,
                label="precision x mean mask IoU (LaECE's, TP at IoU 0.1)")
    ax.set(xlabel=f"final score ({scoring}: what the model returns)", ylabel="mean per bin",
           xlim=(0, 1), ylim=(0, 1), title="Reliability of the final score")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path)


TARGET_NAMES_TRUE = {"iou": "true MaskIoU", "coco": "true COCO-threshold share"}


def plot_score_vs_iou(path: Path, true: np.ndarray, scores: dict[str, np.ndarray]) -> None:
    """Paper figure 2c: mean score per true-MaskIoU bin, one line per scoring."""
    fig, ax = _figure((6, 4.5))
    ax.plot([0, 1], [0, 1], color="gray", ls=":", lw=1, label="ideal (score = MaskIoU)")
    centres, counts = None, None
    for name, score in scores.items():
        centres, means, counts = binned_means(true, score)
        ax.plot(centres, means, "o-", ms=3, label=SCORING_TITLES.get(name, name))
    if centres is not None:
        ax2 = ax.twinx()
        ax2.bar(centres, counts, width=0.08, alpha=0.15, color="k")
        ax2.set_ylabel("detections per bin")
    ax.set(xlabel="true MaskIoU", ylabel="mean score", xlim=(0, 1), ylim=(0, 1),
           title="Score vs mask quality")
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
