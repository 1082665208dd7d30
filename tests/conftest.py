"""Shared fixtures: tiny torchvision Mask R-CNNs built without any download."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "examples"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

# The tests' opt-in to ultralytics with no network attempt (the library never does this):
# YOLO_OFFLINE, YOLO_AUTOINSTALL and a temporary YOLO_CONFIG_DIR for the session; see the module.
from offline_ultralytics import offline_env, ultralytics_patches_undone  # noqa: E402,F401

offline_env()

if "MUTANT_UNDER_TEST" in os.environ:
    # Under mutmut the mutated copy of integrations/ (in mutants/) must be the adapter that the
    # entry point loads, not the installed maskiou_integrations that points at the original.
    import importlib

    _adapters = importlib.import_module("integrations")
    sys.modules["maskiou_integrations"] = _adapters
    sys.modules["maskiou_integrations.torchvision_maskrcnn"] = importlib.import_module(
        "integrations.torchvision_maskrcnn")


def tiny_maskrcnn(num_classes: int = 4, backbone: str = "resnet18", size: int = 64, **kw):
    """A randomly initialized Mask R-CNN on small images (no weights are downloaded)."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    torch.manual_seed(0)
    bb = resnet_fpn_backbone(backbone_name=backbone, weights=None, trainable_layers=5)
    defaults = dict(min_size=size, max_size=size, rpn_batch_size_per_image=32,
                    box_batch_size_per_image=32, rpn_pre_nms_top_n_train=200,
                    rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=100,
                    rpn_post_nms_top_n_test=50)
    defaults.update(kw)
    return MaskRCNN(bb, num_classes=num_classes, **defaults)


def square_target(size: int = 64, box=(8, 8, 40, 40), label: int = 1) -> dict:
    x1, y1, x2, y2 = box
    masks = torch.zeros(1, size, size, dtype=torch.uint8)
    masks[0, y1:y2, x1:x2] = 1
    return {"boxes": torch.tensor([box], dtype=torch.float32),
            "labels": torch.tensor([label]), "masks": masks}


def empty_target(size: int = 64) -> dict:
    return {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
            "masks": torch.zeros(0, size, size, dtype=torch.uint8)}


@pytest.fixture
def model():
    return tiny_maskrcnn()


@pytest.fixture
def fake_entry_points(monkeypatch):
    """``use(*entry_points)``: for one test, the adapter entry-point group lists exactly these
    (``importlib.metadata.EntryPoint``), and nothing discovery kept before is reused; returns
    the list of the groups asked for, one item per listing of the group."""
    import maskiou.attach as attach

    def use(*eps):
        listings: list[str] = []

        def listed(group):
            listings.append(group)
            return list(eps)

        monkeypatch.setattr(attach, "entry_points", listed)
        monkeypatch.setattr(attach, "_listed", None)
        monkeypatch.setattr(attach, "_loaded", {})
        return listings

    return use
