"""``attach_maskiou_head``: find the adapter for a model and install the MaskIoU head in it.

An adapter implements the contract of :mod:`maskiou.contract` (the members every adapter has,
and the optional capabilities it declares); :func:`maskiou.check_adapter` runs it against a
model.

Adapters are plugins. A package ships one by declaring an entry point in the group
``maskiou.adapters`` (``name = "package.module:AdapterClass"``, a class or an instance); the
built-in torchvision adapter (``maskiou_integrations.torchvision_maskrcnn``) is found the same
way. ``register_adapter`` adds one at run time. The core itself never imports an adapter or a
detector library.
"""

from __future__ import annotations

import warnings
from importlib.metadata import entry_points
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


def entry_point_adapters(failed: list[str] | None = None) -> list[Adapter]:
    """The adapters that installed packages declare in the ``maskiou.adapters`` entry-point
    group. An adapter whose module cannot be imported (its detector library is not installed)
    is skipped, and ``"name = module:attr (the ImportError)"`` is appended to ``failed`` when a
    list is given; one that loads but is not an adapter is skipped with a warning."""
    adapters: list[Adapter] = []
    seen: set[str] = set()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.value in seen:  # the same distribution found twice on sys.path
            continue
        seen.add(ep.value)
        try:
            obj = ep.load()
        except ImportError as e:
            if failed is not None:
                failed.append(f"{ep.name} = {ep.value} ({type(e).__name__}: {e})")
            continue
        adapter = obj() if isinstance(obj, type) else obj
        missing = missing_members(adapter)
        if not missing:
            adapters.append(adapter)
        else:
            warnings.warn(f"entry point {ep.name} = {ep.value} in {ENTRY_POINT_GROUP} is not an "
                          f"adapter (it lacks {'; '.join(missing)}; see maskiou.contract); "
                          "ignored", stacklevel=2)
    return adapters


def available_adapters(failed: list[str] | None = None) -> list[Adapter]:
    """Registered adapters first (newest first), then those found through entry points
    (``failed``: see ``entry_point_adapters``)."""
    return [*_registered, *entry_point_adapters(failed)]


def _failed_note(failed: list[str]) -> str:
    """The entry points that failed to import, for an error message ("" when none did)."""
    return f" Entry points that failed to import: {'; '.join(failed)}." if failed else ""


def find_adapter(model: nn.Module) -> Adapter:
    """The first adapter whose ``matches(model)`` is true, or a TypeError saying what exists."""
    failed: list[str] = []
    adapters = available_adapters(failed)
    for adapter in adapters:
        if adapter.matches(model):
            return adapter
    names = ", ".join(a.name for a in adapters) or "none"
    # a broken install (say an editable one whose folder moved) shows here, not as "none"
    broken = _failed_note(failed)
    raise TypeError(
        f"attach_maskiou_head: no adapter for {type(model).__module__}.{type(model).__name__}. "
        f"Adapters available: {names}.{broken} To support another segmenter, write an adapter "
        "(the contract: maskiou.contract; checked by maskiou.check_adapter; an example: "
        "examples/custom_adapter.py) and pass it as adapter=..., call "
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
    capability)."""
    failed: list[str] = []
    adapters = available_adapters(failed)
    mine = [a for a in adapters if a.framework == framework]
    if mine:
        return require(mine[0], capability, needed_for)
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
                           detach_inputs=detach_inputs, freeze_detector=freeze_detector)
    adapter.install(model, head, config)
    return model
