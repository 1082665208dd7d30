"""Shrink a trainer checkpoint to what inference needs: weights (float16 by default) + metadata.

    maskiou-export runs/synthetic-cpu/model_final.pt maskiou/pretrained/synthetic_cpu.pt

This is how the shipped models in ``maskiou/pretrained/`` were made. Loading
casts the weights back to the model's dtype.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .checkpoint import CheckpointError, load_checkpoint, save_atomic

KEEP = ("config", "class_names", "label_to_cat_id", "iteration", "format")


def export_checkpoint(src: str | Path, dst: str | Path, half: bool = True) -> int:
    """Write the slim copy of ``src`` to ``dst``; returns its size in bytes."""
    ckpt = load_checkpoint(src)
    model = {k: (v.half() if half and v.is_floating_point() else v)
             for k, v in ckpt["model"].items()}
    save_atomic({"model": model, **{k: ckpt[k] for k in KEEP if k in ckpt}}, dst)
    return Path(dst).stat().st_size


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--float32", action="store_true", help="keep float32 weights")
    args = p.parse_args(argv)
    try:
        size = export_checkpoint(args.src, args.dst, half=not args.float32)
    except CheckpointError as e:
        print(f"maskiou.export: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.dst} ({size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
