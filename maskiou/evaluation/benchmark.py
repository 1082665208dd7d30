"""The main job behind ``benchmarks/coco_eval.py``: get the models, score, report.

With no data flags it runs the add-on story on the embedded synthetic data: the shipped plain
Mask R-CNN (the detector a user has) gets the head attached, the head trains alone on the
detections of add-on images the detector never saw, and the validation split is scored with
every scoring; the shipped end-to-end Mask Scoring R-CNN is scored beside it. Trained models
are cached under ``maskiou.models.paths.cache_dir()``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskiou import distributed as D
from maskiou.addon.fit import AddonConfig
from maskiou.addon.run import ADDON_VERSION, load_recalibration, train_addon
from maskiou.attach import find_maskiou_head
from maskiou.models.checkpoint import CheckpointError, join_detector, load_checkpoint, save_atomic
from maskiou.models.config import TrainConfig
from maskiou.models.load import load_trained_model
from maskiou.models.paths import (
    DEFAULT_FRAMEWORK,
    addon_dir,
    default_model,
    missing_shipped,
    model_dir,
    resolve_split,
    shipped_model_path,
    shipped_name,
)
from maskiou.quality.laece import reliability_bins
from maskiou.quality.lrp import molrp
from maskiou.quality.matching import match_all
from maskiou.records import (
    Detections,
    file_sha1,
    image_fingerprints,
    mask_iou_groups,
    true_mask_ious,
)

from .cocoeval import evaluate_detections
from .cost import head_cost
from .gallery import rank_change_gallery
from .metrics import final_score_calibration, scorings
from .predict import predict
from .report import best_learned, markdown_report, write_metrics, write_plots

ADDON_IMAGES = 2000  # add-on images of the embedded default (see the README's ablation)


def log(msg: str) -> None:
    if D.is_main():
        print(msg, flush=True)


def same_config(stored: dict[str, Any], cfg: TrainConfig) -> bool:
    """Whether a checkpoint's stored config is ``cfg``: fields added to TrainConfig since it
    was written count with their defaults (which do not change what a run does)."""
    try:
        return TrainConfig.from_dict(stored).to_dict() == cfg.to_dict()
    except TypeError:
        return False


def install_shipped_model(cfg: TrainConfig, run_dir: Path, name: str) -> Path | None:
    """Put the shipped checkpoint ``name`` in ``run_dir`` if it was trained with ``cfg`` (and
    nothing is there yet). Returns its new path, or None."""
    shipped = shipped_model_path(name)
    final = run_dir / "model_final.pt"
    if final.is_file() or not shipped.is_file():
        return None
    ckpt = load_checkpoint(shipped)
    if not same_config(ckpt["config"], cfg):
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    save_atomic(ckpt, final)
    cfg.save(run_dir / "config.json")
    return final


def train_or_reuse(cfg: TrainConfig, run_dir: Path, progress: bool, retrain: bool = False,
                   shipped: str | None = None) -> Path:
    """``run_dir/model_final.pt``, training it first unless a checkpoint with the same config is
    already there (a run interrupted after a checkpoint resumes from ``last.pt``). With
    ``shipped`` the shipped checkpoint of that name is used unless ``retrain``."""
    from maskiou.training.trainer import Trainer

    final = run_dir / "model_final.pt"
    saved = run_dir / "config.json"
    if retrain and D.is_main():
        final.unlink(missing_ok=True)
    if shipped and not retrain and D.is_main() and install_shipped_model(cfg, run_dir, shipped):
        log(f"using the shipped model {shipped_model_path(shipped).name} "
            "(pass --retrain to train it from scratch)")
    D.barrier()
    same = saved.is_file() and same_config(json.loads(saved.read_text()), cfg)
    if final.is_file() and same and not retrain:
        log(f"reusing trained model {final}")
        return final
    log(f"training {'the MS R-CNN' if cfg.maskiou else 'the plain Mask R-CNN'} model "
        f"({cfg.model}, {cfg.max_iters} iterations) into {run_dir}")
    trainer = Trainer(cfg, run_dir, progress=progress)
    if same and (run_dir / "last.pt").is_file() and not retrain:
        trainer.resume(run_dir / "last.pt")
        log(f"resuming from iteration {trainer.iteration}")
    if trainer.main:
        cfg.save(saved)
    t0 = time.perf_counter()
    trainer.train()
    log(f"trained in {time.perf_counter() - t0:.0f} s")
    return final


def shipped_checkpoint(name: str) -> dict[str, Any]:
    """A shipped checkpoint as a dict. An add-on shipped head-only (``"detector_weights"``: the
    name of the shipped plain detector it was trained on, written by ``maskiou-export
    --head-only``, so that nothing carries the same detector twice) gets the detector's weights
    back, once that detector's file is checked by its sha1 to be the one the add-on was trained
    on (``addon.detector_sha1``)."""
    path = shipped_model_path(name)
    if not path.is_file():
        raise CheckpointError(missing_shipped(name))
    return join_detector(load_checkpoint(path), path)


def install_shipped_addon(name: str = default_model("addon")) -> Path | None:
    """Copy the shipped add-on ``name`` (what the main job trains) to the main job's model
    folder when nothing is there yet, so that the demo starts with a head. No stamp is written:
    the main job still trains its own (the same weights: CPU training is deterministic)."""
    final = model_dir(name) / "model_final.pt"
    if final.is_file() or not shipped_model_path(name).is_file():
        return None
    final.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(shipped_checkpoint(name), final)
    return final


def embedded_config(**overrides: Any) -> TrainConfig:
    from maskiou.models.config import resolve

    return resolve("synthetic-cpu", overrides)


def embedded_detector(framework: str = DEFAULT_FRAMEWORK, progress: bool = True,
                      retrain: bool = False, device: str | torch.device = "cpu") -> Path:
    """The plain detector of ``framework`` for the embedded data, in its run folder: the
    shipped one (:func:`maskiou.models.paths.shipped_model_path`), or with ``retrain`` one
    trained again the way the shipped one was, by the framework's trainer through its adapter
    (capability ``train``: torchvision's runs ``maskiou-train`` with the ``synthetic-cpu``
    recipe)."""
    from maskiou.attach import framework_adapter

    name = shipped_name(framework, "plain")
    if name is None:
        raise ValueError(missing_shipped(f"{framework}_plain"))
    final = model_dir(name) / "model_final.pt"
    if retrain and D.is_main():
        final.unlink(missing_ok=True)
    if not final.is_file() and D.is_main():
        shipped = shipped_model_path(name)
        if shipped.is_file() and not retrain:
            log(f"using the shipped {framework} model {shipped.name} (pass --retrain to train "
                "it from scratch)")
            save_atomic(load_checkpoint(shipped), final)
        else:
            adapter = framework_adapter(framework, "train", "--retrain")
            log(f"training the plain {framework} detector into {final.parent}")
            trained = adapter.train_embedded(str(final.parent), device=str(device))
            if Path(trained) != final:
                save_atomic(load_checkpoint(trained), final)
    D.barrier()
    return final


def default_detector(progress: bool = True, retrain: bool = False) -> Path:
    """The main job's plain detector (:func:`embedded_detector` of the default framework)."""
    return embedded_detector(DEFAULT_FRAMEWORK, progress, retrain)


def default_end_to_end(progress: bool = True, retrain: bool = False,
                       cfg: TrainConfig | None = None,
                       framework: str = DEFAULT_FRAMEWORK) -> Path | None:
    """The shipped Mask Scoring R-CNN trained end to end on the embedded data by maskiou's own
    trainer, if one is shipped for ``framework`` (or trained again with ``retrain``)."""
    name = shipped_name(framework, "end_to_end")
    if name is None:
        return None
    cfg = dataclasses.replace(cfg or embedded_config(), maskiou=True)
    return train_or_reuse(cfg, model_dir(name), progress, retrain, shipped=name)


def embedded_val(progress: bool = True, cfg: TrainConfig | None = None) -> tuple[Path, Path]:
    return resolve_split(cfg or embedded_config(), "val", progress=progress)


def addon_split(num_images: int = ADDON_IMAGES, progress: bool = True, image_size: int = 128,
                seed: int | None = None, generator: str = "shapes") -> tuple[Path, Path]:
    """Labeled add-on images for the embedded data, generated with another seed than the
    detector's training images (the detector never saw them); ``seed`` draws other ones
    (default: ``ADDON_SEED``, the main job's); ``generator`` "scenes" makes them with the
    second generator (for a detector trained with ``synthetic_generator="scenes"``)."""
    from maskiou.data.synthetic import generate_synthetic_coco
    from maskiou.models.paths import ADDON_SEED

    seed = ADDON_SEED if seed is None else seed
    if seed == 0:
        raise ValueError("seed 0 draws the detector's own training and validation images")
    paths = generate_synthetic_coco(addon_dir(num_images, image_size, seed, generator),
                                    num_images, 0, seed=seed, image_size=image_size,
                                    progress=progress, generator=generator)
    return paths.train_json, paths.train_images


def addon_or_reuse(detector: Path, train_json: Path, train_images: Path, run_dir: Path,
                   cfg: AddonConfig, progress: bool, retrain: bool = False,
                   device: str | torch.device = "cpu") -> Path:
    """``run_dir/model_final.pt``: the add-on of ``detector``, trained on ``device`` unless one
    with the same detector, images and config is already there. Under torchrun every rank
    collects its share of the detections and rank 0 trains the head."""
    final = run_dir / "model_final.pt"
    stamp = run_dir / "addon_stamp.json"
    wanted = {"detector": file_sha1(detector), "train_json": file_sha1(train_json),
              "config": dataclasses.asdict(cfg), "version": ADDON_VERSION}
    if (final.is_file() and stamp.is_file() and not retrain
            and json.loads(stamp.read_text()) == wanted):
        log(f"reusing the add-on model {final}")
        return final
    log(f"training the add-on: the MaskIoU head alone on the frozen detector {detector}")
    t0 = time.perf_counter()
    train_addon(detector, train_json, train_images, run_dir, cfg, device=device,
                progress=progress, log=log)
    if D.is_main():
        stamp.write_text(json.dumps(wanted) + "\n")
        log(f"add-on trained in {time.perf_counter() - t0:.0f} s")
    D.barrier()
    return final


def _shard(n: int) -> list[int]:
    if not torch.distributed.is_initialized():
        return list(range(n))
    return list(range(torch.distributed.get_rank(), n, torch.distributed.get_world_size()))


def detect(model: torch.nn.Module, dataset: Any, device: torch.device, batch_size: int,
           progress: bool, desc: str) -> Detections:
    """Inference over the split, each rank a shard, gathered on every rank."""
    part = predict(model, dataset, _shard(len(dataset)), device=device, batch_size=batch_size,
                   progress=progress and D.is_main(), desc=desc)
    return Detections.concat(D.all_gather_objects(part))


def evaluate_checkpoint(checkpoint: str | Path, dataset: Any, device: torch.device, *,
                        batch_size: int = 8, backend: str = "pycocotools", progress: bool = True,
                        desc: str = "inference") -> dict[str, Any] | None:
    """Score one checkpoint's detections of ``dataset`` under every applicable scoring.

    Refuses (ValueError) a model whose classes differ from the dataset's, and an add-on whose
    head or recalibration was fitted on any image of ``dataset``.

    Returns (on the main process; None elsewhere): metrics with ``"results"``, ``"detections"``
    and ``"true_ious"`` for the report.
    """
    model, meta = load_trained_model(checkpoint, device)
    where = str(dataset.ann_file)
    if meta["class_names"] != dataset.class_names:
        raise ValueError(f"{checkpoint}: trained on classes {meta['class_names']}, but {where} "
                         f"has {dataset.class_names}")
    recal = load_recalibration(meta)
    fitted = (meta.get("addon") or {}).get("fitted_on") or {}
    if fitted or recal is not None:
        prints = image_fingerprints(dataset)
        seen = prints.keys() & fitted.keys()
        if seen:
            raise ValueError(f"{where}: {len(seen)} of its images are images the add-on head "
                             f"of {checkpoint} was trained on; evaluate it on images it has "
                             "not seen")
        if recal is not None:
            recal.check_not_fitted_on(prints, where)
    t0 = time.perf_counter()
    dets = detect(model, dataset, device, batch_size, progress, desc)
    seconds = time.perf_counter() - t0
    if not D.is_main():
        return None
    groups = mask_iou_groups(dets, dataset.coco)  # once: the true MaskIoU, LaECE and LRP
    true = true_mask_ious(dets, dataset.coco, groups=groups)
    head = find_maskiou_head(model)
    has_head = head is not None
    # the final row is what the model returned: its own scores, when its head carries a fitted
    # recalibration (no second implementation of the score here)
    fitted = has_head and bool(head.calibration.fitted)
    final = dets.scores if fitted else None
    metrics, results = evaluate_detections(dets, dataset.coco, true, has_head=has_head,
                                           recalibrated=final, backend=backend,
                                           groups=groups)
    scores = scorings(dets.cls_scores, dets.pred_ious if has_head else None, dets.maskness,
                      true, final)
    model_scoring = "recalibrated" if fitted else ("rescored" if has_head else "cls")
    metrics.update(checkpoint=str(checkpoint), has_head=has_head, framework=meta["framework"],
                   inference_seconds=round(seconds, 1), model_scoring=model_scoring)
    if has_head:
        metrics["cost"] = head_cost(model)
        metrics["head_target"] = head.target
        metrics["calibration"] = final_score_calibration(scores[model_scoring], true,
                                                         head.target)
        # against what LaECE reads: precision x mean IoU of the matched, TP at mask IoU 0.1
        metrics["calibration"]["class_map"] = bool(head.calibration.class_fitted)
        metrics["calibration"]["laece_bins"] = reliability_bins(
            scores[model_scoring], match_all(scores[model_scoring], groups, 0.1))
    if has_head and bool((head.calibration.class_thresholds != 0).any()):
        metrics["keep"] = keep_measures(dets, scores, model_scoring, groups, dataset,
                                        head.calibration.class_thresholds.tolist())
    if recal is not None:
        metrics["recalibration"] = recal.kind
    return {**metrics, "results": results, "detections": dets, "true_ious": true,
            "scores": scores}


def keep_measures(dets: Detections, scores: dict[str, np.ndarray], model_scoring: str,
                  groups: list, dataset: Any, thresholds: list[float]) -> dict[str, float]:
    """mLRP (TP at mask IoU 0.5, mean over the classes with GT) of the masks a user keeps:
    by the model's stored thresholds (``stored``, fitted on held-out images), by the
    thresholds best on these very detections (``optimal``: the moLRP), and by one threshold
    of 0.5 on the final score and on the class score."""
    from maskiou.quality.lrp import mlrp_at

    from .cocoeval import gt_counts

    cats = dets.category_ids
    num_gt = gt_counts(dataset.coco)
    final = scores[model_scoring]
    matched = match_all(final, groups, 0.5)
    stored = {int(c): thresholds[lab] for lab, c in dataset.label_to_cat_id.items()
              if lab < len(thresholds)}
    half = dict.fromkeys(num_gt, 0.5)
    return {"stored": mlrp_at(final, cats, matched, num_gt, stored),
            "optimal": molrp(final, cats, matched, num_gt)[0],
            "final_0.5": mlrp_at(final, cats, matched, num_gt, half),
            "cls_0.5": mlrp_at(scores["cls"], cats, match_all(scores["cls"], groups, 0.5),
                               num_gt, half),
            "thresholds": {str(c): t for c, t in stored.items()}}


def is_plain(checkpoint: str | Path) -> bool:
    """Whether a checkpoint is a detector without the MaskIoU head."""
    from maskiou.models.load import has_head

    return not has_head(load_checkpoint(checkpoint))


def run(cfg: TrainConfig, *, output_dir: Path, checkpoint: str | None = None,
        addon_train: tuple[str, str] | None = None, baseline_checkpoint: str | None = None,
        end_to_end_checkpoint: str | None = None, train_baseline: bool = False,
        device: str = "auto", batch_size: int = 8, backend: str = "pycocotools",
        progress: bool = True, retrain: bool = False, run_root: Path | None = None,
        addon: AddonConfig | None = None, addon_images: int = ADDON_IMAGES,
        framework: str = DEFAULT_FRAMEWORK) -> dict[str, Any]:
    """The main job; returns metrics.json's dict (on the main process).

    Args:
        cfg: the training recipe (data paths included) for models that must be trained.
        checkpoint: the model to measure. A plain detector gets the add-on (trained on
            ``addon_train``); a model with a head is scored as it is. Default: the embedded
            add-on story (shipped plain detector + add-on, shipped end-to-end model beside it).
        addon_train: (annotation JSON, image folder) of the labeled images the add-on head
            trains on; on the embedded data, generated add-on images.
        baseline_checkpoint, train_baseline: also score a plain detector (the paper's table 1).
        end_to_end_checkpoint: also score an end-to-end model.
        framework: on the embedded data, whose shipped plain detector gets the add-on (with
            that framework's shipped end-to-end model beside it, where there is one).
    """
    from maskiou.data.coco import CocoInstanceDataset

    _, _, dev = D.init_distributed(device)
    job = _Job(cfg, dev, cfg.dataset == "synthetic" and not (cfg.val_json or cfg.coco_root),
               framework, progress, retrain, run_root or model_dir().parent)
    addon = addon or AddonConfig()
    t_start = time.perf_counter()
    val_json, val_images = _val_split(cfg, progress)
    timings: dict[str, float] = {"data": time.perf_counter() - t_start}
    checkpoint, end_to_end_checkpoint = _main_checkpoints(job, checkpoint, end_to_end_checkpoint)
    models: dict[str, str] = {}
    if is_plain(checkpoint):
        t0 = time.perf_counter()
        addon_train = _addon_images(job, checkpoint, addon_train, addon_images)
        timings["addon_data"] = time.perf_counter() - t0
        run_dir = _addon_run_dir(job, checkpoint, addon_images)
        t0 = time.perf_counter()
        addon_or_reuse(Path(checkpoint), Path(addon_train[0]), Path(addon_train[1]), run_dir,
                       addon, progress, retrain, dev)
        timings["addon_training"] = time.perf_counter() - t0
        models.update(plain=checkpoint, addon=str(run_dir / "model_final.pt"))
        main_model = "addon"
    else:
        models["model"] = checkpoint
        main_model = "model"
    models.update(_reference_models(job, baseline_checkpoint, train_baseline,
                                    end_to_end_checkpoint))

    dataset = CocoInstanceDataset(val_json, val_images)
    t0 = time.perf_counter()
    evaluated = _evaluate_models(models, dataset, dev, batch_size, backend, progress)
    timings["evaluation"] = time.perf_counter() - t0
    if not D.is_main():
        return {}
    metrics = _job_metrics(evaluated, models, main_model, len(dataset), val_json)
    if "plain" in models:
        metrics["addon"] = {"train_json": addon_train[0], "config": dataclasses.asdict(addon),
                            "images": addon_images if job.embedded else None}
    timings["total"] = time.perf_counter() - t_start
    metrics["seconds"] = {k: round(v, 1) for k, v in timings.items()}
    write_outputs(output_dir, metrics, evaluated[main_model], dataset)
    return metrics


@dataclasses.dataclass(frozen=True)
class _Job:
    """What every step of :func:`run` reads: the recipe, the device, whether the data is the
    embedded default, the framework of its shipped models, and where trained models go."""

    cfg: TrainConfig
    device: torch.device
    embedded: bool
    framework: str
    progress: bool
    retrain: bool
    run_root: Path


def _val_split(cfg: TrainConfig, progress: bool) -> tuple[Path, Path]:
    """(annotation JSON, image folder) of the validation split, the embedded data generated
    once by the main process (not once per rank)."""
    if D.is_main():
        resolve_split(cfg, "val", progress=progress)
    D.barrier()
    return resolve_split(cfg, "val", progress=False)


def _main_checkpoints(job: _Job, checkpoint: str | None, end_to_end: str | None
                      ) -> tuple[str, str | None]:
    """(the model to measure, the end-to-end model beside it or None): on the embedded data by
    default the shipped plain detector and end-to-end model of the framework; on the user's
    data by default a Mask Scoring R-CNN trained (or reused) under ``run_root/maskiou``."""
    if checkpoint is None and job.embedded:
        checkpoint = str(embedded_detector(job.framework, job.progress, job.retrain,
                                           job.device))
        if end_to_end is None:
            e2e = default_end_to_end(job.progress, job.retrain, job.cfg, job.framework)
            end_to_end = str(e2e) if e2e else None
    elif checkpoint is None:
        checkpoint = str(train_or_reuse(job.cfg, job.run_root / "maskiou", job.progress,
                                        job.retrain))
    return checkpoint, end_to_end


def _addon_images(job: _Job, checkpoint: str, addon_train: tuple[str, str] | None,
                  addon_images: int) -> tuple[str, str]:
    """(annotation JSON, image folder) the add-on head of the plain ``checkpoint`` trains on:
    the user's, or on the embedded data ``addon_images`` generated ones."""
    if addon_train is not None:
        return addon_train
    if not job.embedded:
        raise ValueError(f"{checkpoint} is a plain detector: give --train-json and "
                         "--train-images, labeled images it did not train on, for the "
                         "add-on head to train on")
    return tuple(map(str, addon_split(addon_images, job.progress, job.cfg.synthetic_image_size,
                                      generator=job.cfg.synthetic_generator)))


def _addon_run_dir(job: _Job, checkpoint: str, addon_images: int) -> Path:
    """Where the add-on of ``checkpoint`` is trained: the shipped add-on's folder for the
    main job's default (the shipped plain detector, the default number of add-on images),
    else a folder named by the detector's hash."""
    plain, addon_name = (shipped_name(job.framework, "plain"),
                         shipped_name(job.framework, "addon"))
    default = (job.embedded and addon_images == ADDON_IMAGES and plain and addon_name
               and Path(checkpoint) == model_dir(plain) / "model_final.pt")
    if default:
        return model_dir(addon_name)
    return job.run_root / f"addon-{file_sha1(checkpoint)[:8]}"


def _reference_models(job: _Job, baseline: str | None, train_baseline: bool,
                      end_to_end: str | None) -> dict[str, str]:
    """The models scored beside the main one: a plain baseline (given, or trained with
    ``train_baseline``) and an end-to-end model, where there are."""
    models: dict[str, str] = {}
    if baseline or train_baseline:
        if baseline is None:
            base_cfg = dataclasses.replace(job.cfg, maskiou=False)
            folder = "synthetic-cpu-baseline" if job.embedded else "baseline"
            baseline = str(train_or_reuse(base_cfg, job.run_root / folder, job.progress,
                                          job.retrain))
        models["baseline"] = baseline
    if end_to_end:
        models["end_to_end"] = end_to_end
    return models


def _evaluate_models(models: dict[str, str], dataset: Any, device: torch.device,
                     batch_size: int, backend: str, progress: bool) -> dict[str, Any]:
    """:func:`evaluate_checkpoint` of each model but the add-on's plain detector (its cls and
    maskness rows are the add-on's own: the same frozen detector), by name."""
    evaluated: dict[str, Any] = {}
    for name, path in models.items():
        if name == "plain":
            continue
        evaluated[name] = evaluate_checkpoint(path, dataset, device, batch_size=batch_size,
                                              backend=backend, progress=progress,
                                              desc=f"inference ({name})")
    return evaluated


def _job_metrics(evaluated: dict[str, Any], models: dict[str, str], main_model: str,
                 num_images: int, val_json: Path) -> dict[str, Any]:
    """metrics.json's dict: the main model's figures, and each model's own (without the
    detections and scores the report reads)."""
    main = evaluated[main_model]
    metrics: dict[str, Any] = {
        "segm": main["segm"], "bbox": main["bbox"], "correlation": main["correlation"],
        "num_images": num_images, "num_detections": main["num_detections"],
        "main_model": main_model, "checkpoint": models[main_model],
        "framework": main["framework"],
        **{k: main[k] for k in ("model_scoring", "head_target", "calibration", "keep")
           if k in main},
        "val_json": str(val_json),
        "models": {name: {k: v for k, v in m.items()
                          if k not in ("results", "detections", "true_ious", "scores")}
                   for name, m in evaluated.items()},
    }
    if "plain" in models:
        metrics["models"]["plain"] = {"checkpoint": models["plain"], "note": "the add-on's "
                                      "detector, frozen: its cls and maskness rows"}
    return metrics


def write_outputs(out: Path, metrics: dict[str, Any], main: dict[str, Any], dataset: Any) -> None:
    """report.md, metrics.json, the COCO results JSON files, per-detection scores, plots, and
    gallery.json (the images whose ranking the learned score fixes most, for the demo)."""
    out.mkdir(parents=True, exist_ok=True)
    write_metrics(out / "metrics.json", metrics)
    (out / "report.md").write_text(markdown_report(metrics))
    for name, res in main["results"].items():
        (out / f"results_{name}.json").write_text(json.dumps(res))
    dets, true = main["detections"], main["true_ious"]
    per_det = {"image_id": dets.image_ids.tolist(), "category_id": dets.category_ids.tolist(),
               "cls_score": dets.cls_scores.tolist(), "maskness": dets.maskness.tolist(),
               "true_iou": np.asarray(true).tolist()}
    if main["has_head"]:
        per_det["mask_quality"] = dets.pred_ious.tolist()  # the head's output
        per_det["final_score"] = dets.scores.tolist()  # what the model returned
    (out / "detections.json").write_text(json.dumps(per_det))
    write_plots(out, metrics, dets.pred_ious if main["has_head"] else None, true, main["scores"])
    best = best_learned(main["segm"])
    if best:
        rows = rank_change_gallery(dets.image_ids, dets.cls_scores, main["scores"][best], true)
        for r in rows:
            r["file"] = str(dataset.image_dir / dataset.coco.imgs[r["image_id"]]["file_name"])
        (out / "gallery.json").write_text(json.dumps(
            {"scoring": best, "val_json": str(dataset.ann_file), "images": rows}, indent=2))
