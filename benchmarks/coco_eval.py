"""COCO AP of the same detections under each scoring: classification score, the free maskness,
the MaskIoU head's rescoring, a recalibrated score, and the oracle; correlation and cost.

    python benchmarks/coco_eval.py                       # embedded default: the add-on story
    python benchmarks/coco_eval.py --detector-framework detectron2   # the same, on detectron2
    python benchmarks/coco_eval.py --detector-framework detectron2 --detector-config cfg.yaml \
        --checkpoint model_final.pth --train-json addon.json --train-images addon/ \
        --val-json val.json --val-images val/   # your detectron2 model, add-on on your data
    python benchmarks/coco_eval.py --checkpoint plain.pt --train-json addon.json \
        --train-images addon/ --val-json val.json --val-images val/   # add-on, your data
    python benchmarks/coco_eval.py --checkpoint runs/x/model_final.pt --coco-root /data/coco
    torchrun --nproc_per_node=8 benchmarks/coco_eval.py --checkpoint ... --coco-root ...

A plain detector checkpoint gets the MaskIoU head attached and trained alone on the detections
of --train-json/--train-images (labeled images the detector did not train on); a checkpoint with
a head (end to end, --freeze-detector or add-on) is scored as it is. Writes report.md,
metrics.json, results_*.json, detections.json and PNG plots to --output-dir (default results/).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maskiou.models.config import DEFAULT_PRESET, PRESETS, resolve  # noqa: E402
from maskiou.models.paths import DEFAULT_FRAMEWORK  # noqa: E402
from maskiou.options import ArgumentParser, ConfigError  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from maskiou.addon.cli import add_config_flags

    p = ArgumentParser(prog="coco_eval", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="the model to measure: a plain detector (gets the "
                   "add-on) or a model with a head (maskiou-train or maskiou-addon output)")
    p.add_argument("--detector-framework", default=DEFAULT_FRAMEWORK, help="whose detector "
                   "(torchvision, detectron2, or any framework an installed adapter declares): "
                   "on the embedded data, the shipped plain one of that framework gets the "
                   "add-on; with --detector-config, the framework whose adapter reads it")
    p.add_argument("--detector-config", help="a plain detector named its framework's way: this "
                   "config file, and --checkpoint its weights (detectron2: config.yaml and "
                   "model_final.pth)")
    p.add_argument("--baseline-checkpoint", help="plain Mask R-CNN checkpoint, same recipe")
    p.add_argument("--end-to-end-checkpoint", help="an end-to-end model to score beside it")
    p.add_argument("--train-baseline", action="store_true",
                   help="train the plain Mask R-CNN with the same recipe (--no-maskiou) too")
    p.add_argument("--config", default=DEFAULT_PRESET, choices=sorted(PRESETS),
                   help="training recipe when a model must be trained")
    p.add_argument("--max-iters", type=int, help="override the recipe's iterations")
    p.add_argument("--synthetic-train", type=int, help="embedded data: training images")
    p.add_argument("--synthetic-val", type=int, help="embedded data: validation images")
    p.add_argument("--addon-images", type=int, default=None,
                   help="embedded data: add-on images the head trains on (default 2000)")
    p.add_argument("--coco-root", help="DIR with annotations/instances_{train,val}2017.json")
    p.add_argument("--train-json", help="with a plain --checkpoint: labeled images the add-on "
                   "head trains on (not the detector's training images); without --checkpoint: "
                   "what the model is trained on first")
    p.add_argument("--train-images")
    p.add_argument("--val-json", help="the split that is scored")
    p.add_argument("--val-images")
    p.add_argument("--output-dir", default="results")
    p.add_argument("--runs-dir", help="where trained models go (default: the maskiou cache for "
                   "the embedded data, OUTPUT_DIR/runs otherwise)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=8, help="inference batch size")
    p.add_argument("--eval-backend", default="pycocotools",
                   choices=["pycocotools", "faster-coco-eval"])
    p.add_argument("--retrain", action="store_true", help="ignore cached trained models")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--max-pixels", type=int, help="refuse images of more pixels (width x "
                   "height), read from their header before decoding (default: "
                   "MASKIOU_MAX_PIXELS, else 8192 x 8192 = 67,108,864)")
    add_config_flags(p)
    return p.parse_args(argv)


def converted(args: argparse.Namespace, cfg: object) -> str:
    """The maskiou checkpoint of --detector-config/--checkpoint, for the classes of the scored
    split (converted once into OUTPUT_DIR/runs)."""
    from maskiou.data.coco import CocoInstanceDataset
    from maskiou.models.load import convert_detector
    from maskiou.models.paths import resolve_split

    val = CocoInstanceDataset(*resolve_split(cfg, "val", progress=False))
    out = Path(args.runs_dir) if args.runs_dir else Path(args.output_dir) / "runs"
    return str(convert_detector(args.detector_framework, args.detector_config, args.checkpoint,
                                val, out))


def error(message: str) -> int:
    """Print ``coco_eval: error: message`` on stderr; the exit status of a refused run, 2."""
    print(f"coco_eval: error: {message}", file=sys.stderr)
    return 2


def data_overrides(args: argparse.Namespace
                   ) -> tuple[dict[str, Any], bool, tuple[str, str] | None]:
    """(the recipe's overrides from the data flags, whether the data is the user's, the add-on
    head's images or None): with --checkpoint, --train-json/--train-images are the add-on's
    images; without it, what the model is trained on first."""
    data = {"coco_root": args.coco_root, "val_json": args.val_json,
            "val_images": args.val_images}
    custom_data = any(data.values())
    addon_train = None
    overrides: dict[str, Any] = dict(data, max_iters=args.max_iters,
                                     synthetic_train=args.synthetic_train,
                                     synthetic_val=args.synthetic_val)
    if args.checkpoint and args.train_json:
        addon_train = (args.train_json, args.train_images)  # the add-on head's images
    elif args.train_json:
        overrides.update(train_json=args.train_json, train_images=args.train_images)
        custom_data = True
    if custom_data:
        overrides["dataset"] = "coco"
    return overrides, custom_data, addon_train


def training_problem(args: argparse.Namespace, custom_data: bool) -> str | None:
    """Why no model can be trained for a run without --checkpoint on the user's data, or None:
    maskiou's trainer does not build the framework's models, or there is nothing to train on."""
    from maskiou.models.load import trainer_framework

    if args.checkpoint is not None or not custom_data:
        return None
    if args.detector_framework != trainer_framework():
        return (f"maskiou's own trainer does not build {args.detector_framework} "
                f"models (it builds {trainer_framework()} models): train it with "
                f"{args.detector_framework} itself and pass --checkpoint WEIGHTS "
                "--detector-config CONFIG")
    if not (args.coco_root or args.train_json):
        return ("without --checkpoint a model must be trained: give --coco-root or "
                "--train-json/--train-images")
    return None


def measure(args: argparse.Namespace, cfg: Any, addon: Any, addon_train: tuple[str, str] | None,
            custom_data: bool) -> dict[str, Any] | None:
    """The main job (:func:`maskiou.evaluation.benchmark.run`) on the scored split, checked
    first; its metrics ({} on the other ranks), or None after printing the one-line error of
    bad input."""
    from maskiou import distributed as D
    from maskiou.addon.recalibration import RecalibrationError
    from maskiou.attach import UnknownFrameworkError
    from maskiou.contract import AdapterContractError
    from maskiou.data.coco import (
        CocoFormatError,
        CocoInstanceDataset,
        one_line,
        require_annotations,
        set_max_pixels,
    )
    from maskiou.evaluation.benchmark import ADDON_IMAGES, run
    from maskiou.models.checkpoint import CheckpointError
    from maskiou.models.paths import resolve_split

    try:
        set_max_pixels(args.max_pixels)
        if custom_data:  # the scored split, checked before any detector runs
            require_annotations(CocoInstanceDataset(*resolve_split(cfg, "val", progress=False)),
                                "the scored split")
        if args.detector_config:
            args.checkpoint = converted(args, cfg)
        runs = Path(args.runs_dir) if args.runs_dir else (
            Path(args.output_dir) / "runs" if custom_data else None)
        return run(cfg, output_dir=Path(args.output_dir), checkpoint=args.checkpoint,
                   addon_train=addon_train, baseline_checkpoint=args.baseline_checkpoint,
                   end_to_end_checkpoint=args.end_to_end_checkpoint,
                   train_baseline=args.train_baseline, device=args.device,
                   batch_size=args.batch_size, backend=args.eval_backend,
                   progress=not args.no_progress, retrain=args.retrain, run_root=runs,
                   addon=addon, addon_images=args.addon_images or
                   ADDON_IMAGES, framework=args.detector_framework)
    except (CocoFormatError, CheckpointError, RecalibrationError, ValueError,
            FileNotFoundError, UnknownFrameworkError, AdapterContractError) as e:
        error(one_line(e))
        return None
    finally:
        D.cleanup()


def main(argv: list[str] | None = None) -> int:
    from maskiou.addon.cli import config_from_args

    args = parse_args(argv)
    if bool(args.train_json) != bool(args.train_images):
        return error("--train-json and --train-images go together")
    overrides, custom_data, addon_train = data_overrides(args)
    if args.detector_config and not args.checkpoint:
        return error("--detector-config names the config of --checkpoint (the weights file)")
    try:  # bad values are refused here, before torch is imported
        cfg = resolve(args.config, overrides)
        addon = config_from_args(args)
    except ConfigError as e:
        return error(str(e))
    problem = training_problem(args, custom_data)
    if problem:
        return error(problem)
    metrics = measure(args, cfg, addon, addon_train, custom_data)
    if metrics is None:
        return 2
    if metrics:
        from maskiou.evaluation.report import markdown_report

        print()
        print(markdown_report(metrics))
        print(f"wrote {args.output_dir}/report.md, metrics.json, results_*.json, "
              f"detections.json and plots ({metrics['seconds']['total']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
