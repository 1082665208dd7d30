"""``maskiou-train``: train Mask Scoring R-CNN (or the plain Mask R-CNN) end to end.

    maskiou-train --config synthetic-cpu --output-dir runs/synthetic-cpu
    maskiou-train --config coco-r50-1x --coco-root /data/coco --device cuda
    torchrun --nproc_per_node=8 -m maskiou.training --config coco-r50-1x --coco-root /data/coco

The arguments and the configuration are checked before torch is imported: a bad value ends in
one line and exit code 2 at once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from maskiou.models.config import (
    DEFAULT_PRESET,
    PRESETS,
    TrainConfig,
    add_config_arguments,
    override_keys,
    resolve,
)
from maskiou.options import ArgumentParser, ConfigError


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, TrainConfig]:
    p = ArgumentParser(prog="maskiou-train", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=DEFAULT_PRESET, choices=sorted(PRESETS))
    p.add_argument("--output-dir", default="runs/maskiou")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="checkpoint to continue from (default: OUTPUT_DIR/last.pt)")
    p.add_argument("--no-maskiou", action="store_true", help="plain Mask R-CNN baseline")
    p.add_argument("--freeze-detector", action="store_true",
                   help="train only the head (with --detector-checkpoint or --weights)")
    p.add_argument("--amp", nargs="?", const="auto", default=None,
                   choices=["auto", "bf16", "fp16", "none"])
    p.add_argument("--no-progress", action="store_true")
    add_config_arguments(p)
    args = p.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k in override_keys()}
    if args.no_maskiou:
        overrides["maskiou"] = False
    if args.freeze_detector:
        overrides["freeze_detector"] = True
    if args.train_json or args.coco_root:
        overrides["dataset"] = "coco"
    try:
        return args, resolve(args.config, overrides)
    except ConfigError as e:
        p.error(str(e))


def main(argv: list[str] | None = None) -> int:
    args, cfg = parse_args(argv)
    from maskiou import distributed as D
    from maskiou.data.coco import CocoFormatError
    from maskiou.models.checkpoint import CheckpointError

    from .trainer import Trainer

    trainer = None
    try:
        trainer = Trainer(cfg, args.output_dir, progress=not args.no_progress)
        if args.resume:
            path = Path(args.output_dir) / "last.pt" if args.resume == "auto" else args.resume
            trainer.resume(path)
        if trainer.main:
            cfg.save(Path(args.output_dir) / "config.json")
        path = trainer.train()
        if trainer.main:
            print(f"done: {trainer.iteration} iterations, checkpoint {path}")
    except (CocoFormatError, CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"maskiou-train: error: {e}", file=sys.stderr)
        return 2
    finally:
        trainer = None  # its DDP model holds the process group: free both before destroying it
        D.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
