"""Shrink a trainer checkpoint to what inference needs (weights, float16 by default, and
metadata), and write its TorchScript or ONNX form.

    maskiou-export runs/synthetic-cpu/model_final.pt \\
        maskiou/pretrained/synthetic_cpu_torchvision_end_to_end.pt
    maskiou-export runs/x/model_final.pt --torchscript model.ts --onnx model.onnx
    maskiou-export --head-only runs/addon/model_final.pt \\
        maskiou/pretrained/synthetic_cpu_torchvision_addon.pt
    maskiou-export runs/x/model_final.pt slim.pt --onnx model.onnx --keep worth

This is how the shipped models (``maskiou/pretrained/``, the repository's ``weights/``) were
made. ``--head-only`` writes a shipped add-on: its head and calibration alone, its detector
named as the shipped plain detector whose file has the sha1 the add-on recorded (and checked,
tensor by tensor, to be the detector the add-on embeds). Loading casts the weights back to the
model's dtype. The slim copy works for a checkpoint of any framework; TorchScript and ONNX for
those whose adapter declares the capability ``export`` (torchvision's); another framework's
checkpoint is refused in one line that says why, before anything is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from maskiou.configs import KEEP_CHOICES
from maskiou.models.checkpoint import CheckpointError, read_checkpoint, save_atomic

KEEP = ("schema", "framework", "detector", "maskiou_head", "config", "class_names",
        "label_to_cat_id", "iteration", "format", "addon")


def export_checkpoint(src: str | Path, dst: str | Path, half: bool = True,
                      keep: str | None = None) -> int:
    """Write the slim copy of ``src`` to ``dst``; returns its size in bytes. The MaskIoU head
    stays float32: it is small, and an add-on head then scores exactly as trained (a detector
    that came from a float16 checkpoint round-trips exactly). ``keep`` (``"all"`` or
    ``"worth"``): the model's kept-mask switch in the copy (:func:`maskiou.set_keep`); None
    leaves it as ``src`` has it."""
    ckpt = read_checkpoint(src)
    model = {k: (v.half() if half and v.is_floating_point() and ".maskiou_head." not in k
                 else v) for k, v in ckpt["model"].items()}
    if keep is not None:
        model = with_keep(model, keep, src)
    save_atomic({"model": model, **{k: ckpt[k] for k in KEEP if k in ckpt}}, dst)
    return Path(dst).stat().st_size


def export_head_only(src: str | Path, dst: str | Path) -> int:
    """Write the head-only form of the add-on ``src`` to ``dst``
    (:func:`maskiou.models.headonly.head_only_checkpoint`); returns its size in bytes."""
    from maskiou.models.headonly import head_only_checkpoint

    save_atomic(head_only_checkpoint(src, KEEP), dst)
    return Path(dst).stat().st_size


def with_keep(state: dict[str, torch.Tensor], keep: str, src: str | Path
              ) -> dict[str, torch.Tensor]:
    """``state`` (a model's state dict) with its head's switch ``calibration.keep_worth_only``
    set for ``keep`` (added to a state dict written before the switch), or a
    :class:`CheckpointError` for a model without a head."""
    heads = [k[:-len("calibration.weights")] for k in state
             if k.endswith("maskiou_head.calibration.weights")]
    if not heads:
        raise CheckpointError(f"{src}: --keep needs a model with a MaskIoU head; this one has "
                              "none")
    return {**state, **{p + "calibration.keep_worth_only": torch.tensor(keep == "worth")
                        for p in heads}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="maskiou-export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="a maskiou-train (or add-on) checkpoint")
    p.add_argument("dst", nargs="?", help="slim checkpoint to write")
    p.add_argument("--float32", action="store_true", help="keep float32 weights")
    p.add_argument("--head-only", action="store_true", help="DST holds the add-on's head and "
                   "calibration alone, naming the shipped plain detector it was trained on by "
                   "that file's sha1 (how a shipped add-on is written)")
    p.add_argument("--torchscript", metavar="PATH", help="also write the scripted model")
    p.add_argument("--onnx", metavar="PATH", help="also write an ONNX graph (one image at a "
                   "time; needs the export extra)")
    p.add_argument("--onnx-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="example image size for the ONNX export (default: the model's min size)")
    p.add_argument("--keep", choices=KEEP_CHOICES, help="the model's kept-mask switch in "
                   "everything written: only the masks worth keeping (its per-class thresholds), "
                   "or all (default: as SRC has it; maskiou.set_keep)")
    args = p.parse_args(argv)
    if not (args.dst or args.torchscript or args.onnx):
        p.error("give DST, --torchscript PATH or --onnx PATH")
    if args.head_only and not args.dst:
        p.error("--head-only writes DST: give it")
    try:
        adapter = _exporter(args.src) if (args.torchscript or args.onnx) else None
        if args.dst:
            size = (export_head_only(args.src, args.dst) if args.head_only
                    else export_checkpoint(args.src, args.dst, half=not args.float32,
                                           keep=args.keep))
            print(f"wrote {args.dst} ({size / 2**20:.1f} MiB)")
        if adapter is not None:
            from maskiou.models.load import load_trained_model

            from .deploy import export_onnx, script_model

            model, _ = load_trained_model(args.src)
            if args.keep is not None:
                from maskiou.keep import set_keep

                try:
                    set_keep(model, args.keep)
                except ValueError as e:
                    raise CheckpointError(f"{args.src}: --keep: {e}") from e
            if args.torchscript:
                script_model(model, args.torchscript)
                print(f"wrote {args.torchscript} (TorchScript)")
            if args.onnx:
                example = adapter.export_example(model, tuple(args.onnx_size)
                                                 if args.onnx_size else None)
                export_onnx(model, example, args.onnx)
                print(f"wrote {args.onnx} (ONNX, opset 17)")
    except (CheckpointError, ImportError) as e:
        print(f"maskiou-export: error: {e}", file=sys.stderr)
        return 2
    return 0


def _exporter(src: str | Path) -> Any:
    """The adapter that exports the models of ``src``'s framework (capability ``export``), or
    a :class:`CheckpointError` naming the framework and why it cannot."""
    from maskiou.attach import UnknownFrameworkError, framework_adapter
    from maskiou.contract import AdapterContractError

    framework = read_checkpoint(src)["framework"]
    try:
        return framework_adapter(framework, "export", "maskiou-export --torchscript/--onnx")
    except (UnknownFrameworkError, AdapterContractError) as e:
        raise CheckpointError(f"{src}: a {framework} model is not written as TorchScript or "
                              f"ONNX here (docs/deployment.md says what each framework "
                              f"exports): {e}") from e


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
