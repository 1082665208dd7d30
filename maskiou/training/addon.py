"""Add-on mode: attach the MaskIoU head to a trained detector and train only the head, on the
cached detections of labeled images the detector did not train on.

    maskiou-addon --detector runs/plain/model_final.pt --train-json ann.json \\
        --train-images imgs/ --output-dir runs/addon

Like post-hoc calibration (temperature scaling fits on a validation split), the head learns how
good the detector's masks are where they look like test-time masks: on images the detector never
saw. On its own training images a detector is over-confident (45% of the shipped plain
detector's detections are true positives there, 38% on new images), so the add-on warns when it
is given them.

Each step is a lever with a measured row in the README's ablation table (``AddonConfig``):
which detections the head trains on (all final detections, target 0 for a false positive, or
only the matched ones, the paper's table 6 tau), whether it also sees the classification score
and the maskness, its width, its loss, mirrored copies of the images, and the recalibration.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from maskiou.attach import attach_maskiou_head, find_maskiou_head
from maskiou.head import MaskIoUHead
from maskiou.loss import select_class

from .checkpoint import CheckpointError, save_atomic
from .samples import HeadSamples, collect_samples, file_sha1, image_fingerprints

ADDON_VERSION = 2  # bumped when head-only training changes what it produces for a config
LOSSES = ("l2", "smooth_l1", "bce")
TARGETS = ("iou", "coco")
COCO_THRESHOLDS = torch.linspace(0.5, 0.95, 10)


def regression_target(true_ious: Tensor, kind: str) -> Tensor:
    """What the head learns to predict from a detection's true MaskIoU, Tensor[D] -> Tensor[D].

    ``"iou"``: the IoU itself (the paper). ``"coco"``: the share of COCO's IoU thresholds
    0.50, 0.55, ..., 0.95 it passes, i.e. at how many of the ten AP computations the detection
    can be a true positive: 0 below 0.5 (a 0.3 and a 0.45 mask are equally false positives),
    then 0.1 per 0.05 of IoU.
    """
    if kind == "iou":
        return true_ious
    if kind == "coco":
        thresholds = COCO_THRESHOLDS.to(true_ious.device)
        return (true_ious[:, None] >= thresholds - 1e-6).float().mean(1)
    raise ValueError(f"target must be one of {TARGETS}, got {kind!r}")


@dataclass
class AddonConfig:
    """Everything head-only training decides (saved in the add-on checkpoint)."""

    # the head
    conv_channels: int = 64
    reduce_channels: int = 0
    num_convs: int = 2
    fc_dim: int = 256
    fusion: str = "concat"
    mask_features: int = 0
    score_inputs: bool = True
    # its training samples: every final detection of the add-on images (target from the true
    # MaskIoU, 0 for a false positive); min_target >= 0 keeps only true MaskIoUs above it (the
    # paper trains on positives: > 0)
    min_target: float = -1.0
    # what the head regresses: "iou" (the true MaskIoU, as the paper) or "coco" (the share of
    # COCO's ten IoU thresholds 0.50:0.05:0.95 the mask passes: what mask AP rewards)
    target: str = "coco"
    flip: bool = True
    max_detections: int = 100  # per image, the highest scored (memory: see collect_samples)
    # optimization
    loss: str = "l2"
    # weight of a pairwise ranking loss on the final score (cls x predicted): within a class,
    # a detection whose target is higher by 0.1 should score higher (0: none)
    rank_weight: float = 0.1
    epochs: int = 12
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    # recalibration fitted on a held-out share of the add-on images (0: none)
    recalibration: str = "logistic"
    recalibration_holdout: float = 0.2

    def head_kwargs(self) -> dict[str, Any]:
        return {"conv_channels": self.conv_channels, "reduce_channels": self.reduce_channels,
                "num_convs": self.num_convs,
                "fc_dim": self.fc_dim, "fusion": self.fusion, "mask_features": self.mask_features,
                "score_inputs": 2 if self.score_inputs else 0,
                "output": "sigmoid" if self.loss == "bce" else "linear"}


def score_inputs(samples: HeadSamples) -> Tensor:
    """Tensor[D, 2]: the classification score and the maskness, the head's score inputs."""
    return torch.stack([samples.cls_scores, samples.maskness], dim=1)


def head_loss(pred: Tensor, target: Tensor, kind: str) -> Tensor:
    """Mean loss between predicted and true MaskIoU, Tensor[B] each."""
    if kind == "l2":
        return F.mse_loss(pred, target)
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target, beta=0.1)
    if kind == "bce":
        return F.binary_cross_entropy(pred.clamp(1e-6, 1 - 1e-6), target)
    raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")


def pairwise_rank_loss(scores: Tensor, target: Tensor, labels: Tensor, margin: float = 0.1,
                       temperature: float = 0.05) -> Tensor:
    """Mean logistic loss over the pairs of one class whose targets differ by more than
    ``margin``: the better detection's score should be the higher (AP ranks each class's
    detections by score). Tensor[B] each; exactly 0 (in the graph) without such a pair."""
    better = (target[:, None] > target[None, :] + margin) & (labels[:, None] == labels[None, :])
    if not bool(better.any()):
        return scores.sum() * 0.0
    diff = (scores[:, None] - scores[None, :]) / temperature
    return F.softplus(-diff)[better].mean()


def _head_forward(head: MaskIoUHead, samples: HeadSamples) -> Tensor:
    extra = score_inputs(samples) if head.score_inputs else None
    features = samples.roi_features.float().contiguous(memory_format=torch.channels_last)
    out = head(features, samples.mask_probs.float(), extra)
    return select_class(out, samples.labels)


@torch.no_grad()
def predict_ious(head: MaskIoUHead, samples: HeadSamples, batch_size: int = 1024) -> Tensor:
    """The head's predicted MaskIoU of each sample's class, clamped to [0, 1]: Tensor[D]."""
    head.eval()
    out = [_head_forward(head, samples.subset(torch.arange(i, min(i + batch_size, len(samples)))))
           for i in range(0, len(samples), batch_size)]
    return torch.cat(out).float().clamp(0, 1) if out else torch.zeros(0)


def train_head(head: MaskIoUHead, samples: HeadSamples, cfg: AddonConfig,
               progress: bool = True) -> list[dict[str, float]]:
    """Train ``head`` alone on cached samples (AdamW, cosine schedule, seeded batches).

    Returns the per-epoch log (mean loss, seconds).
    """
    if cfg.min_target >= 0:
        samples = samples.subset(torch.where(samples.targets > cfg.min_target)[0])
    if len(samples) == 0:
        raise ValueError("no detections to train the MaskIoU head on: the detector found "
                         "nothing on the add-on images (or none above min_target)")
    g = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = math.ceil(len(samples) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, steps_per_epoch // 2))
        * 0.5 * (1 + math.cos(math.pi * s / total)))
    log = []
    bar = tqdm(total=total, desc="MaskIoU head (detector frozen)", disable=not progress,
               dynamic_ncols=True)
    head.to(memory_format=torch.channels_last)  # about 10% faster convolutions on CPUs
    for epoch in range(cfg.epochs):
        head.train()
        t0, losses = time.perf_counter(), []
        for idx in torch.randperm(len(samples), generator=g).split(cfg.batch_size):
            batch = samples.subset(idx)
            pred = _head_forward(head, batch)
            target = regression_target(batch.targets, cfg.target)
            loss = head_loss(pred, target, cfg.loss)
            if cfg.rank_weight > 0:
                final = batch.cls_scores * pred.clamp(0, 1)
                loss = loss + cfg.rank_weight * pairwise_rank_loss(final, target, batch.labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.detach())
            bar.update(1)
        mean = float(torch.stack(losses).mean())
        if not math.isfinite(mean):
            raise FloatingPointError(f"MaskIoU head training diverged in epoch {epoch + 1}")
        log.append({"epoch": epoch + 1, "loss": mean, "seconds": time.perf_counter() - t0})
        bar.set_postfix(loss=f"{mean:.4f}")
    bar.close()
    head.to(memory_format=torch.contiguous_format).eval()
    return log


# --- the whole add-on run --------------------------------------------------------------------


def attach_to_detector(detector: str | Path, cfg: AddonConfig,
                       device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Load a plain detector checkpoint and attach a fresh head (detector frozen)."""
    from .models import load_trained_model

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
    kw = cfg.head_kwargs()
    return {**detector_config, "maskiou": True, "maskiou_conv_channels": kw["conv_channels"],
            "maskiou_num_convs": kw["num_convs"], "maskiou_fc_dim": kw["fc_dim"],
            "maskiou_fusion": kw["fusion"], "maskiou_reduce_channels": kw["reduce_channels"],
            "maskiou_mask_features": kw["mask_features"],
            "maskiou_score_inputs": kw["score_inputs"], "maskiou_output": kw["output"]}


def detector_training_images(meta: dict[str, Any]) -> dict[str, int]:
    """Fingerprints of the images the detector was trained on, when its config says where they
    are and they are still there (else empty)."""
    from maskiou.data.coco import CocoFormatError, CocoInstanceDataset

    from .config import TrainConfig
    from .paths import resolve_split

    try:
        cfg = TrainConfig(**meta["config"])
        if cfg.dataset == "synthetic" and not cfg.synthetic_dir:
            from .paths import synthetic_dir

            if not (synthetic_dir(cfg) / "manifest.json").is_file():
                return {}
        json_path, images = resolve_split(cfg, "train", progress=False)
        return image_fingerprints(CocoInstanceDataset(json_path, images))
    except (CocoFormatError, ValueError, TypeError, KeyError, OSError):
        return {}


def load_or_collect(model: nn.Module, dataset: Any, cache: Path | None, key: dict[str, Any],
                    flip_indices: list[int], device: str | torch.device, progress: bool,
                    max_detections: int = 100) -> HeadSamples:
    """The detections of every image of ``dataset``, and of the mirrored images at
    ``flip_indices``, from ``cache`` when it was written for the same ``key``."""
    key = {**key, "flipped": sorted(flip_indices), "max_detections": max_detections}
    if cache is not None and cache.is_file():
        try:
            samples, meta = HeadSamples.load(cache)
            if meta == key:
                return samples
        except Exception:  # noqa: BLE001 - an unreadable cache is simply rebuilt
            pass
    parts = [collect_samples(model, dataset, device=device, progress=progress,
                             max_detections=max_detections)]
    if flip_indices:
        parts.append(collect_samples(model, dataset, flip_indices, device=device, flip=True,
                                     progress=progress, max_detections=max_detections))
    samples = HeadSamples.concat(parts)
    if cache is not None:
        samples.save(cache, key)
    return samples


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
              progress: bool = True, log: Any = print) -> AddonFit:
    """Train the head attached to ``model`` (detector frozen) on the detections of ``dataset``
    and fit the recalibration on a held-out share of its images.

    The detector runs once over every image (and over the mirror images of those the head
    trains on, with ``cfg.flip``), cached in ``cache``; then the head trains for
    ``cfg.epochs`` on that cache, and the recalibration is fitted on the held-out images'
    detections, scored by the trained head.
    """
    from .recalibration import Recalibration

    fingerprints = image_fingerprints(dataset)
    ids = [int(i) for i in dataset.image_ids]
    held = holdout_images(ids, cfg.recalibration_holdout, cfg.seed) \
        if cfg.recalibration != "none" else set()
    flip_indices = [i for i, image_id in enumerate(ids) if image_id not in held] \
        if cfg.flip else []
    key = {"detector": detector_sha1, "images": sorted(fingerprints), "format": 2}
    t0 = time.perf_counter()
    samples = load_or_collect(model, dataset, cache, key, flip_indices, device, progress,
                              cfg.max_detections)
    log(f"add-on samples: {len(samples)} detections of {len(ids)} images"
        f"{f' and {len(flip_indices)} mirror images' if flip_indices else ''} "
        f"({time.perf_counter() - t0:.0f} s)")
    head = find_maskiou_head(model)
    train_rows, recal_rows = holdout_split(samples.image_ids, held)
    t0 = time.perf_counter()
    head_log = train_head(head, samples.subset(train_rows), cfg, progress)
    log(f"trained the MaskIoU head alone: {cfg.epochs} epochs, {len(train_rows)} detections of "
        f"{len(ids) - len(held)} images ({time.perf_counter() - t0:.0f} s)")
    recal = None
    if held:
        rows = samples.subset(recal_rows)
        recal = Recalibration.fit(
            cfg.recalibration, rows.cls_scores.numpy(), predict_ious(head, rows).numpy(),
            rows.maskness.numpy(), rows.rel_areas.numpy(), rows.labels.numpy(),
            rows.targets.numpy(), {h: i for h, i in fingerprints.items() if i in held},
            seed=cfg.seed, target=cfg.target)
        log(f"fitted the {cfg.recalibration} recalibration on {len(rows)} detections of "
            f"{len(held)} held-out images")
    return AddonFit(head_log, recal, len(samples), fingerprints)


def train_addon(detector: str | Path, train_json: str | Path, train_images: str | Path,
                output_dir: str | Path, cfg: AddonConfig | None = None, *,
                device: str | torch.device = "cpu", progress: bool = True,
                log: Any = print) -> Path:
    """Attach a head to ``detector``, train it alone on the detections of the add-on images
    (:func:`fit_addon`), and write ``output_dir/model_final.pt``.

    The checkpoint embeds the detector's weights (it loads without the detector's file) and
    records the add-on config, the head's training log, the images the head and the
    recalibration were fitted on, and the recalibration model.
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
    if seen:
        warnings.warn(f"{train_json}: {len(seen)} of its {len(dataset)} images are images the "
                      f"detector {detector} was trained on. A detector is over-confident on its "
                      "own training images, and a head trained there learns that optimism: give "
                      "the add-on labeled images the detector has not seen.", stacklevel=2)
    sha1 = file_sha1(detector)
    fit = fit_addon(model, dataset, cfg, detector_sha1=sha1, cache=out / "samples.pt",
                    device=device, progress=progress, log=log)
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


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One ``--addon-<field>`` flag per :class:`AddonConfig` field (default: the config's)."""
    from .config import add_dataclass_arguments

    add_dataclass_arguments(p, AddonConfig, "add-on head training (default: AddonConfig's values)",
                            prefix="addon_")


def config_from_args(args: argparse.Namespace, base: AddonConfig | None = None) -> AddonConfig:
    values = {f.name: getattr(args, f"addon_{f.name}") for f in dataclasses.fields(AddonConfig)}
    return dataclasses.replace(base or AddonConfig(),
                               **{k: v for k, v in values.items() if v is not None})


def main(argv: list[str] | None = None) -> int:
    from maskiou.data.coco import CocoFormatError

    p = argparse.ArgumentParser(prog="maskiou-addon", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--detector", required=True, help="plain Mask R-CNN checkpoint (maskiou-train "
                   "--no-maskiou, or the shipped maskiou/pretrained/synthetic_cpu_plain.pt)")
    p.add_argument("--train-json", required=True, help="labeled images the detector did not "
                   "train on: the head trains on its detections there")
    p.add_argument("--train-images", required=True)
    p.add_argument("--output-dir", default="runs/addon")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    add_config_flags(p)
    args = p.parse_args(argv)
    try:
        path = train_addon(args.detector, args.train_json, args.train_images, args.output_dir,
                           config_from_args(args), device=args.device,
                           progress=not args.no_progress)
    except (CocoFormatError, CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"maskiou-addon: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
