"""Checkpoints that are written atomically, resume exactly, and explain a mismatch in one line.

A maskiou checkpoint (schema :data:`SCHEMA`) is a dict, the same for every framework:

- ``"schema"``: 2;
- ``"framework"``: whose adapter rebuilds the model (``maskiou.contract``, capability ``load``);
- ``"detector"``: that adapter's description of the plain detector (JSON-like values), with
  ``"source"``, where it was trained when known (``{"train_split": "embedded", ...}`` or
  ``{"train_json": ..., "train_images": ...}``);
- ``"maskiou_head"``: the :class:`maskiou.head.HeadConfig` of the attached head, or None;
- ``"class_names"`` (index 0 the background), ``"label_to_cat_id"``;
- ``"model"``: the state dict;
- optional: ``"config"`` (maskiou's own trainer: the run's ``TrainConfig``, for resuming),
  ``"addon"`` (what the add-on did), ``"iteration"`` and the training state of ``last.pt``.

Files written before the schema (schema 1: maskiou's own trainer, with ``"config"`` and no
``"framework"``) are migrated when read (:func:`migrate`).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from maskiou.records import file_sha1

from .paths import missing_shipped, shipped_model_path


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model."""


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``:
    an interrupted write leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as a plain open() would create it, not mkstemp's 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint on the CPU as data (``torch.load(weights_only=True)``: tensors and plain
    values, nothing is unpickled that could run code); a missing or unreadable file, or one that
    needs more than data, is a CheckpointError of one line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same to the user
        if isinstance(e, pickle.UnpicklingError) and "eights only load failed" in str(e):
            raise CheckpointError(refusal(path)) from None
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{path}: not a maskiou checkpoint (no 'model' entry)")
    return ckpt


def refusal(path: str | Path) -> str:
    """The one line that refuses a file which needs unpickling, naming what it would build."""
    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # noqa: BLE001 - the refusal stands without the names
        needed = []
    what = f" ({', '.join(needed[:4])}{' ...' if len(needed) > 4 else ''})" if needed else ""
    return (f"{path}: refused: it holds pickled objects{what}, and loading them could run any "
            "code; maskiou reads checkpoints as data (weights_only=True). A checkpoint written "
            f"by maskiou before schema 2 converts with `maskiou-convert {path} NEW.pt` (only if "
            "you trust the file)")


def load_allowing(path: Path, allow: Callable[[str], Any], what: str, why_refused: str,
                  error: type[Exception] = CheckpointError, also: tuple[Any, ...] = ()) -> Any:
    """``torch.load(path, weights_only=True)`` of a file that pickles objects, letting through
    only what ``allow`` accepts. Every global the file names is given to ``allow`` before
    anything is unpickled: it returns the class or function to allow, or None to refuse. A file
    naming a refused one raises ``error`` ("PATH: refused: it would unpickle NAMES, WHY_REFUSED"),
    one that torch cannot read raises ``error`` ("PATH: not a readable WHAT (...)"); only the
    allowed objects, and ``also`` (objects a pickle builds without naming them as globals, such
    as NumPy's dtype classes), reach the unpickler."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as e:  # noqa: BLE001 - not a torch file at all
        raise error(f"{path}: not a readable {what} ({type(e).__name__}: {e})") from e
    allowed = {name: allow(name) for name in names}
    refused = sorted(name for name, obj in allowed.items() if obj is None)
    if refused:
        raise error(f"{path}: refused: it would unpickle {', '.join(refused)}, {why_refused}")
    with torch.serialization.safe_globals([*allowed.values(), *also]):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means the same here
            raise error(f"{path}: not a readable {what} ({type(e).__name__}: {e})") from e


def named_object(name: str) -> Any:
    """The object a pickle's global ``name`` ("package.module.attr") stands for, or None where
    its module has no such attribute."""
    import importlib

    module, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(module), attr, None)


SCHEMA = 3  # 3: the calibration weighs five signals (schema 2: four)
# schema 1 had no "framework" entry: every such file was written by maskiou's own trainer or by
# the add-on on one of its detectors, whose models are this framework's
SCHEMA1_FRAMEWORK = "torchvision"


def migrate(ckpt: dict[str, Any], path: str | Path = "checkpoint") -> dict[str, Any]:
    """``ckpt`` in the current schema (a new dict; the same one when it is current)."""
    version = ckpt.get("schema", 1)
    if version == SCHEMA:
        return ckpt
    if version == 2:
        return _padded_calibration({**ckpt, "schema": SCHEMA})
    if version != 1:
        raise CheckpointError(f"{path}: checkpoint schema {version!r}; this maskiou reads "
                              f"schemas 1 to {SCHEMA} (a newer maskiou wrote it?)")
    out = dict(ckpt)
    out["schema"] = SCHEMA
    if "framework" in out:  # another framework's file: already in this form
        out.setdefault("maskiou_head", None)
        return _padded_calibration(_with_calibration(out))
    if "config" not in out or "class_names" not in out:
        raise CheckpointError(f"{path}: not a maskiou checkpoint (no config or class names): a "
                              "bare state dict cannot be rebuilt")
    from .config import TrainConfig
    from .paths import training_source

    try:
        cfg = TrainConfig.from_dict(out["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its config does not match this maskiou version "
                              f"({e})") from e
    out["framework"] = SCHEMA1_FRAMEWORK
    out["detector"] = detector_entry(cfg, len(out["class_names"]), training_source(cfg))
    out["maskiou_head"] = dataclasses.asdict(cfg.maskiou_head) if cfg.maskiou else None
    return _padded_calibration(_with_calibration(out))


def _with_calibration(ckpt: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 checkpoint's head as schema 2 has it: its ``target`` (an add-on's, from its
    config; the paper's IoU for an end-to-end head) and its calibration buffers in the state
    dict, holding the add-on's recalibration weights (unfitted where there were none)."""
    if ckpt.get("maskiou_head") is None:
        return ckpt
    addon = ckpt.get("addon") or {}
    # an add-on's config without the field ran AddonConfig's default, "coco"
    target = addon["config"].get("target", "coco") if addon.get("config") else "iou"
    ckpt["maskiou_head"] = {**ckpt["maskiou_head"], "target": target}
    state = dict(ckpt["model"])
    prefixes = {k[:k.index("maskiou_head.") + len("maskiou_head.")] for k in state
                if "maskiou_head." in k}
    recal = addon.get("recalibration") or {}
    for prefix in prefixes:
        if f"{prefix}calibration.weights" in state:
            continue
        fitted = "weights" in recal
        state[f"{prefix}calibration.weights"] = torch.tensor(
            recal["weights"] if fitted else [0.0] * 4, dtype=torch.float32)
        state[f"{prefix}calibration.bias"] = torch.tensor(float(recal.get("bias", 0.0)))
        state[f"{prefix}calibration.fitted"] = torch.tensor(fitted)
    ckpt["model"] = state
    return ckpt


def _padded_calibration(ckpt: dict[str, Any]) -> dict[str, Any]:
    """A schema-2 head's calibration as schema 3 has it: a weight for each signal of
    :data:`maskiou.calibration.SIGNALS`; the signals schema 2 did not have get weight 0, so the
    model's final score stays what it was."""
    from maskiou.calibration import SIGNALS

    state = dict(ckpt.get("model") or {})
    for key, value in state.items():
        if key.endswith("calibration.weights") and value.numel() < len(SIGNALS):
            state[key] = torch.cat([value, value.new_zeros(len(SIGNALS) - value.numel())])
    ckpt["model"] = state
    return ckpt


def detector_entry(cfg: Any, num_classes: int, source: dict[str, Any]) -> dict[str, Any]:
    """The ``"detector"`` entry of a model built by maskiou's own recipe (a
    ``TrainConfig``): what its adapter's ``load_detector`` reads back."""
    plain = {**cfg.to_dict(), "maskiou": False, "freeze_detector": False, "weights": None,
             "weights_backbone": None, "detector_checkpoint": None}
    return {"config": plain, "num_classes": int(num_classes), "source": source}


DETECTOR_KEY = "detector_weights"  # a head-only add-on: its shipped detector's name


def join_detector(ckpt: dict[str, Any], where: str | Path) -> dict[str, Any]:
    """``ckpt`` (read from ``where``) with its detector's weights: a head-only add-on gets them
    from the shipped plain detector it names once that file's sha1 is the add-on's
    ``addon.detector_sha1`` (else one :class:`CheckpointError` line saying so); any other
    checkpoint comes back as it is."""
    detector = ckpt.pop(DETECTOR_KEY, None)
    if not detector:
        return ckpt
    path = shipped_model_path(detector)
    if not path.is_file():
        raise CheckpointError(f"{where}: holds the head alone; {missing_shipped(detector)}")
    recorded, found = ckpt["addon"]["detector_sha1"], file_sha1(path)
    if found != recorded:
        raise CheckpointError(f"{where}: its head was trained on another detector than the "
                              f"shipped {path.name} (sha1 {recorded} recorded, {found} found)")
    ckpt["model"] = {**load_checkpoint(path)["model"], **ckpt["model"]}
    return ckpt


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """:func:`load_checkpoint` in the current schema (:func:`migrate`), with the entries every
    model loader needs checked; a shipped add-on in its head-only form gets its detector's
    weights back first (:func:`join_detector`)."""
    ckpt = migrate(join_detector(load_checkpoint(path), path), path)
    missing = [k for k in ("framework", "detector", "class_names") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: a {ckpt.get('framework', 'maskiou')} checkpoint without "
                              f"{', '.join(missing)}")
    return ckpt


OPTIONAL_KEYS = ("calibration.class_curves", "calibration.class_fitted",
                 "calibration.class_thresholds", "calibration.keep_worth_only")


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path,
                     strict: bool = True) -> None:
    """``load_state_dict`` whose failure is one line naming what does not match."""
    own = model.state_dict()
    class_keys = ("cls_score", "mask_fcn_logits", "maskiou_head.predictor")
    # keys whose first dimension is the class count first: the likeliest mismatch, said plainly
    for key, value in sorted(state.items(), key=lambda kv: not any(c in kv[0] for c in class_keys)):
        if key in own and own[key].shape != value.shape:
            hint = ""
            if any(c in key for c in class_keys):
                hint = (f" (the checkpoint has {value.shape[0]} classes, this model "
                        f"{own[key].shape[0]})")
            raise CheckpointError(f"{path}: {key} has shape {tuple(value.shape)} in the "
                                  f"checkpoint but {tuple(own[key].shape)} in the model{hint}")
    # a final score's map per class (maskiou.calibration) is absent from checkpoints written
    # before it: the model then has none (its buffers' defaults), as the checkpoint's model had
    missing = [k for k in own if k not in state and not k.endswith(OPTIONAL_KEYS)]
    unexpected = [k for k in state if k not in own]
    if strict and (missing or unexpected):
        what = []
        if missing:
            what.append(f"{len(missing)} missing (first: {missing[0]})")
        if unexpected:
            what.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
        raise CheckpointError(f"{path}: architecture mismatch: {', '.join(what)} parameters")
    model.load_state_dict(state, strict=False)


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Every global RNG state this process draws from (CUDA: only ``device``'s generator, so a
    rank never opens a context on another rank's GPU), as tensors and plain values."""
    state = {"torch": torch.get_rng_state(), "numpy": _numpy_state(np.random.get_state()),
             "python": random.getstate()}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _numpy_state(state: Any) -> dict[str, Any]:
    """NumPy's legacy random state (a tuple holding an array) as a dict of plain values."""
    if isinstance(state, dict):
        return state
    name, keys, pos, has_gauss, gauss = state
    return {"algorithm": str(name), "keys": torch.from_numpy(np.asarray(keys, np.int64)),
            "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)}


def plain_rng_state(state: dict[str, Any]) -> dict[str, Any]:
    """A resume state written before schema 2 (NumPy's state as a tuple) as :func:`rng_state`
    writes it now."""
    return {**state, "numpy": _numpy_state(state["numpy"])}


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    torch.set_rng_state(state["torch"])
    n = _numpy_state(state["numpy"])
    np.random.set_state((n["algorithm"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    random.setstate(state["python"])
    if "cuda" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
