"""ultralytics YOLO-seg models the maskiou way: the embedded recipe trained by ultralytics' own
trainer, the maskiou checkpoint of a trained model, and the model rebuilt from that checkpoint
with no download.

A maskiou checkpoint of an ultralytics model is a plain dict of tensors and JSON-like values,
readable with ``torch.load(..., weights_only=True)`` (no pickled ultralytics object)::

    {"schema": 2, "framework": "ultralytics",
     "detector": {"yaml": <the model's architecture dict>, "imgsz": 128, "conf": 0.001,
                  "iou": 0.7, "max_det": 100, "source": {...}},
     "maskiou_head": None, "model": <state dict, float16>,
     "class_names": ["__background__", ...], "label_to_cat_id": {1: cat id, ...}}

YOLO class ``k`` is maskiou label ``k + 1`` (see :mod:`maskiou_integrations.ultralytics_data`).

    python -m maskiou_integrations.ultralytics_models train --output-dir runs/yolo --epochs 150
    python -m maskiou_integrations.ultralytics_models ship runs/yolo   # into weights/ (AGPL-3.0)
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maskiou.models.checkpoint import SCHEMA, load_allowing, named_object, save_atomic

ARCHITECTURE = "yolo11n-seg.yaml"
EMBEDDED_EPOCHS = 150
# ultralytics' trainer settings of the embedded recipe (everything else: its defaults)
EMBEDDED_TRAIN_ARGS: dict[str, Any] = {
    "imgsz": 128, "batch": 16, "pretrained": False, "amp": False, "plots": False, "workers": 0,
    "seed": 0, "deterministic": True, "cache": False, "val": True,
}
# how the shipped detector predicts: ultralytics' validator's conf and iou, 100 detections
PREDICT = {"conf": 0.001, "iou": 0.7, "max_det": 100}


def _versions() -> dict[str, str]:
    import ultralytics

    return {"ultralytics": ultralytics.__version__, "torch": torch.__version__,
            "python": platform.python_version()}


def train_embedded(output_dir: str | Path, *, device: str = "cpu",
                   epochs: int = EMBEDDED_EPOCHS, model: str = ARCHITECTURE,
                   data: str | Path | None = None, resume: bool = True,
                   threads: int | None = None, **overrides: Any) -> Path:
    """Train ``model`` (an ultralytics architecture YAML, from scratch) with ultralytics' own
    trainer on the embedded training split (or on ``data``, a YOLO-seg ``data.yaml``) and
    validate on its validation split after each epoch; ultralytics writes ``output_dir/train``
    (``weights/last.pt``, ``best.pt``, ``results.csv``, ``args.yaml``). An interrupted run
    resumes from its ``last.pt`` (``resume``). ``threads``: torch's CPU threads (ultralytics
    otherwise sets its own count). Returns ultralytics' run folder."""
    from ultralytics import YOLO
    from ultralytics.utils import torch_utils

    if threads is not None:
        torch.set_num_threads(threads)
        torch_utils.NUM_THREADS = threads  # its select_device resets torch's threads to this
    if data is None:
        from .ultralytics_data import embedded_dataset

        data = embedded_dataset()
    run = Path(output_dir).resolve() / "train"
    last = run / "weights" / "last.pt"
    started = time.time()
    resumed = bool(resume and last.is_file())
    if resumed:
        YOLO(str(last)).train(resume=True)
    else:
        args = {**EMBEDDED_TRAIN_ARGS, **overrides}
        YOLO(model).train(data=str(data), epochs=epochs, device=device,
                          project=str(run.parent), name=run.name, exist_ok=True, **args)
    record = {"command": list(sys.orig_argv), "seconds": round(time.time() - started, 1),
              "resumed": resumed, "versions": _versions()}
    with (run / "maskiou_training.jsonl").open("a") as f:  # one line per (resumed) session
        f.write(json.dumps(record) + "\n")
    return run


def _plain(value: Any) -> Any:
    """A JSON-like copy (dicts, lists, str, numbers, bools, None) of an ultralytics value."""
    return json.loads(json.dumps(value, default=str))


FRAMEWORK = "ultralytics"
"""The ``"framework"`` entry of its maskiou checkpoints."""
_MODULE_PACKAGES = ("torch.nn.", "ultralytics.nn.")


def _module_class(name: str) -> Any:
    """The class a weights file names, if it is a ``torch.nn.Module`` subclass from ``torch.nn``
    or ``ultralytics.nn``; None for anything else."""
    obj = named_object(name) if name.startswith(_MODULE_PACKAGES) else None
    return obj if isinstance(obj, type) and issubclass(obj, nn.Module) else None


def read_ultralytics_weights(weights: str | Path) -> dict[str, Any]:
    """An ultralytics weights file read with ``weights_only=True``. Its trainer pickles the model
    object, so the file names classes; each must be a ``torch.nn.Module`` subclass from
    ``torch.nn`` or ``ultralytics.nn`` (checked by name and type before anything is loaded) and
    only those are allowed to the unpickler: a file naming any other global is refused."""
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ultralytics weights not found")
    ckpt = load_allowing(path, _module_class, "ultralytics weights file",
                         "and only torch.nn or ultralytics.nn module classes are allowed",
                         error=ValueError)
    if not isinstance(ckpt, dict) or ("model" not in ckpt and "ema" not in ckpt):
        raise ValueError(f"{path}: not an ultralytics weights file (no 'model' or 'ema' entry)")
    return ckpt


def checkpoint_from_ultralytics(weights: str | Path, class_names: list[str],
                                label_to_cat_id: dict[int, int],
                                source: dict[str, Any] | None = None) -> dict[str, Any]:
    """The maskiou checkpoint of an ultralytics segmentation weights file (``best.pt`` /
    ``last.pt`` as its trainer writes them: the EMA model, float16). ``class_names``
    (background first) and ``label_to_cat_id`` are the dataset's; the model's classes must be
    ``class_names[1:]`` in that order."""
    ckpt = read_ultralytics_weights(weights)
    model = ckpt.get("ema") or ckpt["model"]
    train_args = ckpt.get("train_args") or {}
    if train_args.get("task", "segment") != "segment" or not hasattr(model, "yaml"):
        raise ValueError(f"{weights}: not the weights of an ultralytics segmentation model "
                         f"(task: {train_args.get('task')})")
    names = [model.names[k] for k in sorted(model.names)]
    if names != list(class_names[1:]):
        raise ValueError(f"{weights}: the model's classes {names} are not the dataset's "
                         f"{list(class_names[1:])}")
    state = {k: (v.half() if v.is_floating_point() else v).contiguous()
             for k, v in model.state_dict().items()}
    model_args = getattr(model, "args", None)  # a file of YOLO.save: no train_args
    imgsz = train_args.get("imgsz", (model_args if isinstance(model_args, dict) else {})
                           .get("imgsz", 640))
    detector = {"yaml": _plain(model.yaml), "imgsz": int(imgsz),
                **PREDICT, "source": _plain(source or {})}
    return {"schema": SCHEMA, "framework": FRAMEWORK, "detector": detector,
            "maskiou_head": None, "model": state, "class_names": list(class_names),
            "label_to_cat_id": {int(k): int(v) for k, v in label_to_cat_id.items()}}


def load_detector(detector: dict[str, Any]) -> nn.Module:
    """The ultralytics ``SegmentationModel`` a checkpoint's ``"detector"`` describes, built from
    its architecture dict (random weights: load the checkpoint's ``"model"`` into it), float32,
    on the CPU, in eval mode, not fused; nothing is downloaded. ``model.maskiou_predict`` keeps
    ``imgsz``, ``conf``, ``iou`` and ``max_det`` for prediction."""
    from ultralytics.nn.tasks import SegmentationModel

    cfg = copy.deepcopy(detector["yaml"])  # parse_model edits it
    model = SegmentationModel(cfg, ch=int(cfg.get("channels", 3)), nc=int(cfg["nc"]),
                              verbose=False)
    model.maskiou_predict = {k: detector[k] for k in ("imgsz", "conf", "iou", "max_det")}
    return model.float().eval()


def load_model(checkpoint: dict[str, Any]) -> nn.Module:
    """:func:`load_detector` with the checkpoint's weights loaded (float16 -> float32) and its
    class names set (``model.names``, YOLO class ``k``: ``class_names[k + 1]``)."""
    model = load_detector(checkpoint["detector"])
    model.load_state_dict(checkpoint["model"], strict=True)
    model.names = dict(enumerate(checkpoint["class_names"][1:]))
    return model.eval()


def to_ultralytics_weights(checkpoint: dict[str, Any], path: str | Path) -> Path:
    """The model of a maskiou checkpoint as an ultralytics weights file (its pickled model,
    float16, as its trainer saves one), for ``YOLO(path)``: its predictor, validator, export."""

    model = load_model(checkpoint).half()
    args = {"task": "segment", "imgsz": checkpoint["detector"]["imgsz"]}
    save_atomic({"model": model, "train_args": args, "epoch": -1}, path)
    return Path(path)


def training_curve(results_csv: str | Path) -> list[dict[str, float]]:
    """ultralytics' ``results.csv``, one dict per epoch (``epoch`` an int from 1)."""
    import csv

    with open(results_csv, newline="") as f:
        rows = [{k.strip(): float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    for row in rows:
        row["epoch"] = int(row["epoch"])
    return rows


def best_epoch(curve: list[dict[str, float]]) -> int:
    """The epoch whose weights ultralytics keeps as ``best.pt``: the first with the highest
    fitness, box mAP50-95 + mask mAP50-95 in this version."""
    fitness = [r["metrics/mAP50-95(B)"] + r["metrics/mAP50-95(M)"] for r in curve]
    return curve[fitness.index(max(fitness))]["epoch"]


def ship(run: str | Path, out: str | Path, weights: str = "best.pt") -> Path:
    """Write the maskiou checkpoint of the run's ``weights`` to ``out`` (atomically), with the
    run's training log (``.train_log.csv``: ultralytics' ``results.csv``), the trainer's
    arguments (``.config.yaml``: its ``args.yaml``) and how it was trained
    (``.training.json``) beside it."""
    import shutil

    import yaml

    from maskiou.data.coco import CocoInstanceDataset

    run = Path(run)
    args = yaml.safe_load((run / "args.yaml").read_text())
    stamp = json.loads((Path(args["data"]).parent / "maskiou_source.json").read_text())
    train = stamp["source"]["splits"]["train"]
    data = CocoInstanceDataset(train["json"], train["images"])
    source = {"train_split": "embedded", "trained_by": "ultralytics trainer",
              "weights": weights, "epochs": args["epochs"], "model": args["model"]}
    ckpt = checkpoint_from_ultralytics(run / "weights" / weights, data.class_names,
                                       data.label_to_cat_id, source)
    out = Path(out)
    save_atomic(ckpt, out)
    stem = out.with_suffix("")
    shutil.copyfile(run / "results.csv", f"{stem}.train_log.csv")
    shutil.copyfile(run / "args.yaml", f"{stem}.config.yaml")
    sessions = [json.loads(x) for x in (run / "maskiou_training.jsonl").read_text().splitlines()]
    curve = training_curve(run / "results.csv")
    epoch = best_epoch(curve) if weights == "best.pt" else curve[-1]["epoch"]
    record = {"sessions": sessions, "seconds": round(sum(s["seconds"] for s in sessions), 1),
              "shipped": weights, "shipped_epoch": epoch, "epochs_run": curve[-1]["epoch"],
              "train_args": args}
    Path(f"{stem}.training.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train the embedded recipe with ultralytics' trainer")
    t.add_argument("--output-dir", required=True)
    t.add_argument("--device", default="cpu")
    t.add_argument("--epochs", type=int, default=EMBEDDED_EPOCHS)
    t.add_argument("--model", default=ARCHITECTURE, help="an ultralytics architecture YAML")
    t.add_argument("--data", help="a YOLO-seg data.yaml (default: the embedded dataset)")
    t.add_argument("--threads", type=int, help="torch CPU threads")
    s = sub.add_parser("ship", help="write the maskiou checkpoint of a run (and its log)")
    s.add_argument("run", help="ultralytics' run folder (OUTPUT_DIR/train)")
    s.add_argument("--out", help="default: the shipped detector file, weights/ of the "
                   "repository (AGPL-3.0: never in the package)")
    s.add_argument("--weights", default="best.pt")
    args = p.parse_args(argv)
    if args.command == "ship":
        from maskiou.models.paths import shipped_model_path

        out = args.out or shipped_model_path("ultralytics_plain")
        print(json.dumps({"checkpoint": str(ship(args.run, out, args.weights))}))
        return 0
    run = train_embedded(args.output_dir, device=args.device, epochs=args.epochs,
                         model=args.model, data=args.data, threads=args.threads)
    print(json.dumps({"run": str(run)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
