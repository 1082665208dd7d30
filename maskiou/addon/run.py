"""The whole add-on run: attach a head to a trained detector, collect its detections of labeled
images it did not train on (to the disk cache), train the head alone, fit the recalibration,
and write one checkpoint.

Like post-hoc calibration (temperature scaling fits on a validation split), the head learns how
good the detector's masks are where they look like test-time masks: on images the detector never
saw. On its own training images a detector is over-confident (45% of the shipped plain
detector's detections are true positives there, 38% on new images), so the add-on warns when it
is given them.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from maskiou import distributed as D
from maskiou.attach import attach_maskiou_head, find_maskiou_head
from maskiou.models.checkpoint import CheckpointError, save_atomic
from maskiou.records import file_sha1, image_fingerprints

from .cache import CACHE_FORMAT, key_hash
from .collect import collect_samples, collect_to_cache
from .fit import AddonConfig, Samples, predict_ious, train_head

ADDON_VERSION = 3  # bumped when head-only training changes what it produces for a config


def attach_to_detector(detector: str | Path, cfg: AddonConfig,
                       device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Load a plain detector checkpoint and attach a fresh head (detector frozen)."""
    from maskiou.models.load import load_trained_model

    model, meta = load_trained_model(detector, device)
    if find_maskiou_head(model) is not None:
        raise CheckpointError(f"{detector}: this model already has a MaskIoU head; the add-on "
                              "starts from the plain detector")
    torch.manual_seed(cfg.seed)
    attach_maskiou_head(model, freeze_detector=True, rescore_outputs=True, **cfg.head_kwargs())
    model.to(device).eval()
    return model, meta


def addon_train_config(detector_config: dict[str, Any], cfg: AddonConfig) -> dict[str, Any]:
    """The TrainConfig dict that rebuilds the attached model (detector + this head)."""
    from maskiou.models.config import TrainConfig

    return {**TrainConfig.from_dict(detector_config).to_dict(), "maskiou": True,
            "maskiou_head": dataclasses.asdict(cfg.head_config())}


def detector_training_images(meta: dict[str, Any]) -> dict[str, int]:
    """Fingerprints of the images the detector was trained on, when its config says where they
    are and they are still there (else empty)."""
    from maskiou.data.coco import CocoFormatError, CocoInstanceDataset
    from maskiou.models.config import TrainConfig
    from maskiou.models.paths import resolve_split, synthetic_dir

    try:
        cfg = TrainConfig.from_dict(meta["config"])
        if cfg.dataset == "synthetic" and not cfg.synthetic_dir:
            if not (synthetic_dir(cfg) / "manifest.json").is_file():
                return {}
        json_path, images = resolve_split(cfg, "train", progress=False)
        return image_fingerprints(CocoInstanceDataset(json_path, images))
    except (CocoFormatError, ValueError, TypeError, KeyError, OSError):
        return {}


def holdout_images(image_ids: list[int], share: float, seed: int) -> set[int]:
    """The ids of ``share`` of the images, drawn with ``seed``: held out of head training for
    the recalibration to be fitted on detections the head did not train on."""
    g = torch.Generator().manual_seed(seed + 1)
    order = torch.randperm(len(image_ids), generator=g).tolist()
    return {int(image_ids[i]) for i in order[:int(round(share * len(image_ids)))]}


def holdout_split(sample_ids: Tensor, held: set[int]) -> tuple[Tensor, Tensor]:
    """(rows for the head, rows held out) of samples whose image ids are ``sample_ids``."""
    out = torch.isin(sample_ids, torch.tensor(sorted(held), dtype=torch.int64))
    return torch.where(~out)[0], torch.where(out)[0]


def cache_key(detector_sha1: str, fingerprints: dict[str, int], flip_indices: list[int],
              max_detections: int) -> dict[str, Any]:
    """What a collection depends on: the detector, the images, which are mirrored, how many
    detections per image."""
    return {"detector": detector_sha1, "images": sorted(fingerprints), "format": CACHE_FORMAT,
            "flipped": sorted(flip_indices), "max_detections": max_detections}


def load_or_collect(model: nn.Module, dataset: Any, cache: Path | None, key: dict[str, Any],
                    flip_indices: list[int], device: str | torch.device, progress: bool,
                    max_detections: int = 100, log: Any = print) -> Samples:
    """The samples of every image of ``dataset`` and of the mirror images at ``flip_indices``:
    in ``cache/<key hash>/`` on disk (reused when complete, resumed when not), or in memory
    without ``cache``."""
    if cache is None:
        parts = [collect_samples(model, dataset, device=device, progress=progress,
                                 max_detections=max_detections)]
        if flip_indices:
            parts.append(collect_samples(model, dataset, flip_indices, device=device, flip=True,
                                         progress=progress, max_detections=max_detections))
        from .cache import HeadSamples

        return HeadSamples.concat(parts)
    return collect_to_cache(model, dataset, Path(cache) / key_hash(key)[:16], key, flip_indices,
                            device=device, max_detections=max_detections, progress=progress,
                            log=log)


@dataclass
class AddonFit:
    """What :func:`fit_addon` did: the head's training log, the recalibration (or None), how
    many detections it used, and the images the head and the recalibration saw."""

    log: list[dict[str, float]]
    recalibration: Any
    num_detections: int
    fitted_on: dict[str, int]


def fit_addon(model: nn.Module, dataset: Any, cfg: AddonConfig, *, detector_sha1: str,
              cache: Path | None = None, device: str | torch.device = "cpu",
              progress: bool = True, log: Any = print, workers: int | None = None
              ) -> AddonFit | None:
    """Train the head attached to ``model`` (detector frozen) on the detections of ``dataset``
    and fit the recalibration on a held-out share of its images.

    The detector runs once over every image (and over the mirror images of those the head
    trains on, with ``cfg.flip``), cached in ``cache`` (under torchrun each rank collects its
    share of the shards); then rank 0 trains the head for ``cfg.epochs`` on that cache, and
    fits the recalibration on the held-out images' detections, scored by the trained head.
    Returns None on the other ranks.
    """
    from .recalibration import Recalibration

    fingerprints = image_fingerprints(dataset)
    ids = [int(i) for i in dataset.image_ids]
    held = holdout_images(ids, cfg.recalibration_holdout, cfg.seed) \
        if cfg.recalibration != "none" else set()
    flip_indices = [i for i, image_id in enumerate(ids) if image_id not in held] \
        if cfg.flip else []
    key = cache_key(detector_sha1, fingerprints, flip_indices, cfg.max_detections)
    t0 = time.perf_counter()
    samples = load_or_collect(model, dataset, cache, key, flip_indices, device, progress,
                              cfg.max_detections, log)
    if not D.is_main():
        return None
    log(f"add-on samples: {len(samples)} detections of {len(ids)} images"
        f"{f' and {len(flip_indices)} mirror images' if flip_indices else ''} "
        f"({time.perf_counter() - t0:.0f} s)")
    head = find_maskiou_head(model)
    train_rows, recal_rows = holdout_split(samples.image_ids, held)
    t0 = time.perf_counter()
    head_log = train_head(head, samples, cfg, train_rows, progress=progress, workers=workers)
    rate = sum(e["samples_per_s"] for e in head_log) / len(head_log)
    log(f"trained the MaskIoU head alone: {cfg.epochs} epochs, {len(train_rows)} detections of "
        f"{len(ids) - len(held)} images ({time.perf_counter() - t0:.0f} s, {rate:.0f} samples/s)")
    recal = None
    if held:
        pred = predict_ious(head, samples, recal_rows, workers=workers).numpy()
        r = recal_rows
        recal = Recalibration.fit(
            cfg.recalibration, samples.cls_scores[r].numpy(), pred,
            samples.maskness[r].numpy(), samples.rel_areas[r].numpy(),
            samples.labels[r].numpy(), samples.targets[r].numpy(),
            {h: i for h, i in fingerprints.items() if i in held}, seed=cfg.seed,
            target=cfg.target)
        log(f"fitted the {cfg.recalibration} recalibration on {len(r)} detections of "
            f"{len(held)} held-out images")
    return AddonFit(head_log, recal, len(samples), fingerprints)


def train_addon(detector: str | Path, train_json: str | Path, train_images: str | Path,
                output_dir: str | Path, cfg: AddonConfig | None = None, *,
                device: str | torch.device = "cpu", progress: bool = True,
                log: Any = print, cache_dir: str | Path | None = None,
                workers: int | None = None) -> Path | None:
    """Attach a head to ``detector``, train it alone on the detections of the add-on images
    (:func:`fit_addon`), and write ``output_dir/model_final.pt`` (on rank 0; other ranks only
    collect and return None).

    The checkpoint embeds the detector's weights (it loads without the detector's file) and
    records the add-on config, the head's training log, the images the head and the
    recalibration were fitted on, and the recalibration model. The detections are cached in
    ``cache_dir`` (default ``output_dir/cache``).
    """
    from maskiou.data.coco import CocoInstanceDataset

    cfg = cfg or AddonConfig()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, meta = attach_to_detector(detector, cfg, device)
    dataset = CocoInstanceDataset(train_json, train_images)
    if dataset.class_names != meta["class_names"]:
        raise ValueError(f"{train_json}: classes {dataset.class_names} differ from the "
                         f"detector's {meta['class_names']} ({detector})")
    seen = image_fingerprints(dataset).keys() & detector_training_images(meta).keys()
    if seen and D.is_main():
        warnings.warn(f"{train_json}: {len(seen)} of its {len(dataset)} images are images the "
                      f"detector {detector} was trained on. A detector is over-confident on its "
                      "own training images, and a head trained there learns that optimism: give "
                      "the add-on labeled images the detector has not seen.", stacklevel=2)
    sha1 = file_sha1(detector)
    fit = fit_addon(model, dataset, cfg, detector_sha1=sha1,
                    cache=Path(cache_dir) if cache_dir else out / "cache", device=device,
                    progress=progress, log=log, workers=workers)
    if fit is None:
        return None
    ckpt = {
        "model": model.state_dict(), "config": addon_train_config(meta["config"], cfg),
        "class_names": meta["class_names"], "label_to_cat_id": meta["label_to_cat_id"],
        "format": "maskiou-addon-1",
        "addon": {"config": dataclasses.asdict(cfg), "detector": str(detector),
                  "detector_sha1": sha1, "train_json": str(train_json),
                  "fitted_on": fit.fitted_on, "num_detections": fit.num_detections,
                  "log": fit.log,
                  "recalibration": fit.recalibration.state() if fit.recalibration else None},
    }
    path = out / "model_final.pt"
    save_atomic(ckpt, path)
    (out / "addon_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    return path


def load_recalibration(meta: dict[str, Any]) -> Any:
    """The :class:`Recalibration` stored in an add-on checkpoint's metadata, or None."""
    from .recalibration import Recalibration

    state = (meta.get("addon") or {}).get("recalibration")
    return Recalibration.from_state(state) if state else None
