"""Which dataset a config points at: the embedded synthetic one, a COCO root, or explicit files."""

from __future__ import annotations

import os
from pathlib import Path

from .config import TrainConfig


def cache_dir() -> Path:
    """Where generated data and default models live: ``$MASKIOU_CACHE`` or ``~/.cache/maskiou``."""
    return Path(os.environ.get("MASKIOU_CACHE", Path.home() / ".cache" / "maskiou"))


def synthetic_dir(cfg: TrainConfig) -> Path:
    if cfg.synthetic_dir:
        return Path(cfg.synthetic_dir)
    name = (f"synthetic_s{cfg.synthetic_image_size}_n{cfg.synthetic_train}-"
            f"{cfg.synthetic_val}_seed0")
    return cache_dir() / name


def resolve_split(cfg: TrainConfig, split: str, progress: bool = True) -> tuple[Path, Path]:
    """(annotation JSON, image folder) of ``split`` ("train" or "val") for ``cfg``."""
    from maskiou.data.coco import coco_root_paths

    explicit = (cfg.train_json, cfg.train_images) if split == "train" else (cfg.val_json,
                                                                           cfg.val_images)
    if explicit[0] or explicit[1]:
        if not (explicit[0] and explicit[1]):
            raise ValueError(f"--{split}-json and --{split}-images go together")
        return Path(explicit[0]), Path(explicit[1])
    if cfg.coco_root:
        return coco_root_paths(cfg.coco_root, split)
    if cfg.dataset == "synthetic":
        from maskiou.data.synthetic import generate_synthetic_coco

        paths = generate_synthetic_coco(synthetic_dir(cfg), cfg.synthetic_train,
                                        cfg.synthetic_val, seed=0,
                                        image_size=cfg.synthetic_image_size, progress=progress)
        if split == "train":
            return paths.train_json, paths.train_images
        return paths.val_json, paths.val_images
    raise ValueError(f"no {split} data: give --coco-root DIR, or --{split}-json and "
                     f"--{split}-images, or --dataset synthetic")


ADDON_SEED = 1  # the add-on images of the embedded data: generated with another seed


def addon_dir(num_images: int, image_size: int = 128, seed: int = ADDON_SEED) -> Path:
    """Where the embedded add-on images live: labeled images the shipped detector never saw
    (another ``seed``: another draw of such images)."""
    return cache_dir() / f"addon_s{image_size}_n{num_images}_seed{seed}"


SHIPPED = {"end_to_end": "synthetic_cpu.pt", "plain": "synthetic_cpu_plain.pt",
           "addon": "synthetic_cpu_addon.pt",
           "detectron2_plain": "synthetic_cpu_detectron2_plain.pt",
           "detectron2_addon": "synthetic_cpu_detectron2_addon.pt",
           "ultralytics_plain": "synthetic_cpu_ultralytics_plain.pt"}
MODEL_DIRS = {"end_to_end": "synthetic-cpu", "plain": "synthetic-cpu-plain",
              "addon": "synthetic-cpu-addon", "detectron2_plain": "synthetic-cpu-detectron2-plain",
              "detectron2_addon": "synthetic-cpu-detectron2-addon"}


def model_dir(name: str = "addon") -> Path:
    """Run folder of an embedded default model: ``"plain"`` (the detector the user has),
    ``"addon"`` (it with the head trained alone: the main job's model) or ``"end_to_end"``."""
    return cache_dir() / "models" / MODEL_DIRS[name]


def default_model_dir() -> Path:
    """Run folder of the main job's model: the add-on on the shipped plain detector."""
    return model_dir("addon")


def default_model_path() -> Path:
    """Checkpoint of the main job's model, written by ``benchmarks/coco_eval.py``."""
    return default_model_dir() / "model_final.pt"


def shipped_model_path(name: str = "end_to_end") -> Path:
    """A checkpoint shipped in the package, trained by this project's own trainer on the embedded
    data (its config and training log lie beside it): ``"plain"``, the Mask R-CNN a user has;
    ``"end_to_end"``, Mask Scoring R-CNN trained with the head; ``"addon"``, the plain one with
    the head the main job trains alone (shipped for the tests and the demo);
    ``"detectron2_plain"``, a plain detectron2 Mask R-CNN trained by detectron2's own trainer
    on the same images, and ``"detectron2_addon"``, it with the head the detectron2 main job
    trains alone; ``"ultralytics_plain"``, a YOLO11n-seg trained by ultralytics' own trainer on
    the same images (its training log is ``.train_log.csv``)."""
    return Path(__file__).resolve().parents[1] / "pretrained" / SHIPPED[name]
