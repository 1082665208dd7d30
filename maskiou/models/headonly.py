"""The head-only form of a shipped add-on: its head and calibration, its detector named by hash.

A trained add-on checkpoint embeds its frozen detector. Shipped beside that detector it would
carry the detector twice, so a shipped add-on keeps only the tensors the detector does not
have (the MaskIoU head and its calibration) and names the shipped plain detector it was trained
on (``"detector_weights"``); the add-on's own record of that detector's file sha1
(``addon.detector_sha1``) is what the join checks. ``maskiou-export --head-only IN OUT`` writes
the form (:func:`head_only`), :func:`join_detector` reads it back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from maskiou.records import file_sha1

from .checkpoint import DETECTOR_KEY, CheckpointError, load_checkpoint, read_checkpoint
from .paths import SHIPPED_DIRS, shipped_model_path


def shipped_detector_by_sha1(sha1: str) -> str | None:
    """The name (``"<framework>_plain"``) of the shipped plain detector whose file has ``sha1``,
    or None when no shipped plain detector here has it."""
    for folder in SHIPPED_DIRS:
        for path in sorted(folder.glob("synthetic_cpu_*_plain.pt")):
            if file_sha1(path) == sha1:
                return path.name[len("synthetic_cpu_"):-len(".pt")]
    return None


def head_only(ckpt: dict[str, Any], detector_name: str,
              detector_model: dict[str, torch.Tensor], where: str | Path) -> dict[str, Any]:
    """``ckpt`` (a full add-on checkpoint read from ``where``) in the head-only form: its
    ``model`` holds only the keys ``detector_model`` (the shipped plain detector's state dict)
    lacks, unchanged in value and dtype, and ``"detector_weights"`` names ``detector_name``.

    Every detector key of ``ckpt`` must equal the shipped detector's tensor in the shipped
    dtype (a trained add-on holds the float16 shipped weights cast to float32: exact), else a
    :class:`CheckpointError` names the first key that differs: the head would be joined to
    weights it was not trained on."""
    model = ckpt["model"]
    missing = [k for k in detector_model if k not in model]
    if missing:
        raise CheckpointError(f"{where}: not a full add-on of the shipped {detector_name} "
                              f"(no {missing[0]}; already head-only?)")
    for key, value in detector_model.items():
        if not torch.equal(model[key].to(value.dtype), value):
            raise CheckpointError(f"{where}: its detector's {key} differs from the shipped "
                                  f"{detector_name}'s")
    head = {k: v for k, v in model.items() if k not in detector_model}
    return {**ckpt, "model": head, DETECTOR_KEY: detector_name}


def head_only_checkpoint(src: str | Path, keep: tuple[str, ...]) -> dict[str, Any]:
    """The head-only form of the full add-on checkpoint ``src`` (its entries in ``keep`` and
    the model), its detector found among the shipped plain detectors by the sha1 it recorded.
    Raises :class:`CheckpointError` in one line when ``src`` is no add-on or its detector is
    not shipped here."""
    ckpt = read_checkpoint(src)
    sha1 = (ckpt.get("addon") or {}).get("detector_sha1")
    if not sha1:
        raise CheckpointError(f"{src}: not an add-on checkpoint (no addon.detector_sha1): "
                              "--head-only writes a trained add-on without its detector")
    name = shipped_detector_by_sha1(sha1)
    if name is None:
        raise CheckpointError(f"{src}: its detector (sha1 {sha1}) is none of the shipped plain "
                              f"detectors in {', '.join(str(d) for d in SHIPPED_DIRS)}; a "
                              "head-only add-on names a shipped detector")
    kept = {k: ckpt[k] for k in keep if k in ckpt}
    return head_only({"model": ckpt["model"], **kept}, name,
                     load_checkpoint(shipped_model_path(name))["model"], src)
