"""``attach_maskiou_head``: find the adapter for a model and install the MaskIoU head in it.

An adapter implements the contract of :mod:`maskiou.contract` (the members every adapter has,
and the optional capabilities it declares); :func:`maskiou.check_adapter` runs it against a
model.

Adapters are plugins. A package ships one by declaring an entry point in the group
``maskiou.adapters`` (``name = "package.module:AdapterClass"``, a class or an instance); the
built-in adapters (``maskiou_integrations``) are found the same way. ``register_adapter`` adds
one at run time. The core itself never imports an adapter or a detector library.

Discovery is lazy and happens once per process: the group is listed on first use, and an entry
point's module is imported only for a model that may belong to its framework, then kept. The
rule (:func:`entry_point_may_handle`): the part of the entry point's name before its first
``-`` names the top-level package of the models it handles (``torchvision-maskrcnn``,
``detectron2-rcnn``, ``ultralytics-yolo``); it is imported only for a model whose class, or one
of its bases, comes from that package. A name whose first part is not an installed top-level
package (``mydetector``) is imported for every model. So attaching the head to a torchvision
model never imports ultralytics or detectron2, nor runs what their import does.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from dataclasses import dataclass
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .branch import MaskIoUConfig
from .contract import Adapter, AdapterContractError, missing_members, require
from .head import MaskIoUHead

#: The entry-point group where packages declare their adapters (in ``pyproject.toml``:
#: ``[project.entry-points."maskiou.adapters"]``); :func:`available_adapters` loads them.
ENTRY_POINT_GROUP = "maskiou.adapters"
_registered: list[Adapter] = []


def register_adapter(adapter: Adapter) -> Adapter:
    """Make ``attach_maskiou_head`` recognise another detector family, ahead of the adapters
    found through entry points. Returns ``adapter``."""
    missing = missing_members(adapter)
    if missing:
        raise AdapterContractError(f"{adapter!r} is not an adapter: it lacks "
                                   f"{'; '.join(missing)} (see maskiou.contract)")
    _registered.insert(0, adapter)
    return adapter


# --- discovery: entry points listed once, each imported at most once --------------------------


@dataclass(frozen=True)
class _Loaded:
    """What importing one entry point gave: its adapter, or why it has none (``failure``:
    ``"name = module:attr (ErrorType: message)"``, None for a module that loaded but is not
    an adapter)."""

    adapter: Adapter | None
    failure: str | None = None


_listed: tuple[EntryPoint, ...] | None = None  # the group's entry points, listed once
_loaded: dict[str, _Loaded] = {}  # by entry point value ("module:attr"): imported once


def _group_entry_points() -> tuple[EntryPoint, ...]:
    """The entry points of :data:`ENTRY_POINT_GROUP`, listed on first use and kept for the
    process; one per value (the same distribution found twice on ``sys.path`` lists it twice)."""
    global _listed
    if _listed is None:
        unique: dict[str, EntryPoint] = {}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            unique.setdefault(ep.value, ep)
        _listed = tuple(unique.values())
    return _listed


def framework_package(name: str) -> str:
    """The package an entry-point or framework name refers to: its part before the first
    ``-`` (``ultralytics-yolo`` -> ``ultralytics``)."""
    return name.split("-", 1)[0]


@cache
def _is_installed_package(name: str) -> bool:
    """Whether ``name`` is an importable top-level package or module (found, not imported)."""
    if not name.isidentifier():
        return False
    if name in sys.modules:  # (find_spec raises for a module made without a spec)
        return True
    return importlib.util.find_spec(name) is not None


def model_packages(model: Any) -> frozenset[str]:
    """The top-level packages of the class of ``model`` and of its bases, e.g. torchvision,
    torch and builtins for a torchvision ``MaskRCNN``."""
    return frozenset(c.__module__.split(".")[0] for c in type(model).__mro__)


def entry_point_may_handle(name: str, packages: frozenset[str]) -> bool:
    """Whether the entry point called ``name`` is to be imported for a model whose classes come
    from ``packages`` (:func:`model_packages`): its :func:`framework_package` is one of them, or
    is not an installed package (then the name says nothing about the models it handles)."""
    package = framework_package(name)
    return package in packages or not _is_installed_package(package)


def _load(ep: EntryPoint) -> _Loaded:
    """Import ``ep`` once per process and keep the outcome. An entry point whose framework's
    package is not installed (a ModuleNotFoundError for that package) is skipped quietly; one
    that raises anything else while importing or building its adapter is skipped with one
    warning naming it and the error; one that loads but is not an adapter, with one warning."""
    if ep.value in _loaded:
        return _loaded[ep.value]
    try:
        obj = ep.load()
        adapter = obj() if isinstance(obj, type) else obj
    except Exception as e:  # noqa: BLE001 - a broken plugin must not stop the others
        failure = f"{ep.name} = {ep.value} ({type(e).__name__}: {e})"
        framework_missing = (isinstance(e, ModuleNotFoundError) and e.name is not None
                             and e.name.split(".")[0] == framework_package(ep.name))
        if not framework_missing:
            warnings.warn(f"maskiou: the adapter entry point {failure} failed to import; "
                          "skipped (the other adapters still work)", RuntimeWarning,
                          stacklevel=4)
        outcome = _Loaded(None, failure)
    else:
        missing = missing_members(adapter)
        if missing:
            warnings.warn(f"entry point {ep.name} = {ep.value} in {ENTRY_POINT_GROUP} is not an "
                          f"adapter (it lacks {'; '.join(missing)}; see maskiou.contract); "
                          "ignored", stacklevel=4)
            outcome = _Loaded(None)
        else:
            outcome = _Loaded(adapter)
    _loaded[ep.value] = outcome
    return outcome


def _loaded_adapters(eps: list[EntryPoint], failed: list[str] | None) -> list[Adapter]:
    """The adapters of ``eps`` (imported now unless already), appending each failure to
    ``failed`` when a list is given."""
    adapters = []
    for ep in eps:
        outcome = _load(ep)
        if outcome.adapter is not None:
            adapters.append(outcome.adapter)
        elif outcome.failure is not None and failed is not None:
            failed.append(outcome.failure)
    return adapters


def entry_point_adapters(failed: list[str] | None = None) -> list[Adapter]:
    """Every adapter that installed packages declare in the ``maskiou.adapters`` entry-point
    group, each imported now unless it already was (an explicit listing: it imports them all).
    One that fails to import is skipped (see ``_load``), and ``"name = module:attr (the
    error)"`` is appended to ``failed`` when a list is given."""
    return _loaded_adapters(list(_group_entry_points()), failed)


def available_adapters(failed: list[str] | None = None) -> list[Adapter]:
    """Registered adapters first (newest first), then every one found through entry points
    (``failed``: see ``entry_point_adapters``). Imports every plugin: to find the adapter of a
    model, :func:`find_adapter` imports only those that may handle it."""
    return [*_registered, *entry_point_adapters(failed)]


def _failed_note(failed: list[str]) -> str:
    """The entry points that failed to import, for an error message ("" when none did)."""
    return f" Entry points that failed to import: {'; '.join(failed)}." if failed else ""


def find_adapter(model: nn.Module) -> Adapter:
    """The first adapter whose ``matches(model)`` is true (registered ones first, then the
    entry points that may handle the model, in the group's order: ``entry_point_may_handle``),
    or a TypeError saying what exists."""
    for adapter in _registered:
        if adapter.matches(model):
            return adapter
    packages = model_packages(model)
    eps = _group_entry_points()
    mine = [ep for ep in eps if entry_point_may_handle(ep.name, packages)]
    failed: list[str] = []
    tried = [*_registered]
    for ep in mine:
        for adapter in _loaded_adapters([ep], failed):
            if adapter.matches(model):
                return adapter
            tried.append(adapter)
    names = ", ".join(a.name for a in tried) or "none"
    others = [ep.name for ep in eps if ep not in mine]
    not_imported = (f" Not imported (for models of other packages): {', '.join(others)}."
                    if others else "")
    # a broken install (say an editable one whose folder moved) shows here, not as "none"
    broken = _failed_note(failed)
    raise TypeError(
        f"attach_maskiou_head: no adapter for {type(model).__module__}.{type(model).__name__}. "
        f"Adapters available: {names}.{not_imported}{broken} To support another segmenter, "
        "write an adapter (the contract: maskiou.contract; checked by maskiou.check_adapter; an "
        "example: examples/custom_adapter.py) and pass it as adapter=..., call "
        "maskiou.register_adapter(...), or declare it as an entry point in the group "
        f"'{ENTRY_POINT_GROUP}'."
    )


class UnknownFrameworkError(LookupError):
    """No installed adapter handles the models of a framework a checkpoint or a flag names."""


def framework_adapter(framework: str, capability: str = "load", needed_for: str = "") -> Adapter:
    """The adapter of ``framework`` (its ``framework`` attribute, as checkpoints record it)
    that declares ``capability`` (default ``"load"``: it rebuilds the models of maskiou
    checkpoints), or an ``UnknownFrameworkError`` naming what is installed (an
    :class:`~maskiou.contract.AdapterContractError` when the framework's adapter lacks the
    capability).

    Registered adapters are asked first; then the entry points named after the framework's
    package (``torchvision`` -> ``torchvision-maskrcnn``); then those whose name is no
    installed package; only when none of these is the framework's, every entry point."""
    for adapter in _registered:
        if adapter.framework == framework:
            return require(adapter, capability, needed_for)
    package = framework_package(framework)
    eps = list(_group_entry_points())
    named = [ep for ep in eps if framework_package(ep.name) == package]
    unnamed = [ep for ep in eps if ep not in named
               and not _is_installed_package(framework_package(ep.name))]
    rest = [ep for ep in eps if ep not in named and ep not in unnamed]
    failed: list[str] = []
    for ep in [*named, *unnamed, *rest]:  # one at a time: stop at the framework's own
        for adapter in _loaded_adapters([ep], failed):
            if adapter.framework == framework:
                return require(adapter, capability, needed_for)
    adapters = [*_registered, *_loaded_adapters(eps, None)]  # all imported by now
    known = ", ".join(sorted({a.framework for a in adapters})) or "none"
    broken = _failed_note(failed)
    raise UnknownFrameworkError(f"no adapter loads {framework} models (frameworks available: "
                                f"{known}).{broken} Is {framework} installed?")


def find_maskiou_head(model: nn.Module) -> MaskIoUHead | None:
    """The MaskIoU head installed somewhere in ``model``, or None."""
    for module in model.modules():
        if isinstance(module, MaskIoUHead):
            return module
    return None


class _EvalOnlyNorm:
    """Mixin of the frozen batch-norm classes: ``train(mode)`` keeps the layer in eval mode."""

    _maskiou_norm_base: type  # the class it was frozen from

    def train(self, mode: bool = True):  # returns self, as nn.Module.train does
        return super().train(False)  # type: ignore[misc]

    def __reduce_ex__(self, protocol: int):
        # object's reduction names this class, which a new process has not made yet: rebuild
        # through the original class instead (also what copy.deepcopy calls); state as before
        return (_new_frozen_norm, (self._maskiou_norm_base,), *super().__reduce_ex__(protocol)[2:])


_FROZEN_NORM_CLASSES: dict[type, type] = {}


def frozen_norm_class(base: type) -> type:
    """The class a frozen ``base`` (a ``_BatchNorm`` subclass) becomes: ``base`` whose ``train``
    always keeps eval behaviour, every other member of ``base`` kept (``forward`` and the
    state_dict included). Made once per class and kept in this module under its own name, so
    that TorchScript and pickling find it (a pickled layer is rebuilt from ``base``, so a new
    process loads it too)."""
    if issubclass(base, _EvalOnlyNorm):
        return base
    if base not in _FROZEN_NORM_CLASSES:
        name = f"EvalOnly{base.__name__}_{len(_FROZEN_NORM_CLASSES)}"
        members = {"_maskiou_norm_base": base, "__module__": __name__, "__qualname__": name}
        cls = type(name, (_EvalOnlyNorm, base), members)
        globals()[name] = cls
        _FROZEN_NORM_CLASSES[base] = cls
    return _FROZEN_NORM_CLASSES[base]


def _new_frozen_norm(base: type) -> nn.Module:
    """An empty frozen ``base`` layer for unpickling (its state is set after)."""
    cls = frozen_norm_class(base)
    return cls.__new__(cls)


def freeze_model(model: nn.Module) -> None:
    """Freeze every parameter of ``model`` and keep its batch-norm layers in eval behaviour.

    ``model.train()`` still switches the detector's training logic (proposal sampling, losses),
    but every batch-norm layer (any ``_BatchNorm`` subclass, ``SyncBatchNorm`` included) is put
    in eval mode and its class swapped for a subclass (``frozen_norm_class``) whose
    ``train(mode)`` leaves it there, so its running statistics never move: after an optimizer
    step the detector is bit-identical. The layers keep their parameters, buffers and state_dict
    keys; being their class, the freeze survives ``copy.deepcopy`` and pickling, and the model
    still scripts with TorchScript (no hook). Calling it twice is harmless.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.__class__ = frozen_norm_class(type(m))
            m.eval()


def attach_maskiou_head(
    model: nn.Module,
    *,
    freeze_detector: bool = False,
    rescore_outputs: bool = True,
    loss_weight: float = 1.0,
    detach_inputs: bool = False,
    keep: str = "all",
    adapter: Adapter | None = None,
    **head_kwargs: Any,
) -> nn.Module:
    """Turn an RoI-based instance segmenter into its Mask Scoring version, in place.

    Args:
        model: e.g. any ``torchvision.models.detection.MaskRCNN``.
        freeze_detector: add-on mode: every parameter the detector had is frozen and its norm
            layers stay in eval behaviour; only the head trains.
        rescore_outputs: at inference ``scores`` = cls score x predicted MaskIoU (the original
            scores stay in ``cls_scores``, the head's output in ``mask_quality``).
        loss_weight: weight of ``loss_maskiou`` (paper: 1).
        detach_inputs: keep the MaskIoU loss out of the RoI features and the mask branch.
        keep: ``"all"`` detections in ``model(images)``, or only the masks ``"worth"`` keeping
            (by the per-class thresholds the add-on stores in the head; scripted and ONNX
            models too). A switch in the head's state dict; ``maskiou.set_keep`` changes it.
        adapter: use this adapter instead of looking one up.
        **head_kwargs: passed to :class:`MaskIoUHead` over the model's defaults
            (``conv_channels``, ``num_convs``, ``fc_dim``, ``fusion``, ...).

    Returns:
        The same model object.
    """
    if find_maskiou_head(model) is not None:
        raise ValueError("attach_maskiou_head: this model already has a MaskIoU head")
    if adapter is None:
        adapter = find_adapter(model)
    else:
        missing = missing_members(adapter)
        if missing:
            raise AdapterContractError(f"{adapter!r} is not an adapter: it lacks "
                                       f"{'; '.join(missing)} (see maskiou.contract)")
    kwargs = {**adapter.head_defaults(model), **head_kwargs}
    if freeze_detector:
        freeze_model(model)
    param = next(model.parameters(), None)
    head = MaskIoUHead(**kwargs)
    if param is not None:
        head = head.to(device=param.device, dtype=param.dtype)
    config = MaskIoUConfig(rescore_outputs=rescore_outputs, loss_weight=loss_weight,
                           detach_inputs=detach_inputs, freeze_detector=freeze_detector,
                           keep=keep)  # type: ignore[arg-type] (checked by the config)
    head.calibration.keep_worth_only.fill_(config.keep == "worth")
    adapter.install(model, head, config)
    return model
