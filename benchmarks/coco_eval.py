"""COCO AP with classification scores vs MaskIoU-rescored vs oracle, correlation, cost.

    python benchmarks/coco_eval.py                       # embedded synthetic default, CPU
    python benchmarks/coco_eval.py --checkpoint run/model_final.pt --coco-root /data/coco
    python benchmarks/coco_eval.py --coco-root /data/coco --config coco-r50-1x --train-baseline
    torchrun --nproc_per_node=8 benchmarks/coco_eval.py --checkpoint ... --coco-root ...

Writes report.md, metrics.json, results_*.json and PNG plots to --output-dir (default results/).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maskiou.data.coco import CocoFormatError  # noqa: E402
from maskiou.training.checkpoint import CheckpointError  # noqa: E402
from maskiou.training.config import DEFAULT_PRESET, PRESETS, resolve  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="trained MS R-CNN checkpoint (maskiou-train output)")
    p.add_argument("--baseline-checkpoint", help="plain Mask R-CNN checkpoint, same recipe")
    p.add_argument("--train-baseline", action="store_true",
                   help="train the plain Mask R-CNN with the same recipe (--no-maskiou) too")
    p.add_argument("--config", default=DEFAULT_PRESET, choices=sorted(PRESETS),
                   help="training recipe when a model must be trained")
    p.add_argument("--max-iters", type=int, help="override the recipe's iterations")
    p.add_argument("--synthetic-train", type=int, help="embedded data: training images")
    p.add_argument("--synthetic-val", type=int, help="embedded data: validation images")
    p.add_argument("--coco-root", help="DIR with annotations/instances_{train,val}2017.json")
    for split in ("train", "val"):
        p.add_argument(f"--{split}-json")
        p.add_argument(f"--{split}-images")
    p.add_argument("--output-dir", default="results")
    p.add_argument("--runs-dir", help="where trained models go (default: the maskiou cache for "
                   "the embedded data, OUTPUT_DIR/runs otherwise)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=8, help="inference batch size")
    p.add_argument("--eval-backend", default="pycocotools",
                   choices=["pycocotools", "faster-coco-eval"])
    p.add_argument("--retrain", action="store_true", help="ignore a cached trained model")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from maskiou.evaluation.benchmark import run
    from maskiou.evaluation.report import markdown_report
    from maskiou.training import distributed as D

    args = parse_args(argv)
    overrides = {"coco_root": args.coco_root, "train_json": args.train_json,
                 "train_images": args.train_images, "val_json": args.val_json,
                 "val_images": args.val_images}
    custom_data = any(overrides.values())
    overrides.update(max_iters=args.max_iters, synthetic_train=args.synthetic_train,
                     synthetic_val=args.synthetic_val)
    if custom_data:
        overrides["dataset"] = "coco"
    if args.checkpoint is None and custom_data and not (args.coco_root or args.train_json):
        print("coco_eval: error: without --checkpoint a model must be trained: give "
              "--coco-root or --train-json/--train-images", file=sys.stderr)
        return 2
    try:
        cfg = resolve(args.config, overrides)
        runs = Path(args.runs_dir) if args.runs_dir else (
            Path(args.output_dir) / "runs" if custom_data else None)
        metrics = run(cfg, output_dir=Path(args.output_dir), checkpoint=args.checkpoint,
                      baseline_checkpoint=args.baseline_checkpoint,
                      train_baseline=args.train_baseline, device=args.device,
                      batch_size=args.batch_size, backend=args.eval_backend,
                      progress=not args.no_progress, retrain=args.retrain, run_root=runs)
    except (CocoFormatError, CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"coco_eval: error: {e}", file=sys.stderr)
        return 2
    finally:
        D.cleanup()
    if metrics:
        print()
        print(markdown_report(metrics))
        print(f"wrote {args.output_dir}/report.md, metrics.json, results_*.json and plots "
              f"({metrics['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
