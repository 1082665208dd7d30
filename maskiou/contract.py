"""The adapter contract: what a detector framework implements so that maskiou works on it.

Every framework reaches maskiou through one adapter object (torchvision's and detectron2's in
``maskiou_integrations``, a third one through the ``maskiou.adapters`` entry point or
:func:`maskiou.register_adapter`). This module is the whole contract, written as code:

- :class:`Adapter`, the members every adapter has (attaching the head);
- the optional **capabilities**, each a small Protocol below, that an adapter declares by name in
  its ``capabilities`` attribute (a frozenset of names of :data:`CAPABILITIES`). maskiou never
  probes for a member with ``hasattr``: it asks :func:`require`, which names what is missing.

=============== ============================================ ===================================
capability      members                                      used by
=============== ============================================ ===================================
``predict``     ``predict(model, images)``                   evaluation, demo, ``check_adapter``
``collect``     ``collect(model, images)``                   the add-on (``maskiou-addon``)
``load``        ``load_detector(detector)``                  every checkpoint loader
``convert``     ``checkpoint_from_files(...)``               ``maskiou-addon --detector-config``
``train``       ``train_embedded(output_dir, device)``       ``coco_eval.py --retrain``
``losses``      ``losses(model, images, targets)``           ``check_adapter`` (training)
``cost``        ``mask_branch(model)``                       the cost table
``export``      ``export_example(model, size)``              ``maskiou-export --torchscript``,
                                                             ``--onnx``
=============== ============================================ ===================================

Images and detections cross the contract in maskiou's own format, whatever the framework's:

- an **image** is ``Tensor[3, H, W]``, float RGB in [0, 1], on the model's device;
- a **detection record** (one per image) is a dict of tensors with ``n`` rows, highest
  ``scores`` first: ``boxes`` Tensor[n, 4] (x1, y1, x2, y2 in the image's pixels), ``labels``
  Tensor[n] int64 (1..K, 0 is the background, as torchvision counts), ``scores`` Tensor[n],
  ``masks`` Tensor[n, 1, H, W] (mask probabilities, or 0/1, pasted in the image). With a head,
  also ``cls_scores`` (the detector's class confidence), ``mask_quality`` (the head's output:
  the mask's predicted IoU or COCO-threshold share, by the head's ``target``) and ``maskness``
  Tensor[n] (:func:`maskiou.maskness`); ``scores`` is then the final score, the head's
  recalibration of these signals (:mod:`maskiou.calibration`);
- a **target** (``losses``) is a dict: ``boxes`` Tensor[G, 4], ``labels`` Tensor[G] int64
  (1..K), ``masks`` Tensor[G, H, W] uint8 (torchvision's detection targets).

:func:`maskiou.check_adapter` runs the contract against a model and names every member that
does not hold it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn


class AdapterContractError(TypeError):
    """An adapter lacks a member or a capability that is needed (the message names it)."""


@runtime_checkable
class Adapter(Protocol):
    """What every adapter has: enough to attach the head.

    Attributes:
        name: shown in messages, e.g. ``"torchvision MaskRCNN (maskiou_integrations...)"``.
        framework: the name checkpoints record (``"framework"``), so that the adapter that
            rebuilds their models is found again (:func:`maskiou.framework_adapter`).
        capabilities: the optional capabilities it implements (names of :data:`CAPABILITIES`).
    """

    name: str
    framework: str
    capabilities: frozenset[str]

    def matches(self, model: nn.Module) -> bool:
        """Whether this adapter handles ``model`` (e.g. an ``isinstance`` check)."""
        ...

    def head_defaults(self, model: nn.Module) -> dict[str, Any]:
        """The head arguments the model implies: ``in_channels`` (channels of the mask branch's
        RoI features), ``num_classes`` (with the background), ``roi_size`` (their side S), and
        optionally ``mask_size`` (side M of the mask probabilities, default 2 S). Raises
        TypeError, with one line saying why, for a model of the family it cannot attach to."""
        ...

    def install(self, model: nn.Module, head: nn.Module, config: Any) -> None:
        """Put ``head`` (a :class:`maskiou.MaskIoUHead`) and ``config``
        (:class:`maskiou.MaskIoUConfig`) in ``model`` so that its forward adds
        ``loss_maskiou`` to the training losses and, at inference, ``cls_scores``,
        ``mask_quality``, ``maskness`` and the final ``scores``, re-sorted: by calling the core
        functions of :mod:`maskiou.branch` and :mod:`maskiou.scoring`."""
        ...


class Predicts(Protocol):
    """Capability ``predict``: run a model on maskiou's images, return maskiou's records."""

    def predict(self, model: nn.Module, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """One detection record per image (see the module docstring), the model in eval mode
        under ``torch.no_grad``. A model without a head returns its own ``scores``, and
        ``maskness`` where it can compute it."""
        ...


class Collects(Protocol):
    """Capability ``collect``: feed the add-on with each final detection's head inputs."""

    def collect(self, model: nn.Module, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """For a model with a head attached: :meth:`Predicts.predict`'s records in the
        detector's own order, ``scores`` being the class confidence, with the head's inputs
        beside each detection: ``roi_features`` Tensor[n, C, S, S] and ``mask_probs``
        Tensor[n, M, M] (the predicted class's mask probabilities, as the head sees them)."""
        ...


class Loads(Protocol):
    """Capability ``load``: rebuild the detector a checkpoint describes."""

    def load_detector(self, detector: Mapping[str, Any]) -> nn.Module:
        """The plain detector (no head, weights not loaded yet, CPU, eval mode) that a
        checkpoint's ``"detector"`` entry describes; that entry is the adapter's own format
        (JSON-like values), written by the framework's trainer or converter."""
        ...


class Converts(Protocol):
    """Capability ``convert``: a maskiou checkpoint from the framework's own files."""

    def checkpoint_from_files(self, config_file: str | None, weights: str,
                              class_names: list[str],
                              label_to_cat_id: dict[int, int]) -> dict[str, Any]:
        """A maskiou checkpoint (see ``maskiou.models.checkpoint``) of the detector that a
        config file and a weights file name, for these classes. ``config_file`` None: the
        framework's weights file alone (``maskiou-addon --detector WEIGHTS`` on a file that
        pickles the framework's classes); the adapter reads what it needs from it, or from
        where its trainer leaves it, or raises ValueError naming what is missing."""
        ...


class TrainsEmbedded(Protocol):
    """Capability ``train``: train the framework's plain detector on the embedded data."""

    def train_embedded(self, output_dir: str, device: str = "cpu") -> str:
        """Train the recipe of the framework's shipped plain detector again, with the
        framework's own trainer (torchvision's: ``maskiou-train``), into ``output_dir``;
        returns the maskiou checkpoint's path."""
        ...


class Exports(Protocol):
    """Capability ``export``: the model scripts with ``torch.jit.script`` and exports with the
    TorchScript-based ONNX exporter as it is (``maskiou.training.deploy``): its eval-mode
    ``forward`` takes ``list[Tensor[3, H, W]]`` (maskiou's images) and returns one detection
    record per image, fields in the order ``boxes``, ``labels``, ``scores``, ``masks`` (then
    ``cls_scores``, ``mask_quality``, ``maskness`` with a head). An adapter whose models do not
    (their forward takes another input, or the final score is computed outside the module)
    leaves it undeclared, and ``maskiou-export`` refuses their checkpoints in one line."""

    def export_example(self, model: nn.Module,
                       size: tuple[int, int] | None = None) -> list[Tensor]:
        """``[Tensor[3, H, W]]``, one example image to trace the ONNX graph with, of ``size``
        (H, W) or, by default, the size the model's test-time preprocessing works at."""
        ...


class HasLosses(Protocol):
    """Capability ``losses``: one training forward on maskiou's images and targets."""

    def losses(self, model: nn.Module, images: list[Tensor],
               targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """The model's loss dict (``loss_maskiou`` among them when a head is attached), the
        model in training mode."""
        ...


class MeasuresCost(Protocol):
    """Capability ``cost``: the mask branch as a function, to compare the head's cost with."""

    def mask_branch(self, model: nn.Module) -> Callable[[Tensor], Tensor]:
        """The mask head and predictor as a function of the pooled RoI features
        Tensor[N, C, S, S] (what the MaskIoU head also reads)."""
        ...


#: The optional capabilities by name: ``{name: (Protocol, members, what it is needed for)}``.
#: An adapter declares the ones it implements in its ``capabilities``; :func:`require` checks.
CAPABILITIES: dict[str, tuple[type, tuple[str, ...], str]] = {
    "predict": (Predicts, ("predict",), "to run the model on images and read its detections"),
    "collect": (Collects, ("collect",), "to read each final detection's head inputs (the "
                "add-on's collection pass)"),
    "load": (Loads, ("load_detector",), "to rebuild a model from a maskiou checkpoint"),
    "convert": (Converts, ("checkpoint_from_files",), "to read the framework's own config and "
                "weights files"),
    "train": (TrainsEmbedded, ("train_embedded",), "to train the framework's detector on the "
              "embedded data"),
    "losses": (HasLosses, ("losses",), "to run a training step on maskiou's targets"),
    "cost": (MeasuresCost, ("mask_branch",), "to measure the mask branch's cost"),
    "export": (Exports, ("export_example",), "to write the model as TorchScript and ONNX "
               "(its forward scripts and traces as it is)"),
}
"""Capability name -> (its Protocol, its members, what maskiou needs it for)."""

REQUIRED = ("name", "framework", "capabilities", "matches", "head_defaults", "install")


def capabilities_of(adapter: Any) -> frozenset[str]:
    """The capabilities ``adapter`` declares (empty for an adapter written before they
    existed)."""
    declared = getattr(adapter, "capabilities", frozenset())
    return frozenset(declared)


def missing_members(adapter: Any) -> list[str]:
    """The required members and the members of declared capabilities that ``adapter`` lacks
    (or that are not callable), each as ``"member (what it is for)"``."""
    out = []
    for member in REQUIRED:
        value = getattr(adapter, member, None)
        if value is None:
            out.append(f"{member} (required of every adapter)")
        elif member in ("matches", "head_defaults", "install") and not callable(value):
            out.append(f"{member} (not callable)")
    declared = capabilities_of(adapter)
    for name in sorted(declared - CAPABILITIES.keys()):
        out.append(f"capability {name!r} (unknown; known: {', '.join(CAPABILITIES)})")
    for name in sorted(declared & CAPABILITIES.keys()):
        _, members, purpose = CAPABILITIES[name]
        for member in members:
            if not callable(getattr(adapter, member, None)):
                out.append(f"{member} (declared capability {name!r}: {purpose})")
    return out


def require(adapter: Any, capability: str, needed_for: str = "") -> Any:
    """``adapter`` if it declares ``capability`` and has its members, else an
    :class:`AdapterContractError` naming the adapter, the capability, its members and
    ``needed_for``."""
    if capability not in CAPABILITIES:
        raise ValueError(f"unknown capability {capability!r}; known: {', '.join(CAPABILITIES)}")
    _, members, purpose = CAPABILITIES[capability]
    name = getattr(adapter, "name", type(adapter).__name__)
    why = f" {needed_for} needs it" if needed_for else ""
    if capability not in capabilities_of(adapter):
        raise AdapterContractError(
            f"the adapter {name} does not declare the capability {capability!r} "
            f"({', '.join(m + '(...)' for m in members)}: {purpose});{why} (see "
            "maskiou.contract)")
    lacking = [m for m in members if not callable(getattr(adapter, m, None))]
    if lacking:
        raise AdapterContractError(f"the adapter {name} declares {capability!r} but has no "
                                   f"{', '.join(lacking)}{';' + why if why else ''}")
    return adapter


def has_capability(adapter: Any, capability: str) -> bool:
    """Whether ``adapter`` declares ``capability`` and has its members."""
    try:
        require(adapter, capability)
    except AdapterContractError:
        return False
    return True
