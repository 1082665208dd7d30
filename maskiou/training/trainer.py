"""Train torchvision Mask R-CNN with (or without) the MaskIoU head.

``python -m maskiou.training [--config synthetic-cpu|coco-r50-1x] [overrides]``, or under
``torchrun --nproc_per_node=K -m maskiou.training ...`` for DDP (NCCL on GPU, gloo on CPU).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from maskiou import distributed as D
from maskiou.models.checkpoint import (
    SCHEMA,
    CheckpointError,
    detector_entry,
    load_checkpoint,
    load_model_state,
    rng_state,
    save_atomic,
    set_rng_state,
)
from maskiou.models.config import (
    TrainConfig,
)
from maskiou.models.load import build_model
from maskiou.models.paths import resolve_split, training_source


def make_optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter], world: int
                   ) -> torch.optim.Optimizer:
    lr = cfg.scaled_lr(world)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               foreach=True)
    if cfg.optimizer == "adamw":
        # fused: one kernel per step instead of one per parameter tensor (CPU and CUDA)
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay, fused=True)
    raise ValueError(f"optimizer must be sgd or adamw, got {cfg.optimizer!r}")


def lr_factor(cfg: TrainConfig, it: int, total: int) -> float:
    """Linear warm-up from ``warmup_factor``, then step decay or cosine to 0."""
    warm = 1.0
    if it < cfg.warmup_iters:
        alpha = it / cfg.warmup_iters
        warm = cfg.warmup_factor * (1 - alpha) + alpha
    if cfg.lr_schedule == "step":
        return warm * cfg.lr_gamma ** sum(it >= s for s in cfg.lr_steps)
    if cfg.lr_schedule == "cosine":
        return warm * 0.5 * (1 + math.cos(math.pi * min(it, total) / max(total, 1)))
    raise ValueError(f"lr_schedule must be step or cosine, got {cfg.lr_schedule!r}")


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.amp in ("none", "", "off"):
        return None
    if cfg.amp == "auto":
        return torch.bfloat16 if device.type == "cpu" or torch.cuda.is_bf16_supported() \
            else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp]


class Trainer:
    """Owns one run: data, model, optimizer, schedule, checkpoints and logs."""

    def __init__(self, cfg: TrainConfig, output_dir: str | Path, progress: bool = True) -> None:
        from maskiou.data.coco import CocoInstanceDataset, require_annotations

        self.cfg, self.out = cfg, Path(output_dir)
        self.rank, self.world, self.device = D.init_distributed(cfg.device)
        self.main = self.rank == 0
        self.progress = progress and self.main
        torch.manual_seed(cfg.seed + self.rank)
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
        D.barrier()
        if self.main:  # generate the embedded data once, not once per rank
            resolve_split(cfg, "train", progress=self.progress)
        D.barrier()
        json_path, images = resolve_split(cfg, "train", progress=False)
        self.dataset = require_annotations(CocoInstanceDataset(json_path, images), "training")
        self.aspect = [w / h for h, w in (self.dataset.get_height_and_width(i)
                                          for i in range(len(self.dataset)))]
        self.batches_per_epoch = len(self._batches(0))
        if self.batches_per_epoch == 0:
            raise ValueError(f"{json_path}: {len(self.dataset)} images are fewer than one batch "
                             f"of {cfg.batch_size * self.world}")
        self.total = (cfg.epochs * self.batches_per_epoch if cfg.epochs else cfg.max_iters)
        torch.manual_seed(cfg.seed)  # same initial weights on every rank
        model = build_model(cfg, self.dataset.num_classes,
                            self.dataset.label_to_cat_id).to(self.device)
        torch.manual_seed(cfg.seed + self.rank)
        self.model = model
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(cfg, params, self.world)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda it: lr_factor(cfg, it, self.total))
        self.dtype = amp_dtype(cfg, self.device)
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.dtype == torch.float16 and self.device.type == "cuda")
        self.flip_gen = torch.Generator().manual_seed(cfg.seed * 7919 + self.rank)
        self.loader_gen = torch.Generator().manual_seed(cfg.seed)
        self.ddp = (DistributedDataParallel(model, device_ids=[self.device]
                                            if self.device.type == "cuda" else None)
                    if self.world > 1 else model)
        self.iteration = 0

    def _batches(self, epoch: int) -> list[list[int]]:
        from maskiou.data.sampling import epoch_batches

        return epoch_batches(self.aspect, self.cfg.batch_size, self.cfg.seed, epoch,
                             rank=self.rank, world_size=self.world,
                             group_by_aspect=self.cfg.aspect_ratio_grouping)

    # --- checkpoints -------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything a resume needs; RNG states of every rank (collective under DDP)."""
        rng = {**rng_state(self.device), "flip": self.flip_gen.get_state(),
               "loader": self.loader_gen.get_state()}
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "iteration": self.iteration, "config": self.cfg.to_dict(),
            **self.model_entries(),
            "class_names": self.dataset.class_names,
            "label_to_cat_id": self.dataset.label_to_cat_id,
            "rng": D.all_gather_objects(rng), "world_size": self.world,
            "format": "maskiou-train-1",
        }

    def model_entries(self) -> dict[str, Any]:
        """The checkpoint entries that rebuild the model (:mod:`maskiou.models.checkpoint`):
        its framework (the adapter the model has), its detector as maskiou's recipe builds it,
        and the head's config (None without a head)."""
        from maskiou.attach import find_adapter

        head = dataclasses.asdict(self.cfg.maskiou_head) if self.cfg.maskiou else None
        return {"schema": SCHEMA, "framework": find_adapter(self.model).framework,
                "detector": detector_entry(self.cfg, self.dataset.num_classes,
                                           training_source(self.cfg)),
                "maskiou_head": head}

    def save(self, final: bool = False) -> Path:
        """Write ``last.pt`` (and, when ``final``, the slim ``model_final.pt``)."""
        path = self.out / "last.pt"
        state = self.state()  # every rank takes part in gathering the RNG states
        if self.main:
            save_atomic(state, path)
            if final:
                save_atomic({k: v for k, v in state.items()
                             if k not in ("optimizer", "scheduler", "scaler", "rng")},
                            self.out / "model_final.pt")
        D.barrier()
        return path

    def resume(self, path: str | Path) -> None:
        ckpt = load_checkpoint(path)
        if ckpt.get("class_names") != self.dataset.class_names:
            raise CheckpointError(
                f"{path}: trained on classes {ckpt.get('class_names')}, this dataset has "
                f"{self.dataset.class_names}")
        load_model_state(self.model, ckpt["model"], path)
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except ValueError as e:
            raise CheckpointError(f"{path}: optimizer state does not fit this run ({e})") from e
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.iteration = int(ckpt["iteration"])
        changed = [k for k in ("batch_size", "seed", "aspect_ratio_grouping", "max_iters",
                               "epochs") if ckpt["config"].get(k) != getattr(self.cfg, k)]
        if ckpt.get("world_size", 1) != self.world:
            changed.append(f"processes {ckpt.get('world_size', 1)} -> {self.world}")
        if changed and self.main:
            print(f"warning: resuming {path} with a different {', '.join(changed)}: the run "
                  "continues, but not as the uninterrupted one would", file=sys.stderr)
        states = ckpt["rng"] if isinstance(ckpt["rng"], list) else [ckpt["rng"]]
        rng = states[self.rank % len(states)]
        set_rng_state(rng, self.device)
        self.flip_gen.set_state(rng["flip"])
        self.loader_gen.set_state(rng["loader"])

    # --- the loop ----------------------------------------------------------------------------

    def _prepare(self, images, targets):
        from maskiou.data.transforms import hflip

        out_i, out_t = [], []
        for image, target in zip(images, targets):
            flip = torch.rand(1, generator=self.flip_gen).item() < self.cfg.hflip
            image = image.to(self.device, non_blocking=True)
            target = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v
                      for k, v in target.items()}
            if flip:  # on the device, after the copy
                image, target = hflip(image, target)
            out_i.append(image)
            out_t.append(target)
        return out_i, out_t

    def step(self, images, targets) -> dict[str, torch.Tensor]:
        """One optimizer step; returns the detached losses (no host sync here)."""
        self.ddp.train()
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32,
                            enabled=self.dtype is not None):
            losses = self.ddp(images, targets)
        total = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return {"loss": total.detach(), **{k: v.detach() for k, v in losses.items()}}

    def _check_finite(self, losses: dict[str, torch.Tensor]) -> dict[str, float]:
        values = {k: float(v) for k, v in losses.items()}
        if not math.isfinite(values["loss"]):
            shown = {k: round(v, 4) for k, v in values.items()}
            raise FloatingPointError(f"iteration {self.iteration}: loss is not finite {shown}; "
                                     f"the last good checkpoint is {self.out / 'last.pt'}")
        return values

    def train(self) -> Path:
        from maskiou.data.coco import collate_fn
        from maskiou.data.sampling import ResumableBatchSampler

        cfg = self.cfg
        log = (self.out / "train_log.jsonl").open("a") if self.main else None
        writer = _tensorboard(self.out) if self.main else None
        bar = tqdm(total=self.total, initial=self.iteration, desc="train",
                   disable=not self.progress, dynamic_ncols=True)
        t0, seen = time.perf_counter(), 0
        while self.iteration < self.total:
            epoch, start = divmod(self.iteration, self.batches_per_epoch)
            loader = torch.utils.data.DataLoader(
                self.dataset, batch_sampler=ResumableBatchSampler(self._batches(epoch), start),
                num_workers=cfg.workers, collate_fn=collate_fn, generator=self.loader_gen,
                pin_memory=self.device.type == "cuda", persistent_workers=False)
            for images, targets in loader:
                losses = self.step(*self._prepare(images, targets))
                self.iteration += 1
                seen += len(images) * self.world
                bar.update(1)
                if self.iteration % cfg.log_every == 0 or self.iteration == self.total:
                    values = self._check_finite(losses)
                    values["lr"] = self.optimizer.param_groups[0]["lr"]
                    values["images_per_s"] = seen / (time.perf_counter() - t0)
                    if self.device.type == "cuda":
                        values["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
                    bar.set_postfix({k: f"{values[k]:.3g}" for k in
                                     ("loss", "loss_mask", "loss_maskiou") if k in values})
                    if log:
                        log.write(json.dumps({"iteration": self.iteration, **values}) + "\n")
                        log.flush()
                    if writer:
                        for k, v in values.items():
                            writer.add_scalar(k, v, self.iteration)
                if self.iteration % cfg.checkpoint_every == 0 and self.iteration < self.total:
                    self._check_finite(losses)  # never checkpoint a diverged model
                    self.save()
                if self.iteration >= self.total:
                    break
        bar.close()
        path = self.save(final=True)
        if log:
            log.close()
        if writer:
            writer.close()
        return path


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tb"))

