"""Training configurations: one dataclass, named presets, and command-line overrides.

Every field is a ``--flag`` of ``maskiou-train`` (underscores become dashes), so any preset
value can be overridden; the resolved config is saved with the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from maskiou.configs import HeadConfig
from maskiou.options import ConfigError, bounded, check_fields, choices_of, field_types

ModelName = Literal["maskrcnn_resnet18_fpn", "maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2",
                    "maskrcnn_mobilenet_v3_large_fpn"]
Norm = Literal["frozen_bn", "bn", "gn"]


@dataclass
class TrainConfig:
    """All knobs of a training run (see the README's configuration table)."""

    # model
    model: ModelName = "maskrcnn_resnet50_fpn"
    weights: str | None = None
    weights_backbone: str | None = None
    norm: Norm = "frozen_bn"
    head_norm: Literal["bn", "gn"] | None = None
    trainable_layers: int | None = bounded(None, 0, 5)
    fpn_channels: int = bounded(256, 1)
    mask_head_channels: int = bounded(256, 1)
    mask_head_convs: int = bounded(4, 1)
    box_head_dim: int = bounded(1024, 1)
    anchor_sizes: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])
    returned_layers: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    min_size: int = bounded(800, 1)
    max_size: int = bounded(1333, 1)
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 512
    box_detections_per_img: int = bounded(100, 1)
    # MaskIoU head
    maskiou: bool = True
    maskiou_head: HeadConfig = field(default_factory=HeadConfig)
    maskiou_loss_weight: float = bounded(1.0, 0.0)
    freeze_detector: bool = False
    detector_checkpoint: str | None = None
    # optimization
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = bounded(0.02, 0.0, low_open=True)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = bounded(2, 1)
    reference_batch_size: int = bounded(16, 1)
    max_iters: int = bounded(90000, 0)
    epochs: int = bounded(0, 0)
    warmup_iters: int = bounded(1000, 0)
    warmup_factor: float = 0.001
    lr_schedule: Literal["step", "cosine"] = "step"
    lr_steps: list[int] = field(default_factory=lambda: [60000, 80000])
    lr_gamma: float = 0.1
    grad_clip: float = 0.0
    hflip: float = bounded(0.5, 0.0, 1.0)
    aspect_ratio_grouping: bool = True
    amp: Literal["none", "auto", "bf16", "fp16"] = "none"
    # run
    seed: int = 0
    device: str = "auto"
    workers: int = bounded(2, 0)
    checkpoint_every: int = bounded(5000, 1)
    log_every: int = bounded(20, 1)
    # data
    dataset: Literal["coco", "synthetic"] = "coco"
    coco_root: str | None = None
    train_json: str | None = None
    train_images: str | None = None
    val_json: str | None = None
    val_images: str | None = None
    synthetic_dir: str | None = None
    synthetic_train: int = bounded(1000, 1)
    synthetic_val: int = bounded(200, 0)
    synthetic_image_size: int = bounded(128, 16)
    synthetic_generator: Literal["shapes", "scenes"] = "shapes"

    def __post_init__(self) -> None:
        check_fields(self)
        if self.device != "auto" and not (self.device in ("cpu", "cuda", "mps")
                                          or self.device.startswith("cuda:")):
            raise ConfigError(f"TrainConfig.device: {self.device!r} is not auto, cpu, cuda, "
                              "cuda:N or mps")

    def scaled_lr(self, world_size: int = 1) -> float:
        """``lr`` is given for ``reference_batch_size`` images; linear scaling rule."""
        return self.lr * self.batch_size * world_size / self.reference_batch_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(values: dict[str, Any]) -> TrainConfig:
        """The config a dict describes: ``to_dict()``'s form, or the flat form of configs written
        before the head's fields were grouped (``maskiou_conv_channels``, ... as stored in the
        shipped checkpoints and in every older run), or both (flat entries win: they are the
        command-line overrides). Unknown keys raise TypeError."""
        values = dict(values)
        head = values.pop("maskiou_head", None) or {}
        head = dataclasses.asdict(head) if isinstance(head, HeadConfig) else dict(head)
        head.update(HeadConfig.pop_from(values, "maskiou_"))
        return TrainConfig(**values, maskiou_head=HeadConfig(**head))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


PRESETS: dict[str, dict[str, Any]] = {
    # Small and fast: trains a useful model on the embedded dataset on 2 CPU cores.
    "synthetic-cpu": dict(
        model="maskrcnn_resnet18_fpn", norm="bn", head_norm="bn", returned_layers=[1, 2, 3],
        anchor_sizes=[8, 16, 32, 64], fpn_channels=64, mask_head_channels=64,
        mask_head_convs=2, box_head_dim=256, min_size=128, max_size=128,
        rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300,
        rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100,
        rpn_batch_size_per_image=128, box_batch_size_per_image=64,
        maskiou_head=dict(conv_channels=64, num_convs=2, fc_dim=256),
        optimizer="adamw", lr=3e-3, reference_batch_size=8, weight_decay=1e-4, batch_size=8,
        max_iters=3000, warmup_iters=50, warmup_factor=0.01, lr_schedule="cosine",
        aspect_ratio_grouping=False, workers=0, checkpoint_every=250, log_every=10,
        dataset="synthetic",
    ),
    # The torchvision / Detectron 1x recipe: 16 images, lr 0.02, 90k iterations.
    "coco-r50-1x": dict(
        model="maskrcnn_resnet50_fpn", weights_backbone="IMAGENET1K_V1", norm="frozen_bn",
        optimizer="sgd", lr=0.02, reference_batch_size=16, batch_size=2, momentum=0.9,
        weight_decay=1e-4, max_iters=90000, warmup_iters=1000, warmup_factor=0.001,
        lr_schedule="step", lr_steps=[60000, 80000], dataset="coco", workers=4,
    ),
}
DEFAULT_PRESET = "synthetic-cpu"


def override_keys() -> set[str]:
    """The flat keys :func:`resolve` takes: TrainConfig's fields and ``maskiou_<HeadConfig field>``
    (the ``--maskiou-conv-channels``, ... flags)."""
    return ({f.name for f in dataclasses.fields(TrainConfig)}
            | {"maskiou_" + f.name for f in dataclasses.fields(HeadConfig)})


def resolve(preset: str, overrides: dict[str, Any]) -> TrainConfig:
    """Preset values, then every override that is not None."""
    if preset not in PRESETS:
        raise ValueError(f"unknown config {preset!r}; choose one of {', '.join(PRESETS)}")
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    kinds = field_types(TrainConfig)
    for key, value in values.items():  # "--weights-backbone none" clears a preset's weights
        if isinstance(value, str) and value.lower() in ("none", "null", "") \
                and "none" not in (choices_of(kinds.get(key)) or ()):
            values[key] = None
    return TrainConfig.from_dict(values)


def parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, title: str,
                            prefix: str = "", skip: tuple[str, ...] = ()) -> None:
    """One ``--<prefix><field>`` flag per field of the dataclass ``cls`` (dest
    ``<prefix><field>`` with underscores), defaulting to None (= keep the config's value); a
    ``Literal`` field's flag takes only its choices (plus ``none`` where None is allowed)."""
    group = parser.add_argument_group(title)
    kinds = field_types(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        name = prefix + f.name
        flag, kind = "--" + name.replace("_", "-"), str(f.type)
        kw: dict[str, Any] = {"default": None, "dest": name}
        choices = choices_of(kinds[f.name])
        if choices is not None:
            ints = all(isinstance(c, int) for c in choices)
            kw.update(type=int if ints else str, choices=list(choices))
            if not ints and "None" in kind and "none" not in choices:
                kw["choices"].append("none")
        elif "bool" in kind:
            kw.update(type=parse_bool, metavar="BOOL")
        elif "list[int]" in kind:
            kw.update(type=int, nargs="+")
        elif "int" in kind:
            kw.update(type=int)
        elif "float" in kind:
            kw.update(type=float)
        else:
            kw.update(type=str)
        group.add_argument(flag, **kw)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per TrainConfig field, defaulting to None (= keep the preset's value)."""
    add_dataclass_arguments(parser, TrainConfig, "config overrides (default: the preset's value)",
                            skip=("maskiou", "freeze_detector", "amp",  # dedicated CLI flags
                                  "maskiou_head"))
    # the end-to-end head regresses the true MaskIoU (the paper's target): no --maskiou-target
    add_dataclass_arguments(parser, HeadConfig, "MaskIoU head (default: the preset's value)",
                            prefix="maskiou_", skip=("target",))
