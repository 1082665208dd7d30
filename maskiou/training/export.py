"""Shrink a trainer checkpoint to what inference needs (weights, float16 by default, and
metadata), and write its TorchScript or ONNX form.

    maskiou-export runs/synthetic-cpu/model_final.pt \\
        maskiou/pretrained/synthetic_cpu_torchvision_end_to_end.pt
    maskiou-export runs/x/model_final.pt --torchscript model.ts --onnx model.onnx

This is how the shipped models in ``maskiou/pretrained/`` were made. Loading
casts the weights back to the model's dtype.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from maskiou.models.checkpoint import CheckpointError, read_checkpoint, save_atomic

KEEP = ("schema", "framework", "detector", "maskiou_head", "config", "class_names",
        "label_to_cat_id", "iteration", "format", "addon")


def export_checkpoint(src: str | Path, dst: str | Path, half: bool = True) -> int:
    """Write the slim copy of ``src`` to ``dst``; returns its size in bytes. The MaskIoU head
    stays float32: it is small, and an add-on head then scores exactly as trained (a detector
    that came from a float16 checkpoint round-trips exactly)."""
    ckpt = read_checkpoint(src)
    model = {k: (v.half() if half and v.is_floating_point() and ".maskiou_head." not in k
                 else v) for k, v in ckpt["model"].items()}
    save_atomic({"model": model, **{k: ckpt[k] for k in KEEP if k in ckpt}}, dst)
    return Path(dst).stat().st_size


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="maskiou-export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="a maskiou-train (or add-on) checkpoint")
    p.add_argument("dst", nargs="?", help="slim checkpoint to write")
    p.add_argument("--float32", action="store_true", help="keep float32 weights")
    p.add_argument("--torchscript", metavar="PATH", help="also write the scripted model")
    p.add_argument("--onnx", metavar="PATH", help="also write an ONNX graph (one image at a "
                   "time; needs the export extra)")
    p.add_argument("--onnx-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="example image size for the ONNX export (default: the model's min size)")
    args = p.parse_args(argv)
    if not (args.dst or args.torchscript or args.onnx):
        p.error("give DST, --torchscript PATH or --onnx PATH")
    try:
        if args.dst:
            size = export_checkpoint(args.src, args.dst, half=not args.float32)
            print(f"wrote {args.dst} ({size / 2**20:.1f} MiB)")
        if args.torchscript or args.onnx:
            from maskiou.models.load import load_trained_model

            from .deploy import export_onnx, script_model

            model, _ = load_trained_model(args.src)
            if args.torchscript:
                script_model(model, args.torchscript)
                print(f"wrote {args.torchscript} (TorchScript)")
            if args.onnx:
                side = int(model.transform.min_size[0])
                h, w = args.onnx_size or (side, side)
                export_onnx(model, [torch.rand(3, h, w)], args.onnx)
                print(f"wrote {args.onnx} (ONNX, opset 17)")
    except (CheckpointError, ImportError) as e:
        print(f"maskiou-export: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
