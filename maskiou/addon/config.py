"""The add-on's configuration (:class:`AddonConfig`), without torch: the command line
validates it before anything heavy is imported. Every choice is a lever with a measured row in
the ablation table.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from maskiou.configs import HeadConfig
from maskiou.options import ConfigError, bounded, check_fields

Loss = Literal["l2", "smooth_l1", "bce"]
Target = Literal["iou", "coco"]
Zoom = Literal["auto", "in", "out", "both", "none"]
RecalibrationKind = Literal["search", "logistic", "none"]
LOSSES: tuple[str, ...] = typing.get_args(Loss)
TARGETS: tuple[str, ...] = typing.get_args(Target)
# crossfit_folds=-1: few labeled images are worth k head trainings (each image then serves the
# head and the recalibration); with many, the held-out fifth costs less and loses little
AUTO_CROSSFIT_FOLDS = 5
AUTO_CROSSFIT_BELOW = 1000


def addon_head() -> HeadConfig:
    """The add-on's head: 2 convolutions of 64, FC 256, the class score and maskness as inputs."""
    return HeadConfig(conv_channels=64, num_convs=2, fc_dim=256, score_inputs=2)


@dataclass
class AddonConfig:
    """Everything head-only training decides (saved in the add-on checkpoint)."""

    # the head (its ``output`` follows the loss: sigmoid for BCE)
    head: HeadConfig = field(default_factory=addon_head)
    # its training samples: every final detection of the add-on images (target from the true
    # MaskIoU, 0 for a false positive); min_target >= 0 keeps only true MaskIoUs above it (the
    # paper trains on positives: > 0)
    min_target: float = bounded(-1.0, -1.0, 1.0)
    # what the head regresses: "iou" (the true MaskIoU, as the paper) or "coco" (the share of
    # COCO's ten IoU thresholds 0.50:0.05:0.95 the mask passes: what mask AP rewards)
    target: Target = "coco"
    # views of the head's training images the detector is also run on (new detections of the
    # same objects, see maskiou.addon.views): the mirror image, a brightness and contrast
    # jitter, and scale jitter (a crop the detector enlarges, a canvas it shrinks)
    flip: bool = True
    photometric: bool = False
    # "in", "out", "both" or "none"; "auto": both below AUTO_CROSSFIT_BELOW images, else none
    zoom: Zoom = "auto"
    max_detections: int = bounded(100, 1)  # per image, the highest scored
    # optimization
    loss: Loss = "l2"
    # weight of a pairwise ranking loss on the final score (cls x predicted): within a class,
    # a detection whose target is higher by 0.1 should score higher (0: none)
    rank_weight: float = bounded(0.1, 0.0)
    epochs: int = bounded(12, 1)
    # at least this many optimizer steps (more epochs on few detections: 12 epochs of 250
    # images are about 200 steps, of 2,000 images about 1,500)
    min_steps: int = bounded(0, 0)
    batch_size: int = bounded(256, 1)
    lr: float = bounded(1e-3, 0.0, low_open=True)
    weight_decay: float = bounded(1e-4, 0.0)
    seed: int = 0
    # recalibration fitted on a held-out share of the add-on images: weights searched for AP
    # ("search"), or a logistic fit of the target ("logistic"); "none": no recalibration
    recalibration: RecalibrationKind = "search"
    recalibration_holdout: float = bounded(0.2, 0.0, 0.95, low_open=True)
    # cross-fitting instead of the held-out share (k >= 2): a head trained on k-1 folds of the
    # images predicts the k-th, the recalibration fits on all these out-of-fold predictions,
    # and the shipped head is trained on every image ("all") or is the fold heads' average;
    # -1: AUTO_CROSSFIT_FOLDS folds below AUTO_CROSSFIT_BELOW images, else the held-out share
    crossfit_folds: int = bounded(-1, -1)
    crossfit_final: Literal["all", "average"] = "all"

    def __post_init__(self) -> None:
        check_fields(self)
        if self.head.target != self.target:  # the head regresses what the add-on trains it on
            self.head = dataclasses.replace(self.head, target=self.target)
        if self.crossfit_folds == 1:
            raise ConfigError("AddonConfig.crossfit_folds: 1 is not a number of folds (give -1 "
                              "for automatic, 0 for the held-out share, or >= 2)")

    def folds_for(self, num_images: int) -> int:
        """The cross-fitting folds for ``num_images`` add-on images (0: the held-out share)."""
        if self.crossfit_folds < 0:
            return AUTO_CROSSFIT_FOLDS if num_images < AUTO_CROSSFIT_BELOW else 0
        return self.crossfit_folds

    def zoom_views_for(self, num_images: int) -> tuple[str, ...]:
        """The scale-jitter views (``"zoom-in"``, ``"zoom-out"``) of ``num_images`` add-on
        images' training images."""
        zoom = self.zoom
        if zoom == "auto":
            zoom = "both" if num_images < AUTO_CROSSFIT_BELOW else "none"
        views = {"in": ("zoom-in",), "out": ("zoom-out",), "both": ("zoom-in", "zoom-out"),
                 "none": ()}
        return views[zoom]

    def head_config(self) -> HeadConfig:
        """The head as it is built: ``head`` with the output the loss needs and the target it
        regresses (:attr:`target`)."""
        return dataclasses.replace(self.head, output="sigmoid" if self.loss == "bce"
                                   else self.head.output, target=self.target)

    def head_kwargs(self) -> dict[str, Any]:
        return self.head_config().kwargs()

    def replace(self, **changes: Any) -> AddonConfig:
        """A copy with ``changes``; :class:`HeadConfig` fields (``conv_channels=32``, ...) go to
        the head."""
        head = HeadConfig.pop_from(changes)
        new = dataclasses.replace(self, **changes)
        return dataclasses.replace(new, head=dataclasses.replace(new.head, **head)) if head \
            else new

    @staticmethod
    def from_dict(values: dict[str, Any]) -> AddonConfig:
        """The config of a dict: ``dataclasses.asdict``'s form, or the flat form of add-on
        checkpoints written before the head had its own record (``conv_channels``, ...,
        ``score_inputs: true``). A config without ``crossfit_folds`` is from before
        cross-fitting: the held-out share (0); one without ``zoom``, from before the zoom
        views: none."""
        values = dict(values)
        head = values.pop("head", None) or {}
        head = {**dataclasses.asdict(addon_head()), **head, **HeadConfig.pop_from(values)}
        values.setdefault("crossfit_folds", 0)  # what every add-on did before the field
        values.setdefault("zoom", "none")
        return AddonConfig(**values, head=HeadConfig(**head))


