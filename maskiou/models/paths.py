"""Which dataset a config points at: the embedded synthetic one, a COCO root, or explicit files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .config import TrainConfig


def cache_dir() -> Path:
    """Where generated data and default models live: ``$MASKIOU_CACHE`` or ``~/.cache/maskiou``."""
    return Path(os.environ.get("MASKIOU_CACHE", Path.home() / ".cache" / "maskiou"))


def _generator_tag(generator: str) -> str:
    """What a cache folder's name says of its generator: nothing for the embedded "shapes"
    (the names of existing caches stay), ``-<generator>`` for any other."""
    return "" if generator == "shapes" else f"-{generator}"


def synthetic_dir(cfg: TrainConfig) -> Path:
    """Where ``cfg``'s synthetic data lives: ``cfg.synthetic_dir`` or a cache folder named by
    the generator and its parameters (two generators never share one)."""
    if cfg.synthetic_dir:
        return Path(cfg.synthetic_dir)
    name = (f"synthetic{_generator_tag(cfg.synthetic_generator)}_s{cfg.synthetic_image_size}"
            f"_n{cfg.synthetic_train}-{cfg.synthetic_val}_seed0")
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
                                        image_size=cfg.synthetic_image_size, progress=progress,
                                        generator=cfg.synthetic_generator)
        if split == "train":
            return paths.train_json, paths.train_images
        return paths.val_json, paths.val_images
    raise ValueError(f"no {split} data: give --coco-root DIR, or --{split}-json and "
                     f"--{split}-images, or --dataset synthetic")


def training_source(cfg: TrainConfig) -> dict[str, Any]:
    """Where a detector trained with ``cfg`` took its training images from, as checkpoints
    record it (``detector.source``): explicit files, a COCO root's train split, or the embedded
    synthetic data (``train_split: embedded`` with its generator's settings); {} if unknown."""
    from maskiou.data.coco import coco_root_paths

    if cfg.train_json or cfg.train_images:
        return {"train_json": cfg.train_json, "train_images": cfg.train_images}
    if cfg.coco_root:
        json_path, images = coco_root_paths(cfg.coco_root, "train")
        return {"train_json": str(json_path), "train_images": str(images)}
    if cfg.dataset == "synthetic":
        return {"train_split": "embedded",
                "synthetic": {"dir": cfg.synthetic_dir, "train": cfg.synthetic_train,
                              "val": cfg.synthetic_val, "image_size": cfg.synthetic_image_size,
                              "generator": cfg.synthetic_generator}}
    return {}


def source_split(source: dict[str, Any]) -> tuple[Path, Path] | None:
    """(annotation JSON, image folder) of a detector's recorded training ``source``
    (:func:`training_source`; another framework's embedded detector records only
    ``train_split: embedded``), or None when unknown or not generated here (nothing is
    generated)."""
    if source.get("train_json") and source.get("train_images"):
        return Path(source["train_json"]), Path(source["train_images"])
    if source.get("train_split") != "embedded":
        return None
    from .config import resolve

    gen = source.get("synthetic") or {}
    cfg = resolve("synthetic-cpu", {"synthetic_dir": gen.get("dir"),
                                    "synthetic_train": gen.get("train"),
                                    "synthetic_val": gen.get("val"),
                                    "synthetic_image_size": gen.get("image_size"),
                                    "synthetic_generator": gen.get("generator")})
    if not (synthetic_dir(cfg) / "manifest.json").is_file():
        return None
    return resolve_split(cfg, "train", progress=False)


ADDON_SEED = 1  # the add-on images of the embedded data: generated with another seed


def addon_dir(num_images: int, image_size: int = 128, seed: int = ADDON_SEED,
              generator: str = "shapes") -> Path:
    """Where the embedded add-on images live: labeled images the shipped detector never saw
    (another ``seed``: another draw of such images); ``generator`` "scenes": those of the
    second generator, for a detector trained on its seed-0 images."""
    return cache_dir() / f"addon{_generator_tag(generator)}_s{image_size}_n{num_images}_seed{seed}"


PRETRAINED = Path(__file__).resolve().parents[1] / "pretrained"
"""The shipped models inside the package (in the wheel): torchvision's, what the main job and
the demo need."""
REPOSITORY_WEIGHTS = Path(__file__).resolve().parents[2] / "weights"
"""The other shipped models: the repository's ``weights/`` folder, beside the package in a clone
(an editable install), never in the wheel. ``weights/README.md`` states each file's licence."""
SHIPPED_DIRS = (PRETRAINED, REPOSITORY_WEIGHTS)
DEFAULT_FRAMEWORK = "torchvision"  # the main job's (``coco_eval.py --detector-framework``)
KINDS = ("plain", "addon", "end_to_end")
"""The shipped models of the embedded data, per framework: ``plain`` (the detector a user has),
``addon`` (it with the head the main job trains alone) and ``end_to_end`` (Mask Scoring R-CNN
trained with the head by maskiou's own trainer). Each is ``synthetic_cpu_<name>.pt``,
``<name>`` = ``<framework>_<kind>``, with its config and training log beside it, in
:data:`PRETRAINED` (torchvision) or :data:`REPOSITORY_WEIGHTS` (detectron2, ultralytics)."""


def _file_name(name: str) -> str:
    return f"synthetic_cpu_{name}.pt"


def shipped_model_path(name: str) -> Path:
    """A shipped checkpoint, ``name`` = ``<framework>_<kind>`` (see :data:`KINDS`), e.g.
    ``"torchvision_plain"``, ``"detectron2_addon"``: the file in the package or in the
    repository's ``weights/`` folder; where neither holds it, the path it would have in
    ``weights/`` (what the package lacks is the repository's: :func:`missing_shipped`)."""
    for folder in SHIPPED_DIRS:
        path = folder / _file_name(name)
        if path.is_file():
            return path
    return REPOSITORY_WEIGHTS / _file_name(name)


def missing_shipped(name: str) -> str:
    """One line saying where the shipped model ``name`` is to be had when it is not here."""
    held = ", ".join(_plain_frameworks((PRETRAINED,)))
    return (f"the shipped {name} model is not in the installed package (it holds {held}'s): "
            f"the repository's weights/ folder holds the others (licences in weights/README.md); "
            f"run from a clone (pip install -e .) or give --checkpoint")


def shipped_name(framework: str, kind: str) -> str | None:
    """The name of the shipped ``kind`` model of ``framework``, or None when none is here."""
    name = f"{framework}_{kind}"
    return name if shipped_model_path(name).is_file() else None


def shipped_frameworks() -> list[str]:
    """The frameworks with a shipped plain detector of the embedded data here (in a clone:
    all three; from a wheel: torchvision)."""
    return _plain_frameworks(SHIPPED_DIRS)


def _plain_frameworks(folders: tuple[Path, ...]) -> list[str]:
    return sorted({p.name[len("synthetic_cpu_"):-len("_plain.pt")] for folder in folders
                   for p in folder.glob("synthetic_cpu_*_plain.pt")})


def default_model(kind: str) -> str:
    """The name of the main job's framework's shipped ``kind`` model (``"torchvision_plain"``,
    ...)."""
    return f"{DEFAULT_FRAMEWORK}_{kind}"


def model_dir(name: str = f"{DEFAULT_FRAMEWORK}_addon") -> Path:
    """Run folder of an embedded default model once installed or trained, ``name`` as in
    :func:`shipped_model_path`: ``cache_dir()/models/synthetic-cpu-<framework>-<kind>``."""
    return cache_dir() / "models" / f"synthetic-cpu-{name.replace('_', '-')}"


def default_model_dir() -> Path:
    """Run folder of the main job's model: the add-on on the shipped plain detector."""
    return model_dir(f"{DEFAULT_FRAMEWORK}_addon")


def default_model_path() -> Path:
    """Checkpoint of the main job's model, written by ``benchmarks/coco_eval.py``."""
    return default_model_dir() / "model_final.pt"
