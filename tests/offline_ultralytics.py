"""ultralytics with no network attempt, for the tests: an opt-in of the test runner, never of
the library (maskiou leaves the environment, ultralytics' settings and its module state as the
user has them; see docs/frameworks/ultralytics.md, "Offline").

ultralytics (AGPL-3.0, an optional extra) checks for the network when it is imported (a DNS
lookup), may pip-install missing requirements, sends usage events, writes its settings file into
its config folder, and its dataset check downloads ``Arial.ttf`` even with ``plots=False``. The
test session turns each of these off:

* :func:`offline_env` (at the start of the session, from ``conftest.py``; it imports nothing):
  ``YOLO_OFFLINE=1`` (its ``ONLINE`` is False: no DNS lookup), ``YOLO_AUTOINSTALL=False`` (no
  pip) and ``YOLO_CONFIG_DIR`` a temporary folder of the session (its settings file is written
  there, not under the user's HOME), in the test process's environment, so that a first import
  of ultralytics anywhere in the session, and every subprocess, sees them;
* :func:`require_offline_ultralytics` (first thing of every ultralytics test module): a
  module-level skip, saying why, without ultralytics; else ultralytics imported, its settings
  ``sync`` and tracker callbacks off in memory, a TrueType font (matplotlib's DejaVuSans, under
  the names it asks for) in that config folder, and the two process-wide patches its import
  applies put back: ``PIL.Image.open`` (on a file Pillow cannot identify, it pip-installs
  ``pi-heif``, which would hide maskiou's "not an image file" message) and ``torch.save``;
* the autouse fixture ``ultralytics_patches_undone`` puts those patches back after any test
  that imported ultralytics on its way (a checkpoint of an ultralytics model, say).
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")  # plain names / non-ASCII class names
TRACKERS = ("clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb")


def offline_env() -> None:
    """Set ``YOLO_OFFLINE``, ``YOLO_AUTOINSTALL`` and (unless the caller chose one)
    ``YOLO_CONFIG_DIR`` in this test process's environment (see the module)."""
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "False"
    if "YOLO_CONFIG_DIR" not in os.environ:
        folder = tempfile.mkdtemp(prefix="maskiou-tests-ultralytics-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        os.environ["YOLO_CONFIG_DIR"] = folder


def _font() -> Path:
    """A TrueType font on this machine: matplotlib's DejaVuSans (a dependency)."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"


def undo_patches() -> None:
    """``PIL.Image.open`` and ``torch.save`` as they were before ultralytics was imported (a
    no-op where it was not)."""
    patches = sys.modules.get("ultralytics.utils.patches")
    if patches is None:
        return
    import torch
    from PIL import Image

    if Image.open is patches.image_open:
        Image.open = patches._image_open
    if torch.save is patches.torch_save:
        torch.save = patches._torch_save


def offline_ultralytics() -> Path:
    """:func:`offline_env`, then ultralytics imported with no network attempt, its sync and
    trackers off, a font in its config folder, its patches undone. Returns that folder."""
    offline_env()
    import ultralytics.utils as uu

    undo_patches()
    # dict's own update: SettingsManager.update would rewrite the settings file
    dict.update(uu.SETTINGS, {"sync": False, **dict.fromkeys(TRACKERS, False)})
    config = Path(uu.USER_CONFIG_DIR)
    config.mkdir(parents=True, exist_ok=True)
    for name in FONT_NAMES:
        if not (config / name).is_file():
            shutil.copyfile(_font(), config / name)
    return config


def require_offline_ultralytics() -> None:
    """Skip the calling test module without ultralytics; otherwise :func:`offline_ultralytics`."""
    if importlib.util.find_spec("ultralytics") is None:
        pytest.skip("ultralytics is not installed (pip install maskiou[ultralytics])",
                    allow_module_level=True)
    offline_ultralytics()


@pytest.fixture(autouse=True)
def ultralytics_patches_undone() -> Iterator[None]:
    """After each test: ultralytics' process-wide patches undone, if it was imported."""
    yield
    undo_patches()
