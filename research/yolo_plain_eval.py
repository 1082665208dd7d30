"""Mask AP of the shipped plain YOLO-seg detector on the embedded validation split, under its
class score, class score x maskness and the oracle (class score x true MaskIoU).

    python research/yolo_plain_eval.py                      # the shipped detector
    python research/yolo_plain_eval.py --checkpoint ckpt.pt --no-validator

Detections as the main job makes them: ``maskiou.evaluation.predict`` through the adapter's
one prediction function (``maskiou_integrations.ultralytics_yolo.detect``: ultralytics'
letterbox, its NMS with the checkpoint's conf 0.001, IoU 0.7 and 100 detections per image, its
masks at full resolution; maskness of the 28 x 28 mask probabilities in each box, as the head
sees them and as every adapter computes it), scored by pycocotools against the
COCO JSON (``maskiou.evaluation.cocoeval``). Beside them, ultralytics' own validator's mask and
box mAP50-95 on the same images (its defaults: conf 0.001, IoU 0.7, 300 detections, masks
against the polygon labels of the YOLO-seg copy of the split). Prints a table; writes JSON
(default results/yolo_plain_eval.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maskiou.data.coco import CocoFormatError, CocoInstanceDataset  # noqa: E402
from maskiou.evaluation.cocoeval import evaluate_scorings  # noqa: E402
from maskiou.evaluation.metrics import scorings  # noqa: E402
from maskiou.evaluation.predict import predict  # noqa: E402
from maskiou.models.paths import shipped_model_path  # noqa: E402
from maskiou.records import true_mask_ious  # noqa: E402


def validator_metrics(checkpoint: dict[str, Any], data_yaml: Path) -> dict[str, float]:
    """ultralytics' validator on the ``val`` split of a YOLO-seg ``data.yaml`` (its defaults,
    no plots), in percent."""
    from ultralytics import YOLO

    from maskiou_integrations.ultralytics_models import to_ultralytics_weights

    with tempfile.TemporaryDirectory() as tmp:
        weights = to_ultralytics_weights(checkpoint, Path(tmp) / "model.pt")
        m = YOLO(str(weights)).val(data=str(data_yaml), imgsz=checkpoint["detector"]["imgsz"],
                                   batch=16, device="cpu", workers=0, plots=False,
                                   project=tmp, name="val", verbose=False)
    return {"mask_mAP50-95": round(100 * float(m.seg.map), 2),
            "mask_mAP50": round(100 * float(m.seg.map50), 2),
            "box_mAP50-95": round(100 * float(m.box.map), 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a maskiou ultralytics checkpoint (default: shipped)")
    p.add_argument("--val-json", help="default: the embedded validation split")
    p.add_argument("--val-images")
    p.add_argument("--no-validator", action="store_true",
                   help="skip ultralytics' own validator (it needs the embedded data)")
    p.add_argument("--out", default="results/yolo_plain_eval.json")
    args = p.parse_args(argv)
    from maskiou_integrations.ultralytics_models import FRAMEWORK, load_model

    path = Path(args.checkpoint) if args.checkpoint else shipped_model_path("ultralytics_plain")
    if not path.is_file():
        print(f"error: {path}: checkpoint not found", file=sys.stderr)
        return 2
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt.get("framework") != FRAMEWORK:
        print(f"error: {path}: not an ultralytics checkpoint", file=sys.stderr)
        return 2
    if bool(args.val_json) != bool(args.val_images):
        print("error: --val-json and --val-images go together", file=sys.stderr)
        return 2
    if args.val_json:
        val_json, val_images = args.val_json, args.val_images
    else:
        from maskiou_integrations.ultralytics_data import embedded_splits

        val_json, val_images = embedded_splits()["val"]
    try:
        dataset = CocoInstanceDataset(val_json, val_images)
        dataset.check_files()
    except CocoFormatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if dataset.class_names != ckpt["class_names"]:
        print(f"error: {val_json}: classes {dataset.class_names[1:]} are not the "
              f"checkpoint's {ckpt['class_names'][1:]}", file=sys.stderr)
        return 2
    started = time.time()
    model = load_model(ckpt)
    dets = predict(model, dataset, progress=False)
    seconds = time.time() - started
    true_ious = true_mask_ious(dets, dataset.coco)
    scores = scorings(dets.cls_scores, None, dets.maskness, true_ious)
    ev = evaluate_scorings(dets, dataset.coco, scores)
    root = Path(__file__).resolve().parents[1]
    shown = path.resolve().relative_to(root) if path.resolve().is_relative_to(root) else path
    report: dict[str, Any] = {
        "command": " ".join(["python", *sys.argv]), "checkpoint": str(shown),
        "val": str(val_json) if args.val_json else "embedded", "images": len(dataset),
        "detections": len(dets), "predict": {k: ckpt["detector"][k] for k in
                                             ("imgsz", "conf", "iou", "max_det")},
        "predict_seconds": round(seconds, 1), "segm": ev["segm"], "bbox": ev["bbox"]}
    print(f"{len(dets)} detections on {len(dataset)} images ({seconds:.1f} s)")
    print("| scoring | mask AP | AP50 | AP75 | box AP |\n|---|---|---|---|---|")
    for name in scores:
        s, b = ev["segm"][name], ev["bbox"][name]
        print(f"| {name} | {s['AP']:.1f} | {s['AP50']:.1f} | {s['AP75']:.1f} | {b['AP']:.1f} |")
    if not args.no_validator and not args.val_json:
        from maskiou_integrations.ultralytics_data import embedded_dataset

        report["ultralytics_validator"] = validator_metrics(ckpt, embedded_dataset())
        print(f"ultralytics' validator: {report['ultralytics_validator']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
