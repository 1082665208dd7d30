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

import copy
import dataclasses
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from maskiou import distributed as D
from maskiou.attach import attach_maskiou_head, find_maskiou_head
from maskiou.models.checkpoint import CheckpointError, save_atomic
from maskiou.records import Detections, file_sha1, image_fingerprints

from .cache import CACHE_FORMAT, key_hash
from .collect import collect_samples, collect_to_cache
from .fit import AddonConfig, Samples, predict_ious, train_head

ADDON_VERSION = 6  # bumped when head-only training changes what it produces for a config
# (4: the recalibration weighs the uncontested signal too; 5: its map per class; 6: the
# thresholds of the masks worth keeping)


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


def addon_model_entries(meta: dict[str, Any], cfg: AddonConfig) -> dict[str, Any]:
    """What an add-on checkpoint needs to rebuild its model, for every framework alike: the
    detector's checkpoint entries (schema, framework, detector description, and the trainer's
    config where maskiou's own trainer made it) with this head's config."""
    kept = {k: meta[k] for k in ("schema", "framework", "detector", "config") if k in meta}
    if "config" in kept:  # maskiou's own recipe: the config records the head too
        kept["config"] = {**kept["config"], "maskiou": True,
                          "maskiou_head": dataclasses.asdict(cfg.head_config())}
    return {**kept, "maskiou_head": dataclasses.asdict(cfg.head_config())}


def detector_training_images(meta: dict[str, Any]) -> dict[str, int]:
    """Fingerprints of the images the detector was trained on, when its checkpoint records
    where they are (``detector.source``, :func:`maskiou.models.paths.training_source`) and they
    are still there (else empty)."""
    from maskiou.data.coco import CocoFormatError, CocoInstanceDataset
    from maskiou.models.paths import source_split

    try:
        split = source_split((meta.get("detector") or {}).get("source") or {})
        return image_fingerprints(CocoInstanceDataset(*split)) if split else {}
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


def image_folds(image_ids: list[int], k: int, seed: int) -> list[set[int]]:
    """The image ids dealt into ``k`` folds of (nearly) equal size by a permutation drawn with
    ``seed``: the folds of cross-fitting."""
    g = torch.Generator().manual_seed(seed + 1)
    order = torch.randperm(len(image_ids), generator=g).tolist()
    return [{int(image_ids[i]) for i in order[f::k]} for f in range(k)]


def addon_views(image_ids: list[int], held: set[int], cfg: AddonConfig) -> dict[str, list[int]]:
    """The views of the images the head trains on (not ``held``) that the collection adds:
    ``{"mirror": [indices], "photometric": [indices], ...}`` as ``cfg`` asks."""
    train = [i for i, image_id in enumerate(image_ids) if image_id not in held]
    zoom = cfg.zoom_views_for(len(image_ids))
    wanted = (("mirror", cfg.flip), ("photometric", cfg.photometric),
              ("zoom-in", "zoom-in" in zoom), ("zoom-out", "zoom-out" in zoom))
    return {v: train for v, on in wanted if on}


def cache_key(detector_sha1: str, fingerprints: dict[str, int], views: dict[str, list[int]],
              max_detections: int) -> dict[str, Any]:
    """What a collection depends on: the detector, the images, which views of which images,
    how many detections per image."""
    return {"detector": detector_sha1, "images": sorted(fingerprints), "format": CACHE_FORMAT,
            "views": {v: sorted(i) for v, i in sorted(views.items())},
            "max_detections": max_detections}


def load_or_collect(model: nn.Module, dataset: Any, cache: Path | None, key: dict[str, Any],
                    views: dict[str, list[int]], device: str | torch.device, progress: bool,
                    max_detections: int = 100, log: Any = print) -> Samples:
    """The samples of every image of ``dataset`` and of the other ``views`` of some of them:
    in ``cache/<key hash>/`` on disk (reused when complete, resumed when not), or in memory
    without ``cache``."""
    if cache is None:
        from .cache import HeadSamples
        from .views import VIEWS

        parts = [collect_samples(model, dataset, indices, device=device, view=view,
                                 progress=progress, max_detections=max_detections)
                 for view, indices in [("image", None)] + [(v, views[v]) for v in VIEWS
                                                           if views.get(v)]]
        return HeadSamples.concat(parts)
    return collect_to_cache(model, dataset, Path(cache) / key_hash(key)[:16], key, views,
                            device=device, max_detections=max_detections, progress=progress,
                            log=log)


def crossfit_head(head: nn.Module, samples: Samples, cfg: AddonConfig, image_ids: list[int],
                  progress: bool, workers: int | None, log: Any,
                  fold_states: list[dict[str, Tensor]] | None = None
                  ) -> tuple[Tensor, Tensor, list[dict[str, float]]]:
    """Cross-fitting: for each of ``cfg.crossfit_folds`` folds of the images, a head trained
    (from the same initialization) on the other folds' detections, every view of them,
    predicts the fold's own detections as the detector sees the images at test time. Then the
    head becomes the one trained on every image (``cfg.crossfit_final == "all"``) or the
    average of the fold heads' weights (``"average"``).

    Returns (rows predicted out of fold, Tensor[R]; their predictions, Tensor[R]; the final
    head's training log, or the last fold's with ``"average"``); the fold heads' weights are
    appended to ``fold_states`` when a list is given.
    """
    init = copy.deepcopy(head.state_dict())
    as_is = samples.views == 0
    oof = torch.zeros(len(samples))
    states, epoch_log = [], []
    folds = image_folds(image_ids, cfg.crossfit_folds, cfg.seed)
    for f, fold in enumerate(folds):
        inside = torch.isin(samples.image_ids, torch.tensor(sorted(fold), dtype=torch.int64))
        head.load_state_dict(init)
        t0 = time.perf_counter()
        epoch_log = train_head(head, samples, cfg, torch.where(~inside)[0], progress=progress,
                               workers=workers)
        rows = torch.where(inside & as_is)[0]
        oof[rows] = predict_ious(head, samples, rows, workers=workers)
        states.append(copy.deepcopy(head.state_dict()))
        log(f"cross-fitting: fold {f + 1} of {len(folds)} predicted by a head trained on the "
            f"other {len(image_ids) - len(fold)} images ({time.perf_counter() - t0:.0f} s)")
    if fold_states is not None:
        fold_states.extend(states)
    if cfg.crossfit_final == "average":
        # the weights averaged; buffers that are not floats (the calibration's flag) as they are
        head.load_state_dict({k: torch.stack([s[k] for s in states]).mean(0)
                              if init[k].is_floating_point() else init[k] for k in init})
    else:
        head.load_state_dict(init)
        epoch_log = train_head(head, samples, cfg, progress=progress, workers=workers)
    rows = torch.where(as_is)[0]
    return rows, oof[rows], epoch_log


def recalibration_signals(samples: Samples, rows: Tensor, pred: Tensor) -> Any:
    """Float64[R, 5]: the recalibration's signals of ``rows`` (the head's output ``pred``),
    each detection's ``uncontested`` among the rows of its image and view."""
    from .recalibration import detection_signals

    return detection_signals(
        samples.cls_scores[rows].numpy(), pred.numpy(), samples.maskness[rows].numpy(),
        samples.rel_areas[rows].numpy(), samples.boxes[rows].numpy(),
        samples.labels[rows].numpy(), samples.image_ids[rows].numpy(),
        samples.views[rows].numpy())


def match_inputs(samples: Samples, rows: Tensor, dataset: Any) -> Any:
    """What the AP search needs of ``rows`` (their masks, from a disk cache, and the dataset's
    ground truth); None for samples without masks (in memory, or a cache written without
    them)."""
    from .recalibration import MatchInputs

    if not hasattr(samples, "rles") or len(rows) == 0:
        return None
    rles = samples.rles(rows)
    if any(r is None for r in rles):
        return None
    labels = samples.labels[rows].numpy()
    return MatchInputs(dataset.coco, samples.image_ids[rows].numpy(),
                       np.array([dataset.label_to_cat_id[int(i)] for i in labels], np.int64),
                       rles)


def heldout_gain(samples: Samples, rows: Tensor, pred: Tensor, recal: Any, dataset: Any,
                 x: Any = None, match: Any = None) -> dict[str, Any] | None:
    """Mask AP on the add-on images of ``rows`` (detections their head did not train on) under
    maskness, the head's rescoring (``pred``) and the recalibration (its out-of-sample scores
    where its fit made them, else its scores of the signals ``x``): what the add-on gains on
    the user's own data. None for samples without their masks (in memory, or a cache written
    without them). The APs are pycocotools' (to 1e-9, rounded as :func:`maskiou.records.coco_ap`
    rounds) from :class:`~maskiou.addon.apsearch.MatchTable`; ``match`` (the
    :func:`match_inputs` of the same ``rows``, as the recalibration's fit used them) lends its
    IoUs, computed once."""
    if match is None:
        match = match_inputs(samples, rows, dataset)
    if match is None:
        return None
    cls, mk = samples.cls_scores[rows].numpy(), samples.maskness[rows].numpy()
    scores = {"maskness": cls * mk, "rescored": cls * np.clip(pred.numpy(), 0, 1)}
    if recal is not None:
        scores["recalibrated"] = (recal.check_scores if recal.check_scores is not None
                                  else recal.predict(x))
    table = match.table(np.arange(len(rows)))
    ap = {name: round(table.ap(s), 3) for name, s in scores.items()}
    best = max((k for k in ap if k != "maskness"), key=lambda k: ap[k])
    return {"images": len(table.images), "detections": int(len(rows)), "mask_ap": ap,
            "best": best, "gain": round(ap[best] - ap["maskness"], 3)}


def fit_score_map(head: nn.Module, recal: Any, samples: Samples, rows: Tensor, x: Any,
                  dataset: Any, log: Any = print, match: Any = None) -> None:
    """Fit and install the final score's map per class (:func:`maskiou.addon.recalibration.
    fit_class_curves`) on the held-out detections ``rows`` (signals ``x``): each one's target is
    the IoU COCO's greedy matching by the final score gives it at a mask IoU of at least 0.1
    (LaECE's, :mod:`maskiou.quality.laece`), 0 for a false positive. Skipped (the identity
    map) for samples without their masks. ``match``: the :func:`match_inputs` of the same
    ``rows`` where the caller has them (their masks are then not read again)."""
    from maskiou.quality.laece import laece
    from maskiou.quality.lrp import common_threshold, molrp
    from maskiou.quality.matching import match_all
    from maskiou.records import mask_iou_groups

    from .recalibration import apply_class_curves, fit_class_curves

    if match is None:
        match = match_inputs(samples, rows, dataset)
    if match is None:
        log("no masks cached: the final score gets no map per class")
        return
    labels = samples.labels[rows].numpy()
    n = len(labels)
    dets = Detections(match.image_ids, match.category_ids, np.zeros((n, 4)), match.rles,
                      np.zeros(n), np.zeros(n), np.zeros(n), labels, np.zeros(n), np.zeros(n))
    score = recal.predict(x)
    groups = mask_iou_groups(dets, dataset.coco)
    target = match_all(score, groups, 0.1)
    recal.class_curves = fit_class_curves(score, labels, target,
                                          len(head.calibration.class_curves))
    head.calibration.set_class_curves(recal.class_curves)
    after = apply_class_curves(score, labels, recal.class_curves)
    log(f"fitted the final score's map per class on {n} held-out detections: their mask LaECE "
        f"{laece(score, labels, target)[0]:.3f} -> {laece(after, labels, target)[0]:.3f} "
        "(in sample)")
    # the masks worth keeping: one LRP-optimal threshold of the mapped score for every class
    images = {int(i) for i in match.image_ids}
    cat_to_label = {c: lab for lab, c in dataset.label_to_cat_id.items()}
    num_gt: dict[int, int] = {}
    for ann in dataset.coco.loadAnns(dataset.coco.getAnnIds(imgIds=sorted(images),
                                                            iscrowd=False)):
        lab = cat_to_label[int(ann["category_id"])]
        num_gt[lab] = num_gt.get(lab, 0) + 1
    matched = match_all(after, groups, 0.5)
    threshold, mean = common_threshold(after, labels, matched, num_gt)
    recal.class_thresholds = stored_thresholds(threshold, len(head.calibration.class_thresholds))
    head.calibration.set_class_thresholds(recal.class_thresholds)
    log(f"the masks worth keeping: final score >= {threshold:.3f} in every class, the "
        f"LRP-optimal common threshold on those detections (mLRP {mean:.3f} there; each "
        f"class's own optimum: moLRP {molrp(after, labels, matched, num_gt)[0]:.3f})")


def stored_thresholds(threshold: float, num_labels: int) -> list[float]:
    """The thresholds the head stores for one common ``threshold`` of the final score: the same
    for every label but background's (0: never predicted), at most 2.0 (``inf``, keeping
    nothing, as a finite value above any score)."""
    return [0.0] + [min(float(threshold), 2.0)] * (num_labels - 1)


def recalibration_kept(gain: dict[str, Any] | None) -> bool:
    """Whether the model's final score becomes the recalibration: unless the held-out check
    (:func:`heldout_gain`, where it could run) measured it below the head's own rescoring, so
    that the model returns the better of the two on the user's own held-out images."""
    if gain is None or "recalibrated" not in gain["mask_ap"]:
        return True
    return gain["mask_ap"]["recalibrated"] >= gain["mask_ap"]["rescored"]


@dataclass
class AddonFit:
    """What :func:`fit_addon` did: the head's training log, the recalibration (or None), how
    many detections it used, the images the head and the recalibration saw, and the mask AP
    it measured on add-on images its head had not trained on (:func:`heldout_gain`, or None)."""

    log: list[dict[str, float]]
    recalibration: Any
    num_detections: int
    fitted_on: dict[str, int]
    heldout: dict[str, Any] | None = None
    fold_heads: list[dict[str, Tensor]] = dataclasses.field(default_factory=list)  # cross-fit


def report_gain(gain: dict[str, Any] | None, log: Any = print) -> None:
    """Log the held-out check (:func:`heldout_gain`, None: nothing to say), and warn where the
    add-on did not beat maskness there."""
    if gain is None:
        return
    ap = gain["mask_ap"]
    log(f"held-out check on {gain['images']} add-on images ({gain['detections']} detections "
        f"the head did not train on): mask AP maskness {ap['maskness']:.2f}, "
        + ", ".join(f"{k} {v:.2f}" for k, v in ap.items() if k != "maskness")
        + f": {gain['best']} {gain['gain']:+.2f} over maskness")
    if gain["gain"] <= 0:
        warnings.warn(f"the add-on did not beat maskness on its own held-out images "
                      f"({gain['best']} {gain['gain']:+.2f} mask AP on {gain['images']} "
                      "images): it may not help on this data; label more images, or use "
                      "the maskness score", stacklevel=3)


def fit_addon(model: nn.Module, dataset: Any, cfg: AddonConfig, *, detector_sha1: str,
              cache: Path | None = None, device: str | torch.device = "cpu",
              progress: bool = True, log: Any = print, workers: int | None = None
              ) -> AddonFit | None:
    """Train the head attached to ``model`` (detector frozen) on the detections of ``dataset``
    and fit the recalibration on detections the head did not train on.

    The detector runs once over every image (and over the other views of those the head trains
    on: ``cfg.flip``, ``cfg.photometric``, ``cfg.zoom``), cached in ``cache`` (under torchrun each
    rank collects its share of the shards); then rank 0 trains the head. The recalibration is
    fitted on a held-out share of the images (``cfg.recalibration_holdout``), or with
    ``cfg.crossfit_folds`` >= 2 on the out-of-fold predictions of every image
    (:func:`crossfit_head`). Returns None on the other ranks.
    """
    from .recalibration import Recalibration

    fingerprints = image_fingerprints(dataset)
    ids = [int(i) for i in dataset.image_ids]
    folds = cfg.folds_for(len(ids))
    crossfit = folds >= 2 and cfg.recalibration != "none"
    held = holdout_images(ids, cfg.recalibration_holdout, cfg.seed) \
        if cfg.recalibration != "none" and not crossfit else set()
    views = addon_views(ids, held, cfg)
    key = cache_key(detector_sha1, fingerprints, views, cfg.max_detections)
    t0 = time.perf_counter()
    samples = load_or_collect(model, dataset, cache, key, views, device, progress,
                              cfg.max_detections, log)
    if not D.is_main():
        return None
    extra = ", ".join(f"{len(i)} {v} views" for v, i in views.items())
    log(f"add-on samples: {len(samples)} detections of {len(ids)} images"
        f"{f' and {extra}' if extra else ''} ({time.perf_counter() - t0:.0f} s)")
    head = find_maskiou_head(model)
    t0 = time.perf_counter()
    fold_heads: list[dict[str, Tensor]] = []  # the cross-fitting's fold heads, kept in memory
    if crossfit:
        recal_rows, pred, head_log = crossfit_head(
            head, samples, dataclasses.replace(cfg, crossfit_folds=folds), ids, progress,
            workers, log, fold_heads)
        trained = (len(samples), len(ids))
    else:
        train_rows, recal_rows = holdout_split(samples.image_ids, held)
        head_log = train_head(head, samples, cfg, train_rows, progress=progress,
                              workers=workers)
        pred = predict_ious(head, samples, recal_rows, workers=workers)
        trained = (len(train_rows), len(ids) - len(held))
    rate = sum(e["samples_per_s"] for e in head_log) / len(head_log)
    log(f"trained the MaskIoU head alone: {len(head_log)} epochs, {trained[0]} detections of "
        f"{trained[1]} images ({time.perf_counter() - t0:.0f} s, {rate:.0f} samples/s)")
    recal, x, match = None, None, None
    if cfg.recalibration != "none":
        r = recal_rows
        fitted = set(ids) if crossfit else held  # the images whose detections it sees
        x = recalibration_signals(samples, r, pred)
        match = match_inputs(samples, r, dataset)
        recal = Recalibration.fit(
            cfg.recalibration, x, samples.targets[r].numpy(),
            {h: i for h, i in fingerprints.items() if i in fitted}, match, seed=cfg.seed,
            target=cfg.target)
        how = "out-of-fold predictions" if crossfit else "held-out images"
        log(f"fitted the {recal.kind} recalibration on {len(r)} detections of "
            f"{len(fitted)} images ({how})" + ("" if match is not None or recal.kind ==
                                                cfg.recalibration else
                                                ": no masks cached to search the weights by AP"))
    gain = heldout_gain(samples, recal_rows, pred, recal, dataset, x, match)
    report_gain(gain, log)
    if recal is not None:
        if recalibration_kept(gain):
            recal.install(head)  # the model's own final score from now on
            fit_score_map(head, recal, samples, recal_rows, x, dataset, log, match)
        else:
            log(f"the model returns the head's rescoring: the recalibration scored "
                f"{gain['mask_ap']['recalibrated']:.2f} against its "
                f"{gain['mask_ap']['rescored']:.2f} on the held-out detections")
    return AddonFit(head_log, recal, len(samples), fingerprints, gain, fold_heads)


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
    from maskiou.data.coco import CocoInstanceDataset, require_annotations

    dataset = require_annotations(CocoInstanceDataset(train_json, train_images), "the add-on")
    cfg = cfg or AddonConfig()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, meta = attach_to_detector(detector, cfg, device)
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
        "model": model.state_dict(), **addon_model_entries(meta, cfg),
        "class_names": meta["class_names"], "label_to_cat_id": meta["label_to_cat_id"],
        "format": "maskiou-addon-1",
        "addon": {"config": dataclasses.asdict(cfg), "detector": str(detector),
                  "detector_sha1": sha1, "train_json": str(train_json),
                  "fitted_on": fit.fitted_on, "num_detections": fit.num_detections,
                  "log": fit.log, "heldout": fit.heldout,
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
