"""detectron2 models the maskiou way: the embedded recipe, training it with detectron2's own
``DefaultTrainer``, and turning a detectron2 model (a config file and a weights file, as
detectron2 names one) into a maskiou checkpoint that ``maskiou-addon``, ``coco_eval.py`` and the
demo load.

A maskiou checkpoint of a detectron2 model is a dict with ``"framework": "detectron2"``, the
full detectron2 config as YAML (``"detector": {"config": ..., "source": ...}``), the class
names (background first, as maskiou's datasets count them), ``label_to_cat_id`` and the state
dict. Nothing here needs detectron2's model zoo: the recipe sets every field it uses.

    python -m maskiou_integrations.detectron2_models train --output-dir runs/d2   # embedded
    python -m maskiou_integrations.detectron2_models train --output-dir runs/d2 \
        --train-json train.json --train-images train/ --max-iter 1500   # your data

On your data the recipe trains and tests at the images' median longer side, at most 128 px
(``--input-size`` changes both; detectron2 config changes after the flags win over it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

# The embedded recipe: the torchvision detector's scale (128 px images, ResNet-18, FPN of 64
# channels, 2x64 mask convs, 2x256 box FCs), with GroupNorm because batch norm
# statistics and detectron2's FrozenBN do not train from random weights.
EMBEDDED_RECIPE: dict[str, Any] = {
    "MODEL.META_ARCHITECTURE": "GeneralizedRCNN",
    "MODEL.MASK_ON": True,
    "MODEL.WEIGHTS": "",
    "MODEL.PIXEL_MEAN": [103.53, 116.28, 123.675],
    "MODEL.PIXEL_STD": [57.375, 57.12, 58.395],
    "MODEL.BACKBONE.NAME": "build_resnet_fpn_backbone",
    "MODEL.BACKBONE.FREEZE_AT": 0,
    "MODEL.RESNETS.DEPTH": 18,
    "MODEL.RESNETS.RES2_OUT_CHANNELS": 64,
    "MODEL.RESNETS.NORM": "GN",
    "MODEL.RESNETS.OUT_FEATURES": ["res2", "res3", "res4", "res5"],
    "MODEL.FPN.IN_FEATURES": ["res2", "res3", "res4", "res5"],
    "MODEL.FPN.OUT_CHANNELS": 64,
    "MODEL.FPN.NORM": "GN",
    "MODEL.ANCHOR_GENERATOR.SIZES": [[8], [16], [32], [64], [128]],
    "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": [[0.5, 1.0, 2.0]],
    "MODEL.RPN.IN_FEATURES": ["p2", "p3", "p4", "p5", "p6"],
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN": 600,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN": 300,
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 300,
    "MODEL.RPN.POST_NMS_TOPK_TEST": 100,
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE": 128,
    "MODEL.ROI_HEADS.NAME": "StandardROIHeads",
    "MODEL.ROI_HEADS.IN_FEATURES": ["p2", "p3", "p4", "p5"],
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 64,
    "MODEL.ROI_BOX_HEAD.NAME": "FastRCNNConvFCHead",
    "MODEL.ROI_BOX_HEAD.NUM_FC": 2,
    "MODEL.ROI_BOX_HEAD.FC_DIM": 256,
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": 7,
    "MODEL.ROI_MASK_HEAD.NAME": "MaskRCNNConvUpsampleHead",
    "MODEL.ROI_MASK_HEAD.NUM_CONV": 2,
    "MODEL.ROI_MASK_HEAD.CONV_DIM": 64,
    "MODEL.ROI_MASK_HEAD.NORM": "GN",
    "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION": 14,
    "INPUT.MIN_SIZE_TRAIN": (128,),
    "INPUT.MAX_SIZE_TRAIN": 128,
    "INPUT.MIN_SIZE_TEST": 128,
    "INPUT.MAX_SIZE_TEST": 128,
    "INPUT.MASK_FORMAT": "bitmask",
    "SOLVER.IMS_PER_BATCH": 8,
    "SOLVER.BASE_LR": 0.02,
    "SOLVER.WEIGHT_DECAY": 0.0001,
    "SOLVER.LR_SCHEDULER_NAME": "WarmupCosineLR",
    "SOLVER.WARMUP_ITERS": 100,
    "SOLVER.MAX_ITER": 3000,
    "SOLVER.CHECKPOINT_PERIOD": 500,
    "SOLVER.CLIP_GRADIENTS.ENABLED": True,
    "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": "norm",
    "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": 5.0,
    "TEST.EVAL_PERIOD": 0,
    "SEED": 0,
}


# The side (px) the recipe trains and tests at, at most: the torchvision synthetic-cpu preset's
# min_size/max_size, the scale the recipe's anchors (8-128 px) and head widths are sized for.
RECIPE_INPUT_SIZE = 128
INPUT_SIZE_KEYS = ("INPUT.MIN_SIZE_TRAIN", "INPUT.MAX_SIZE_TRAIN", "INPUT.MIN_SIZE_TEST",
                   "INPUT.MAX_SIZE_TEST")


# The recipe's optimizer (``--optimizer adamw``, the default): the torchvision synthetic-cpu
# preset's values (AdamW, lr 3e-3 at batch 8, 50 warm-up iterations from 1%). On the embedded
# data it reaches 56.8 mask AP in the 3,000 iterations where SGD at 0.02 (EMBEDDED_RECIPE's
# SOLVER values) reaches 47.4 (docs/frameworks/detectron2.md, "A recipe that carries").
ADAMW_VALUES: dict[str, Any] = {"SOLVER.BASE_LR": 0.003, "SOLVER.WARMUP_ITERS": 50,
                                "SOLVER.WARMUP_FACTOR": 0.01}
OPTIMIZERS = ("adamw", "sgd")
# The shipped plain detector (weights/synthetic_cpu_detectron2_plain.pt) was trained with SGD,
# before AdamW became the recipe's optimizer; ``coco_eval.py --retrain`` trains it that way.
SHIPPED_OPTIMIZER = "sgd"


def input_size_for(image_sizes: list[tuple[int, int]], cap: int = RECIPE_INPUT_SIZE) -> int:
    """The side S (px) the recipe gives a dataset whose images have ``image_sizes`` ((H, W)
    pairs): the median of their longer sides, at most ``cap``. Images are resized so that
    their longer side is S (``ResizeShortestEdge(S, max_size=S)``), the same in training and
    at test time; smaller images are not enlarged beyond their median size."""
    if not image_sizes:
        raise ValueError("input_size_for: no image sizes (an empty dataset)")
    longer = sorted(max(int(h), int(w)) for h, w in image_sizes)
    return max(1, min(int(cap), longer[(len(longer) - 1) // 2]))


def input_size_values(size: int) -> dict[str, Any]:
    """The detectron2 config values that train and test at ``size`` px (see
    :func:`input_size_for`)."""
    return {"INPUT.MIN_SIZE_TRAIN": (int(size),), "INPUT.MAX_SIZE_TRAIN": int(size),
            "INPUT.MIN_SIZE_TEST": int(size), "INPUT.MAX_SIZE_TEST": int(size)}


def embedded_config(num_classes: int, *, device: str = "cpu", max_iter: int | None = None,
                    workers: int = 2, **overrides: Any) -> Any:
    """The detectron2 ``CfgNode`` of the embedded recipe for ``num_classes`` classes
    (without background, detectron2's count); ``overrides``: ``{"SOLVER.BASE_LR": ...}``
    spelled with underscores for dots is not needed: pass a dict with dotted keys."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    values = {**EMBEDDED_RECIPE, "MODEL.ROI_HEADS.NUM_CLASSES": num_classes,
              "MODEL.DEVICE": device, "DATALOADER.NUM_WORKERS": workers, **overrides}
    if max_iter is not None:
        values["SOLVER.MAX_ITER"] = max_iter
    for key, value in values.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


def config_from_yaml(text: str) -> Any:
    """A detectron2 ``CfgNode`` from the YAML a checkpoint stores (``cfg.dump()``)."""
    from detectron2.config import CfgNode, get_cfg

    cfg = get_cfg()
    cfg.merge_from_other_cfg(CfgNode.load_cfg(text))
    return cfg


def config_from_file(path: str | Path) -> Any:
    """A detectron2 ``CfgNode`` from a config file, as detectron2's tools read one."""
    from detectron2.config import get_cfg

    if not Path(path).is_file():
        raise FileNotFoundError(f"detectron2 config {path} not found")
    cfg = get_cfg()
    cfg.merge_from_file(str(path))
    return cfg


def build_detector(cfg: Any, device: str | torch.device = "cpu") -> nn.Module:
    """``detectron2.modeling.build_model`` on ``device`` (eval mode, random weights)."""
    from detectron2.modeling import build_model

    cfg = cfg.clone()
    cfg.MODEL.DEVICE = str(torch.device(device))
    model = build_model(cfg)
    return model.eval()


def class_names_for(num_classes: int, names: list[str] | None) -> list[str]:
    """maskiou's class names (background first) of a detectron2 model of ``num_classes``."""
    if names is None:
        return ["__background__"] + [f"class_{i}" for i in range(num_classes)]
    if len(names) != num_classes + 1:
        raise ValueError(f"the detectron2 model has {num_classes} classes, the dataset "
                         f"{len(names) - 1} ({names[1:]})")
    return list(names)


def checkpoint_from_files(config_file: str | Path, weights_file: str | Path,
                          class_names: list[str], label_to_cat_id: dict[int, int]
                          ) -> dict[str, Any]:
    """A maskiou checkpoint of the detectron2 model a config file and a weights file (a
    detectron2 ``.pth``/``.pkl`` as ``DetectionCheckpointer`` reads them) name.

    ``class_names`` (background first) and ``label_to_cat_id`` come from the dataset the model
    is used on; its category ids, sorted, are detectron2's contiguous classes (as
    ``register_coco_instances`` numbers them).
    """
    from detectron2.checkpoint import DetectionCheckpointer

    cfg = config_from_file(config_file)
    if not Path(weights_file).is_file():
        raise FileNotFoundError(f"detectron2 weights {weights_file} not found")
    model = build_detector(cfg)
    class_names_for(cfg.MODEL.ROI_HEADS.NUM_CLASSES, class_names)
    DetectionCheckpointer(model).load(str(weights_file))
    return detector_checkpoint(cfg, model, class_names, label_to_cat_id,
                               source={"config": str(config_file), "weights": str(weights_file)})


def detector_checkpoint(cfg: Any, model: nn.Module, class_names: list[str],
                        label_to_cat_id: dict[int, int], source: dict[str, Any] | None = None,
                        half: bool = False) -> dict[str, Any]:
    """The maskiou checkpoint dict of a detectron2 ``model`` built from ``cfg`` (float16
    weights with ``half``, as the shipped one)."""
    state = {k: (v.half() if half and v.is_floating_point() else v).cpu()
             for k, v in model.state_dict().items()}
    cfg = cfg.clone()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    return {"framework": "detectron2", "model": state,
            "detector": {"config": cfg.dump(), "source": source or {}},
            "maskiou_head": None,
            "class_names": list(class_names),
            "label_to_cat_id": {int(k): int(v) for k, v in label_to_cat_id.items()}}


def float_coordinates(annotation: dict[str, Any]) -> dict[str, Any]:
    """``annotation`` (a detectron2 dataset dict's annotation) with its box and polygon
    coordinates as floats. detectron2's transforms resize coordinates in place in a numpy array
    of the JSON's own type, so a file that writes whole pixels (``"bbox": [60, 90, 300, 150]``)
    would have every box and polygon point truncated to a whole pixel after resizing (0.5 px
    too far up and left on average, at the recipe's 128 px)."""
    out = dict(annotation)
    if "bbox" in out:
        out["bbox"] = [float(v) for v in out["bbox"]]
    seg = out.get("segmentation")
    if isinstance(seg, list):
        out["segmentation"] = [[float(v) for v in poly] for poly in seg]
    return out


def register_dataset(data: Any) -> str:
    """Register a :class:`maskiou.data.coco.CocoInstanceDataset`'s file with detectron2 under
    maskiou's class mapping (``data.cat_id_to_label``, background names skipped; detectron2's
    class = label - 1), not the one ``register_coco_instances`` would make (every category,
    a skipped "background" included, numbered in id order). detectron2's own ``load_coco_json``
    reads the annotations; those of a skipped category are left out. Returns the name."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import load_coco_json

    json_file, image_root = str(data.ann_file), str(data.image_dir)
    contiguous = {int(c): label - 1 for c, label in data.cat_id_to_label.items()}
    digest = hashlib.sha1((json_file + json.dumps(sorted(contiguous.items()))).encode())
    name = f"maskiou_{data.ann_file.stem}_{digest.hexdigest()[:10]}"

    def load() -> list[dict[str, Any]]:
        records = load_coco_json(json_file, image_root)  # category ids as the file has them
        for r in records:
            r["annotations"] = [
                float_coordinates({**a, "category_id": contiguous[a["category_id"]]})
                for a in r["annotations"] if a["category_id"] in contiguous]
        return records

    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, load)
        MetadataCatalog.get(name).set(
            thing_classes=list(data.class_names[1:]), thing_dataset_id_to_contiguous_id=contiguous,
            json_file=json_file, image_root=image_root, evaluator_type="coco")
    return name


def train_embedded(output_dir: str | Path, *, device: str = "cpu", max_iter: int | None = None,
                   workers: int = 2, train_json: str | Path | None = None,
                   train_images: str | Path | None = None,
                   opts: list[str] | None = None, optimizer: str = "adamw",
                   input_size: int | None = None) -> Path:
    """Train the embedded recipe with detectron2's ``DefaultTrainer`` on the embedded training
    split (the torchvision detector's), or on ``train_json``/``train_images``, and write
    ``output_dir/model_final.pt`` (the maskiou checkpoint, float16), ``config.yaml`` and
    ``train_log.jsonl`` beside detectron2's own output. ``input_size``: the side the images
    are resized to in training and at test time (default :func:`input_size_for` of the
    training images: 128 on the embedded split). ``opts``: detectron2 config changes as its
    tools take them (``["SOLVER.BASE_LR", "0.01", ...]``), applied last. ``optimizer``:
    ``"adamw"`` (the recipe's, with :data:`ADAMW_VALUES`) or ``"sgd"`` (detectron2's
    default, lr 0.02, as the shipped detector was trained: :data:`SHIPPED_OPTIMIZER`).
    Returns the checkpoint's path."""
    from detectron2.engine import DefaultTrainer

    from maskiou.data.coco import CocoInstanceDataset, require_annotations
    from maskiou.models.checkpoint import save_atomic

    if optimizer not in OPTIMIZERS:
        raise ValueError(f"train_embedded: optimizer must be sgd or adamw, got {optimizer!r}")
    source: dict[str, Any] = {"trained_by": "detectron2 DefaultTrainer", "optimizer": optimizer}
    if train_json is None:
        from maskiou.models.config import resolve
        from maskiou.models.paths import resolve_split

        train_json, train_images = resolve_split(resolve("synthetic-cpu", {}), "train")
        source["train_split"] = "embedded"
    else:
        source.update(train_json=str(train_json), train_images=str(train_images))
    data = require_annotations(CocoInstanceDataset(train_json, train_images), "training")
    name = register_dataset(data)
    out = Path(output_dir)
    if input_size is None:
        input_size = input_size_for([data.get_height_and_width(i) for i in range(len(data))])
    source["input_size"] = int(input_size)
    cfg = embedded_config(data.num_classes - 1, device=device, max_iter=max_iter,
                          workers=workers, **input_size_values(input_size),
                          **(ADAMW_VALUES if optimizer == "adamw" else {}))
    if opts:
        cfg.merge_from_list(list(opts))
    print(f"detectron2 recipe: images resized to {input_size} px on their longer side in "
          "training and at test time (the images' median, at most "
          f"{RECIPE_INPUT_SIZE}); change with --input-size", file=sys.stderr)
    cfg.DATASETS.TRAIN = (name,)
    cfg.DATASETS.TEST = ()
    cfg.OUTPUT_DIR = str(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(cfg.dump())
    trainer = (_adamw_trainer() if optimizer == "adamw" else DefaultTrainer)(cfg)
    trainer.resume_or_load(resume=True)
    trainer.train()
    ckpt = detector_checkpoint(cfg, trainer.model, data.class_names, data.label_to_cat_id,
                               source=source, half=True)
    path = out / "model_final.pt"
    save_atomic(ckpt, path)
    metrics = out / "metrics.json"  # detectron2's JSONWriter: one JSON object per line
    if metrics.is_file():
        (out / "train_log.jsonl").write_text(metrics.read_text())
    return path


def _adamw_trainer() -> Any:
    """``DefaultTrainer`` with AdamW (lr ``SOLVER.BASE_LR``, decoupled weight decay
    ``SOLVER.WEIGHT_DECAY``) in place of SGD; clipping and schedule as the config says."""
    from detectron2.engine import DefaultTrainer
    from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

    class AdamWTrainer(DefaultTrainer):
        @classmethod
        def build_optimizer(cls, cfg: Any, model: nn.Module) -> torch.optim.Optimizer:
            params = get_default_optimizer_params(model, base_lr=cfg.SOLVER.BASE_LR,
                                                  weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM)
            return maybe_add_gradient_clipping(cfg, torch.optim.AdamW(
                params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY))

    return AdamWTrainer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train the embedded recipe with DefaultTrainer")
    t.add_argument("--output-dir", required=True)
    t.add_argument("--device", default="cpu")
    t.add_argument("--max-iter", type=int)
    t.add_argument("--workers", type=int, default=2)
    t.add_argument("--train-json")
    t.add_argument("--train-images")
    t.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS,
                   help="adamw (default): lr 3e-3, 50 warm-up iterations, the torchvision "
                   "recipe's; sgd: detectron2's, lr 0.02, as the shipped embedded detector was "
                   "trained")
    t.add_argument("--input-size", type=int, help="train and test at this side in px (default: "
                   f"the images' median longer side, at most {RECIPE_INPUT_SIZE})")
    t.add_argument("opts", nargs=argparse.REMAINDER, help="detectron2 config changes, KEY VALUE "
                   "pairs as its tools take them (e.g. SOLVER.BASE_LR 0.01); they win "
                   "over --input-size")
    args = p.parse_args(argv)
    path = train_embedded(args.output_dir, device=args.device, max_iter=args.max_iter,
                          workers=args.workers, train_json=args.train_json,
                          train_images=args.train_images, opts=args.opts,
                          optimizer=args.optimizer, input_size=args.input_size)
    print(json.dumps({"checkpoint": str(path)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
