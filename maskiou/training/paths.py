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


def default_model_dir() -> Path:
    """Run folder of the embedded default model (``synthetic-cpu`` with the head)."""
    return cache_dir() / "models" / "synthetic-cpu"


def default_model_path() -> Path:
    """Checkpoint of the embedded default model, written by ``benchmarks/coco_eval.py``."""
    return default_model_dir() / "model_final.pt"


def shipped_model_path() -> Path:
    """The warm-start checkpoint shipped in the package (``synthetic-cpu``, trained by this
    project's own trainer; its config and training log lie beside it)."""
    return Path(__file__).resolve().parents[1] / "pretrained" / "synthetic_cpu.pt"
