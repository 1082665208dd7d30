"""The main job behind ``benchmarks/coco_eval.py``: get a model, evaluate three scorings, report.

With no data flags it uses the embedded synthetic dataset and the default ``synthetic-cpu``
model, trained once and cached under ``maskiou.training.paths.default_model_dir()``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskiou.training import distributed as D
from maskiou.training.checkpoint import load_checkpoint, save_atomic
from maskiou.training.config import TrainConfig
from maskiou.training.models import load_trained_model
from maskiou.training.paths import default_model_dir, resolve_split, shipped_model_path

from .cocoeval import evaluate_scorings, true_mask_ious
from .cost import head_cost
from .metrics import correlation_summary, scorings
from .predict import Detections, predict
from .report import markdown_report, plot_correlation, plot_score_vs_iou, write_metrics


def log(msg: str) -> None:
    if D.is_main():
        print(msg, flush=True)


def install_shipped_model(cfg: TrainConfig, run_dir: Path) -> Path | None:
    """Put the shipped warm-start checkpoint in ``run_dir`` if it was trained with exactly
    ``cfg`` (and nothing is there yet). Returns its new path, or None."""
    shipped = shipped_model_path()
    final = run_dir / "model_final.pt"
    if final.is_file() or not shipped.is_file():
        return None
    config = load_checkpoint(shipped)["config"]
    if config != cfg.to_dict():
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    save_atomic(load_checkpoint(shipped), final)
    cfg.save(run_dir / "config.json")
    return final


def train_or_reuse(cfg: TrainConfig, run_dir: Path, progress: bool, retrain: bool = False
                   ) -> Path:
    """``run_dir/model_final.pt``, training it first unless a checkpoint with the same config is
    already there (a run interrupted after a checkpoint resumes from ``last.pt``). For the
    embedded default the shipped warm-start checkpoint is used unless ``retrain``."""
    from maskiou.training.trainer import Trainer

    final = run_dir / "model_final.pt"
    saved = run_dir / "config.json"
    if retrain and D.is_main():
        final.unlink(missing_ok=True)
    if not retrain and D.is_main() and install_shipped_model(cfg, run_dir):
        log(f"using the shipped warm-start model {shipped_model_path().name} "
            "(pass --retrain to train it from scratch)")
    D.barrier()
    same = saved.is_file() and json.loads(saved.read_text()) == cfg.to_dict()
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


def run(cfg: TrainConfig, *, output_dir: Path, checkpoint: str | None,
        baseline_checkpoint: str | None, train_baseline: bool, device: str,
        batch_size: int = 8, backend: str = "pycocotools", progress: bool = True,
        retrain: bool = False, run_root: Path | None = None) -> dict[str, Any]:
    """Evaluate (training first if needed) and write the report; returns metrics.json's dict."""
    from maskiou.data.coco import CocoInstanceDataset

    _, _, dev = D.init_distributed(device)
    run_root = run_root or default_model_dir().parent
    t_start = time.perf_counter()
    if D.is_main():  # generate the embedded data once, not once per rank
        resolve_split(cfg, "val", progress=progress)
    D.barrier()
    val_json, val_images = resolve_split(cfg, "val", progress=False)
    if checkpoint is None:
        checkpoint = str(train_or_reuse(cfg, _run_dir(cfg, run_root), progress, retrain))
    model, meta = load_trained_model(checkpoint, dev)
    dataset = CocoInstanceDataset(val_json, val_images)
    if meta["class_names"] != dataset.class_names:
        raise ValueError(f"{checkpoint}: trained on classes {meta['class_names']}, but "
                         f"{val_json} has {dataset.class_names}")
    dets = detect(model, dataset, dev, batch_size, progress, "inference")
    metrics: dict[str, Any] = {}
    if D.is_main():
        true = true_mask_ious(dets, dataset.coco)
        ev = evaluate_scorings(dets, dataset.coco, backend, true_ious=true)
        metrics = {"segm": ev["segm"], "bbox": ev["bbox"],
                   "correlation": correlation_summary(dets.cls_scores, dets.pred_ious, true),
                   "num_images": len(dataset), "num_detections": len(dets),
                   "checkpoint": str(checkpoint), "val_json": str(val_json),
                   "cost": head_cost(model)}
    if baseline_checkpoint or train_baseline:
        if baseline_checkpoint is None:
            base_cfg = TrainConfig(**{**cfg.to_dict(), "maskiou": False})
            baseline_checkpoint = str(train_or_reuse(base_cfg, _run_dir(base_cfg, run_root),
                                                     progress, retrain))
        base_model, _ = load_trained_model(baseline_checkpoint, dev)
        base = detect(base_model, dataset, dev, batch_size, progress, "baseline inference")
        if D.is_main():
            bev = evaluate_scorings(base, dataset.coco, backend)
            metrics["baseline"] = {"segm": bev["segm"]["cls"], "bbox": bev["bbox"]["cls"],
                                   "checkpoint": str(baseline_checkpoint)}
    if D.is_main():
        metrics["seconds"] = round(time.perf_counter() - t_start, 1)
        write_outputs(output_dir, metrics, ev["results"], dets, true)
    return metrics


def _run_dir(cfg: TrainConfig, root: Path) -> Path:
    base = "synthetic-cpu" if cfg.dataset == "synthetic" else "maskiou"
    if cfg.maskiou:
        return root / base
    return root / ("synthetic-cpu-baseline" if cfg.dataset == "synthetic" else "baseline")


def write_outputs(out: Path, metrics: dict[str, Any], results: dict[str, list], dets: Detections,
                  true: np.ndarray) -> None:
    """report.md, metrics.json, the COCO results JSON files and the two PNG plots."""
    out.mkdir(parents=True, exist_ok=True)
    write_metrics(out / "metrics.json", metrics)
    (out / "report.md").write_text(markdown_report(metrics))
    for name, res in results.items():
        (out / f"results_{name}.json").write_text(json.dumps(res))
    s = scorings(dets.cls_scores, dets.pred_ious, true)
    plot_correlation(out / "maskiou_correlation.png", dets.pred_ious, true,
                     metrics["correlation"]["pearson"])
    plot_score_vs_iou(out / "score_vs_maskiou.png", true, s["cls"], s["rescored"])
