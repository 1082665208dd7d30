"""Data: the embedded synthetic COCO-format dataset, a COCO reader and detection transforms.

Names are imported lazily, so ``python -m maskiou.data.synthetic`` and ``import maskiou.data``
stay light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CATEGORIES": "synthetic",
    "SyntheticPaths": "synthetic",
    "generate_synthetic_coco": "synthetic",
    "CocoFormatError": "coco",
    "CocoInstanceDataset": "coco",
    "coco_root_paths": "coco",
    "collate_fn": "coco",
    "Compose": "transforms",
    "RandomHorizontalFlip": "transforms",
    "default_transforms": "transforms",
    "hflip": "transforms",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
