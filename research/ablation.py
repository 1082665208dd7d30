"""Ablation of the add-on's levers, each a row measured on the same frozen detector.

    python research/ablation.py                          # every row, embedded default
    python research/ablation.py --rows shipped no-flip   # some rows
    python research/ablation.py --detector plain.pt --train-json a.json --train-images a/ \\
        --val-json v.json --val-images v/                # any COCO-format dataset
    python research/ablation.py --curve --curve-sizes 250 500 \
        --curve-set crossfit_folds=5 zoom=both [--pretrain]   # the few-labels levers
    python research/ablation.py --columns embedded=a/ablation.json scenes=b/ablation.json

Each row trains a head alone on the cached detections of the add-on images (the same cache the
main job uses) and scores the cached detections of the validation split with it, so a row costs
only its head training. Prints a table; writes ablation.json and ablation.md to --output-dir.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from head_inputs import FEATURE_ROWS  # noqa: E402
from runs_table import print_columns, side_by_side  # noqa: E402

from maskiou.addon.collect import collect_samples  # noqa: E402
from maskiou.addon.fit import AddonConfig, predict_ious  # noqa: E402
from maskiou.addon.recalibration import detection_signals  # noqa: E402
from maskiou.addon.run import attach_to_detector, fit_addon  # noqa: E402
from maskiou.attach import find_maskiou_head  # noqa: E402
from maskiou.data.coco import CocoInstanceDataset  # noqa: E402
from maskiou.evaluation.benchmark import ADDON_IMAGES  # noqa: E402
from maskiou.evaluation.cocoeval import evaluate_detections  # noqa: E402
from maskiou.records import file_sha1  # noqa: E402

# name -> (what it tests, AddonConfig overrides, add-on images on the embedded data)
ROWS: dict[str, tuple[str, dict[str, Any], int]] = {
    "shipped": ("the shipped add-on (AddonConfig defaults)", {}, ADDON_IMAGES),
    "iou-target": ("regress the true MaskIoU itself (the paper) instead of the share of COCO "
                   "thresholds passed", {"target": "iou"}, ADDON_IMAGES),
    "no-rank-loss": ("no pairwise ranking loss", {"rank_weight": 0.0}, ADDON_IMAGES),
    "paper": ("the paper's recipe on detections: IoU target, L2 only, matched detections only "
              "(true MaskIoU > 0, table 6 tau = 0), no score inputs",
              {"target": "iou", "rank_weight": 0.0, "min_target": 0.0, "score_inputs": 0},
              ADDON_IMAGES),
    "all-detections-iou": ("IoU target and L2 only, on every detection (false positives: 0)",
                           {"target": "iou", "rank_weight": 0.0}, ADDON_IMAGES),
    "tau-0.5": ("only detections with true MaskIoU > 0.5 (table 6 tau = 0.5)",
                {"min_target": 0.5}, ADDON_IMAGES),
    "no-score-inputs": ("the head does not see the classification score and the maskness",
                        {"score_inputs": 0}, ADDON_IMAGES),
    "no-flip": ("no mirror images of the add-on images", {"flip": False}, ADDON_IMAGES),
    "rank-0.3": ("ranking-loss weight 0.3", {"rank_weight": 0.3}, ADDON_IMAGES),
    "bce": ("BCE on the target (sigmoid output)", {"loss": "bce"}, ADDON_IMAGES),
    "smooth-l1": ("smooth L1 loss", {"loss": "smooth_l1"}, ADDON_IMAGES),
    "mask-features": ("8 learned channels of the full 28 x 28 mask beside the max-pooled one",
                      {"mask_features": 8}, ADDON_IMAGES),
    "mask-logits": ("the mask's logits instead of its probabilities as the head's mask input",
                    {"mask_input": "logits"}, ADDON_IMAGES),
    "boundary-band": ("the predicted mask's boundary band as one more input channel",
                      {"boundary_band": True}, ADDON_IMAGES),
    "mask-head-features": ("the mask head's last-layer features (after its convolutions) "
                           "instead of the RoI features it starts from (the detector's mask "
                           "branch re-collected; see mask_head_features)", {}, ADDON_IMAGES),
    "context-features": ("beside the RoI features, those of the box enlarged twice around its "
                         "centre (what surrounds the detection: the object's parts outside the "
                         "box, its occluders; see context_features)", {}, ADDON_IMAGES),
    "image-pixels": ("beside the RoI features, the box's image pixels at the same 14 x 14 "
                     "(the object's edges at the image's resolution; see image_pixels)", {},
                     ADDON_IMAGES),
    "light": ("light head: 1x1 conv to 32, two 3x3 convs of 32, FC 256",
              {"reduce_channels": 32, "conv_channels": 32}, ADDON_IMAGES),
    "epochs-8": ("8 epochs instead of 12", {"epochs": 8}, ADDON_IMAGES),
    "no-holdout": ("no recalibration: the head trains on every add-on image",
                   {"recalibration": "none"}, ADDON_IMAGES),
    "seed-1": ("the shipped config with another seed (head initialization, batch order, "
               "held-out images): the run-to-run spread", {"seed": 1}, ADDON_IMAGES),
    "seed-2": ("... and a third seed", {"seed": 2}, ADDON_IMAGES),
    "crossfit-5": ("cross-fitting over 5 folds instead of the held-out fifth, the shipped head "
                   "trained on every image", {"crossfit_folds": 5}, ADDON_IMAGES),
    "crossfit-5-average": ("cross-fitting over 5 folds, the shipped head the fold heads' "
                           "average", {"crossfit_folds": 5, "crossfit_final": "average"},
                           ADDON_IMAGES),
    "photometric": ("a brightness and contrast jitter of each training image as a third view",
                    {"photometric": True}, ADDON_IMAGES),
    "images-1000": ("1,000 add-on images", {}, 1000),
    "images-4000": ("4,000 add-on images", {}, 4000),
}


# the learning curve: add-on images, and the draws of them at the small sizes (each seed draws
# other images and sets the head's seed: initialization, batch order, the held-out fifth)
CURVE_SIZES = (125, 250, 500, 1000, 2000, 4000)
CURVE_SEEDS = (0, 1, 2)
CURVE_SEEDED_UP_TO = 500


def curve_rows(sizes: tuple[int, ...] = CURVE_SIZES) -> list[tuple[str, int, int]]:
    """(row name, add-on images, seed) of the learning curve."""
    return [(f"curve-{n}-seed{s}", n, s) for n in sizes
            for s in (CURVE_SEEDS if n <= CURVE_SEEDED_UP_TO else CURVE_SEEDS[:1])]


def curve_image_seed(seed: int) -> int:
    """The generator seed of draw ``seed`` of add-on images (draw 0: the main job's)."""
    from maskiou.models.paths import ADDON_SEED

    return ADDON_SEED + 100 * seed


def curve_summary(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per size: the mean over its seeds (and min, max) of recalibrated and rescored mask AP and
    AP75, and of the best learned score's gain over maskness."""
    out = []
    for n in sorted({r["images"] for r in results}):
        rows = [r["segm"] for r in results if r["images"] == n]
        vals: dict[str, list[float]] = {}
        for seg in rows:
            best = max(("rescored", "recalibrated"), key=lambda k: seg[k]["AP"])
            for key, v in (("recal_ap", seg["recalibrated"]["AP"]),
                           ("recal_ap75", seg["recalibrated"]["AP75"]),
                           ("rescored_ap", seg["rescored"]["AP"]),
                           ("rescored_ap75", seg["rescored"]["AP75"]),
                           ("gain_ap", seg[best]["AP"] - seg["maskness"]["AP"]),
                           ("gain_ap75", seg[best]["AP75"] - seg["maskness"]["AP75"])):
                vals.setdefault(key, []).append(v)
        out.append({"images": n, "seeds": len(rows),
                    **{k: {"mean": float(np.mean(v)), "min": min(v), "max": max(v)}
                       for k, v in vals.items()}})
    return out


def range_cell(d: dict[str, float], sign: str = "") -> str:
    """A mean with the range over the seeds: "49.29 (49.15 to 49.45)", or the value alone."""
    if d["min"] == d["max"]:
        return f"{d['mean']:{sign}.2f}"
    return f"{d['mean']:{sign}.2f} ({d['min']:{sign}.2f} to {d['max']:{sign}.2f})"


def curve_table(summary: list[dict[str, Any]]) -> str:
    """The learning curve as a Markdown table: mean (min to max over the seeds)."""
    lines = ["| add-on images | seeds | recalibrated AP | recalibrated AP75 | rescored AP | "
             "rescored AP75 | best - maskness AP | best - maskness AP75 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in summary:
        lines.append(f"| {r['images']} | {r['seeds']} | {range_cell(r['recal_ap'])} | "
                     f"{range_cell(r['recal_ap75'])} | {range_cell(r['rescored_ap'])} | "
                     f"{range_cell(r['rescored_ap75'])} | {range_cell(r['gain_ap'], '+')} | "
                     f"{range_cell(r['gain_ap75'], '+')} |")
    return "\n".join(lines)


def levers_table(curves: dict[str, list[dict[str, Any]]]) -> str:
    """One row per (lever, size): a learning curve run with AddonConfig changes (``--curve-set``)
    against the plain curve, mean (min to max) over the same draws of images."""
    lines = ["| lever | add-on images | seeds | recalibrated AP | rescored AP | "
             "best - maskness AP |", "|---|---|---|---|---|---|"]
    for name, results in curves.items():
        for r in curve_summary(results):
            lines.append(f"| {name} | {r['images']} | {r['seeds']} | {range_cell(r['recal_ap'])} | "
                         f"{range_cell(r['rescored_ap'])} | {range_cell(r['gain_ap'], '+')} |")
    return "\n".join(lines)


def plot_curve(path: Path, summary: list[dict[str, Any]], reference: dict[str, Any]) -> None:
    """curve.png: mask AP against add-on images (log scale), mean and seed range of the
    recalibrated and rescored scores, with maskness and the oracle as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    n = [r["images"] for r in summary]
    for key, label, color in (("recal_ap", "recalibrated", "C0"),
                              ("rescored_ap", "rescored (cls x head)", "C1")):
        mean = [r[key]["mean"] for r in summary]
        ax.plot(n, mean, "o-", color=color, label=label)
        ax.fill_between(n, [r[key]["min"] for r in summary], [r[key]["max"] for r in summary],
                        color=color, alpha=0.2)
    for name, label, style in (("maskness", "maskness (free)", "k--"),
                               ("cls", "class score", "k:"), ("oracle", "oracle", "g-.")):
        ax.axhline(reference[name]["AP"], color=style[0], ls=style[1:], lw=1, label=label)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(n, [f"{x:,}" for x in n])
    ax.set(xlabel="labeled add-on images", ylabel="mask AP (embedded val)",
           title="How many labeled images the add-on needs")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def pretrained_head(detector: str, device: str, progress: bool,
                    split: tuple[str, str] | None = None) -> dict[str, Any]:
    """The head's weights after training (AddonConfig's defaults) on the detections of the
    detector's own training images ``split`` (json, images; default: the embedded detector's)
    and their mirror images: labels every user already has, but on images the detector is
    over-confident on. The start of each fit with ``--pretrain`` (a lever measured here, not
    built into maskiou-addon)."""
    from maskiou.addon.cache import HeadSamples
    from maskiou.addon.fit import train_head
    from maskiou.evaluation.benchmark import embedded_config
    from maskiou.models.paths import resolve_split

    train_json, images = split or resolve_split(embedded_config(), "train", progress=progress)
    train = CocoInstanceDataset(train_json, images)
    cfg = AddonConfig()
    model, _ = attach_to_detector(detector, cfg, device)
    samples = HeadSamples.concat([collect_samples(model, train, view=v, device=device,
                                                  progress=progress)
                                  for v in ("image", "mirror")])
    head = find_maskiou_head(model)
    train_head(head, samples, cfg, progress=progress)
    return head.state_dict()


def head_start(args: argparse.Namespace, detector: str, progress: bool
               ) -> dict[str, Any] | None:
    """The head's starting weights for every fit of this run: ``pretrained_head`` with
    ``--pretrain`` (on ``--pretrain-json``/``--pretrain-images`` when given), else None."""
    if not args.pretrain:
        return None
    split = (args.pretrain_json, args.pretrain_images) if args.pretrain_json else None
    return pretrained_head(detector, args.device, progress, split)


def evaluate_row(name: str, cfg: AddonConfig, detector: str, train_set: Any, cache: Path,
                 val: Any, val_dets: Any, coco_gt: Any, device: str, progress: bool,
                 head_start: dict[str, Any] | None = None,
                 patch: Any = None) -> dict[str, Any]:
    """Fit the add-on of ``cfg`` on ``train_set`` and score the validation detections with it.
    A cross-fitted add-on also gets ``"ensemble"``: the same scored with the mean prediction of
    its fold heads and its final head (a lever measured, not shipped). ``head_start``: the
    head's weights to start from (default: its initialization); ``patch``: a change of the
    attached model before collection (``head_inputs.FEATURE_ROWS``)."""
    model, _ = attach_to_detector(detector, cfg, device)
    if patch is not None:
        model = patch(model)
    if head_start is not None:
        find_maskiou_head(model).load_state_dict(head_start)
    t0 = time.perf_counter()
    fit = fit_addon(model, train_set, cfg, detector_sha1=file_sha1(detector), cache=cache,
                    device=device, progress=progress, log=lambda msg: None)
    seconds = time.perf_counter() - t0
    head = find_maskiou_head(model)
    pred = predict_ious(head, val).numpy()
    metrics = score_rows(val_dets, pred, fit, coco_gt, val)
    row = {"row": name, "train_detections": fit.num_detections,
           "seconds": round(seconds, 1), "segm": metrics["segm"],
           "bbox_cls_AP": metrics["bbox"]["cls"]["AP"], "correlation": metrics["correlation"]}
    if fit.fold_heads:
        preds = [pred]
        for state in fit.fold_heads:
            head.load_state_dict(state)
            preds.append(predict_ious(head, val).numpy())
        ens = score_rows(val_dets, np.mean(preds, 0), fit, coco_gt, val)
        row["ensemble"] = {"segm": ens["segm"], "correlation": ens["correlation"]}
    return row


def score_rows(val_dets: Any, pred: np.ndarray, fit: Any, coco_gt: Any, val: Any
               ) -> dict[str, Any]:
    """Every scoring of the validation detections with the head's predictions ``pred``."""
    dets = dataclasses.replace(val_dets, pred_ious=pred)
    recal_scores = None
    if fit.recalibration is not None:
        boxes = np.c_[dets.boxes_xywh[:, :2], dets.boxes_xywh[:, :2] + dets.boxes_xywh[:, 2:]]
        recal_scores = fit.recalibration.predict(detection_signals(
            dets.cls_scores, dets.pred_ious, dets.maskness, dets.rel_areas, boxes, dets.labels,
            dets.image_ids))
    metrics, _ = evaluate_detections(dets, coco_gt, val.targets.numpy(), has_head=True,
                                     recalibrated=recal_scores)
    return metrics


def table(results: list[dict[str, Any]]) -> str:
    """One row per lever: mask AP and AP75 of the head's rescoring and of the recalibration,
    their change against the free maskness, the head's Pearson (all / matched detections), the
    ECE of the rescored score and the training detections. (Each row's training time is in the
    JSON: rows run beside other jobs, so it is not a cost figure.)"""
    lines = ["| row | rescored AP / AP75 | recalibrated AP / AP75 | best - maskness (AP / AP75) "
             "| Pearson all / matched | ECE rescored | training detections |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        s, c = r["segm"], r["correlation"]
        rec = f"{s['recalibrated']['AP']:.2f} / {s['recalibrated']['AP75']:.2f}" \
            if "recalibrated" in s else "-"
        best = max((n for n in ("rescored", "recalibrated") if n in s), key=lambda n: s[n]["AP"])
        lines.append(
            f"| {r['row']} | {s['rescored']['AP']:.2f} / {s['rescored']['AP75']:.2f} | {rec} | "
            f"{s[best]['AP'] - s['maskness']['AP']:+.2f} / "
            f"{s[best]['AP75'] - s['maskness']['AP75']:+.2f} | "
            f"{c['head_pearson']:.3f} / {c['head_pearson_matched']:.3f} | "
            f"{c['ece_rescored']:.3f} | {r['train_detections']} |")
    if results:
        s = results[0]["segm"]
        lines.append(f"| (reference) cls / cls x maskness / oracle | {s['cls']['AP']:.2f} / "
                     f"{s['cls']['AP75']:.2f} · {s['maskness']['AP']:.2f} / "
                     f"{s['maskness']['AP75']:.2f} · {s['oracle']['AP']:.2f} / "
                     f"{s['oracle']['AP75']:.2f} | | | | | |")
    return "\n".join(lines)


def columns_table(columns: dict[str, list[dict[str, Any]]], base: str = "shipped") -> str:
    """Rows of several ablation runs (column name -> ablation.json's rows) side by side as one
    Markdown table (:func:`runs_table.side_by_side`): each cell the recalibrated mask AP, its
    change against the column's ``base`` row, and the rescored AP; the references (maskness,
    oracle) first."""
    by_row = [{r["row"]: r for r in rows} for rows in columns.values()]

    def cell(col: dict[str, Any], name: str) -> str:
        if name not in col:
            return "-"
        seg, ref = col[name]["segm"], col[base]["segm"]["recalibrated"]["AP"]
        recal = seg["recalibrated"]["AP"]
        return f"{recal:.2f} ({recal - ref:+.2f}) · {seg['rescored']['AP']:.2f}"

    lines = [(f"({ref})", [f"{col[base]['segm'][ref]['AP']:.2f}" for col in by_row])
             for ref in ("maskness", "oracle")]
    lines += [(name, [cell(col, name) for col in by_row]) for name in ROWS
              if any(name in col for col in by_row)]
    return side_by_side("row", list(columns), lines)


def parser() -> argparse.ArgumentParser:
    """The command line of the rows and the curve (``--columns`` is read before it)."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", nargs="+", choices=sorted(ROWS), default=list(ROWS))
    p.add_argument("--detector", help="plain detector checkpoint (default: the shipped one)")
    for split in ("train", "val"):
        p.add_argument(f"--{split}-json")
        p.add_argument(f"--{split}-images")
    p.add_argument("--curve", action="store_true", help="the learning curve instead of the "
                   "rows: add-on images 125 to 4,000, three draws at the sizes up to 500; "
                   "writes curve.json, curve.md and curve.png (--curve-set: other names)")
    p.add_argument("--curve-sizes", nargs="+", type=int, default=list(CURVE_SIZES),
                   help="the curve's sizes (default: all)")
    p.add_argument("--pretrain", "--curve-pretrain", action="store_true",
                   help="start each fit from a head trained on the detector's own training "
                   "images (rows NAME-pretrain; files curve-...-pretrain.*)")
    p.add_argument("--pretrain-json", help="the detector's own training images with --pretrain "
                   "(default: the embedded detector's)")
    p.add_argument("--pretrain-images")
    p.add_argument("--curve-set", nargs="+", default=[], metavar="FIELD=VALUE",
                   help="AddonConfig changes for the curve's rows (e.g. crossfit_folds=5); "
                   "its files are then curve-FIELD-VALUE.json, .md, .png")
    p.add_argument("--output-dir", default="results/ablation")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    from maskiou.evaluation.benchmark import addon_split, default_detector, embedded_val

    if argv is None:
        argv = sys.argv[1:]
    if print_columns(argv, "--columns", columns_table):  # NAME=ablation.json ...
        return 0

    args = parser().parse_args(argv)
    progress = not args.no_progress
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    detector = args.detector or str(default_detector(progress))
    val_json, val_images = (args.val_json, args.val_images) if args.val_json else \
        embedded_val(progress)
    val_set = CocoInstanceDataset(val_json, val_images)
    model, _ = attach_to_detector(detector, AddonConfig(), args.device)
    val, val_dets = collect_samples(model, val_set, device=args.device, progress=progress,
                                    return_detections=True)
    if args.curve:
        return run_curve(args, detector, val, val_dets, val_set, out, progress)
    feature_vals: dict[str, Any] = {}
    saved = out / "ablation.json"  # rows measured before stay, rerun ones are replaced
    suffix = "-pretrain" if args.pretrain else ""
    results = [r for r in (json.loads(saved.read_text()) if saved.is_file() else [])
               if r["row"] not in {name + suffix for name in args.rows}]
    start = head_start(args, detector, progress)
    for name in args.rows:
        what, overrides, images = ROWS[name]
        cfg = AddonConfig().replace(**overrides)
        train_json, train_images = (args.train_json, args.train_images) if args.train_json \
            else addon_split(images, progress)
        train_set = CocoInstanceDataset(train_json, train_images)
        cache = out / "cache"  # one folder per detector, images and collection settings
        patch, row_val = None, (val, val_dets)
        if name in FEATURE_ROWS:  # other head inputs: another cache and validation pass
            patch, cache = FEATURE_ROWS[name], out / f"cache-{name}"
            if name not in feature_vals:
                fresh, _ = attach_to_detector(detector, cfg, args.device)
                feature_vals[name] = collect_samples(patch(fresh), val_set, device=args.device,
                                                     progress=progress, return_detections=True)
            row_val = feature_vals[name]
        r = evaluate_row(name + suffix, cfg, detector, train_set, cache, *row_val,
                         val_set.coco, args.device, progress, head_start=start, patch=patch)
        if suffix:
            what += "; the head pretrained on the detector's own training images"
        r["what"], r["config"], r["images"] = what, dataclasses.asdict(cfg), len(train_set)
        results.append(r)
        print(table([r]).splitlines()[2], flush=True)
        results.sort(key=lambda x: list(ROWS).index(x["row"]) if x["row"] in ROWS else 99)
        saved.write_text(json.dumps(results, indent=2) + "\n")
    md = table(results) + "\n\n" + "\n".join(f"- **{r['row']}**: {r['what']}" for r in results)
    (out / "ablation.md").write_text(md + "\n")
    print()
    print(md)
    print(f"\nwrote {out}/ablation.json and ablation.md")
    return 0


def run_curve(args: argparse.Namespace, detector: str, val: Any, val_dets: Any, val_set: Any,
              out: Path, progress: bool) -> int:
    """The learning curve (``--curve``) on the embedded add-on images."""
    from maskiou.evaluation.benchmark import addon_split

    if args.train_json:
        raise SystemExit("ablation.py: --curve draws embedded add-on images; it takes no "
                         "--train-json")
    changes = {k: json.loads(v) if v[:1] in "0123456789-[{tf" else v
               for k, v in (item.split("=", 1) for item in args.curve_set)}
    name = "curve" + "".join(f"-{k}-{v}" for k, v in changes.items()).replace("_", "-") \
        + ("-pretrain" if args.pretrain else "")
    saved = out / f"{name}.json"
    results = json.loads(saved.read_text()) if saved.is_file() else []
    done = {r["row"] for r in results}
    todo = [row for row in curve_rows(tuple(args.curve_sizes)) if row[0] not in done]
    start = head_start(args, detector, progress) if todo else None
    t0 = time.perf_counter()
    for k, (row, images, seed) in enumerate(todo):
        cfg = AddonConfig().replace(seed=seed, **changes)
        train_json, train_images = addon_split(images, progress, seed=curve_image_seed(seed))
        r = evaluate_row(row, cfg, detector, CocoInstanceDataset(train_json, train_images),
                         out / "cache", val, val_dets, val_set.coco, args.device, progress,
                         head_start=start)
        r.update(what=f"{images} add-on images, draw {seed}", config=dataclasses.asdict(cfg),
                 images=images, seed=seed)
        results.append(r)
        saved.write_text(json.dumps(results, indent=2) + "\n")
        el = time.perf_counter() - t0
        print(f"[{k + 1}/{len(todo)}] {table([r]).splitlines()[2]} (ETA "
              f"{el / (k + 1) * (len(todo) - k - 1):.0f} s)", flush=True)
    if any("ensemble" in r for r in results):  # cross-fitting: its ensemble as a lever too
        (out / f"{name}-ensemble.json").write_text(json.dumps(
            [{**r, **r["ensemble"]} for r in results if "ensemble" in r], indent=2) + "\n")
    summary = curve_summary(results)
    md = curve_table(summary)
    (out / f"{name}.md").write_text(md + "\n")
    plot_curve(out / f"{name}.png", summary, results[0]["segm"])
    print(md)
    print(f"\nwrote {out}/{name}.json, {name}.md and {name}.png")
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())
