"""What the adapters of RoI-head detectors share (torchvision's ``RoIHeads``, detectron2's
``StandardROIHeads``): the head is installed by giving the detector's RoI-heads module a class
that puts a scoring mixin in front of its own, and the add-on's collection reads the head's
inputs as the attached model runs.

An adapter of such a detector subclasses :class:`RoIHeadsAdapter`, names its ``mixin`` (the
class whose methods run the MaskIoU branch with :mod:`maskiou.branch`) and, if the RoI heads are
not ``model.roi_heads``, overrides :meth:`RoIHeadsAdapter.roi_heads`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, ClassVar

from torch import Tensor, nn

from .branch import MaskIoUConfig, head_inputs_recorded, install_head, scoring_subclass

_MADE: dict[type, dict[type, type]] = {}  # mixin -> {RoI-heads class: its scoring class}


def roi_size_of(output_size: Any) -> int:
    """The side S of a RoI pooler's output: ``14``, ``(14, 14)`` or ``[14, 14]`` -> 14."""
    if isinstance(output_size, (tuple, list)):
        if len(set(output_size)) != 1:
            raise TypeError(f"the MaskIoU head needs square RoI features, got {output_size}")
        return int(output_size[0])
    return int(output_size)


def split_head_inputs(seen: list[tuple[Tensor, Tensor]], sizes: list[int]
                      ) -> list[tuple[Tensor, Tensor]]:
    """The head's inputs recorded during one forward (``maskiou.branch.head_inputs_recorded``)
    split per image: ``[(roi_features Tensor[n_i, C, S, S], mask_probs Tensor[n_i, M, M])]``
    for images of ``sizes`` detections."""
    if not seen:
        raise RuntimeError("the MaskIoU head did not run: the attached model did not call it")
    features, probs = seen[-1]
    if features.shape[0] != sum(sizes):
        raise RuntimeError(f"the head saw {features.shape[0]} RoIs for {sum(sizes)} detections")
    return list(zip(features.split(sizes), probs.split(sizes)))


def records_with_head_inputs(holder: nn.Module, run: Callable[[], list[dict[str, Tensor]]]
                             ) -> list[dict[str, Tensor]]:
    """The ``collect`` of a model whose inference returns maskiou's records itself: ``run()``
    (the model's forward on the images) with the head in ``holder`` recording its inputs and
    rescoring off, so the records stay in the detector's order; each record's ``scores``
    becomes the class confidence, and ``roi_features`` Tensor[n, C, S, S] and ``mask_probs``
    Tensor[n, M, M] are added (see the capability ``collect`` of :mod:`maskiou.contract`)."""
    with head_inputs_recorded(holder) as seen:
        outputs = run()
    inputs = split_head_inputs(seen, [len(o["boxes"]) for o in outputs])
    for out, (f, p) in zip(outputs, inputs):
        out["scores"] = out.pop("cls_scores")
        out.pop("mask_quality")
        out["roi_features"], out["mask_probs"] = f, p
    return outputs


class RoIHeadsAdapter:
    """Base of the adapters whose detector has a RoI-heads module to extend.

    Subclasses set ``mixin`` (the scoring class put in front of the RoI heads' own) and
    ``base`` (the RoI-heads class the mixin extends); :meth:`install` does the rest.
    """

    mixin: ClassVar[type]
    base: ClassVar[type]

    def roi_heads(self, model: nn.Module) -> nn.Module:
        """The module that gets the head (``model.roi_heads``)."""
        return model.roi_heads

    def scoring_class(self, cls: type) -> type:
        """The class an attached ``cls`` (the base RoI-heads class or a subclass) becomes:
        the mixin's methods first in the MRO, every other override of ``cls`` kept (see
        ``maskiou.branch.scoring_subclass``). Made once per class, stored in the mixin's
        module under its own name, so that pickling and TorchScript find it."""
        made = _MADE.setdefault(self.mixin, {self.base: self.mixin})
        return scoring_subclass(cls, self.mixin, made, vars(sys.modules[self.mixin.__module__]))

    def install(self, model: nn.Module, head: nn.Module, config: MaskIoUConfig) -> None:
        """Swap the RoI heads' class for :meth:`scoring_class` and put the head and the config's
        values in them (``maskiou.branch.install_head``)."""
        rh = self.roi_heads(model)
        rh.__class__ = self.scoring_class(type(rh))
        install_head(rh, head, config)
