"""Data: the embedded synthetic COCO-format dataset, a COCO reader and detection transforms.

Names are imported lazily, so ``python -m maskiou.data.synthetic`` and ``import maskiou.data``
stay light.
"""

from __future__ import annotations

from maskiou._lazy import lazy_exports

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


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
