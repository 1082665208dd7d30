"""ultralytics with no network attempt: one function to call before anything else of it.

ultralytics (AGPL-3.0; an optional extra of this MIT project, imported only where it is
installed) checks for the network when it is imported (a DNS lookup), may pip-install missing
requirements, sends usage events, and its dataset check downloads ``Arial.ttf`` for its plots
even with ``plots=False``. :func:`offline_environment` turns each of these off:

* ``YOLO_OFFLINE=1`` (no DNS check: its ``ONLINE`` is False) and ``YOLO_AUTOINSTALL=False`` in
  the environment, so that subprocesses and a later first import see them too;
* where ultralytics is already imported, the module constants that those variables set at
  import time (``ONLINE``, ``AUTOINSTALL``) are set the same way, and its event sender disabled;
* its settings ``sync`` (events and crash reports) and the experiment-tracker callbacks
  (clearml, comet, dvc, mlflow, raytune, tensorboard, wandb) off, in memory only: the user's
  settings file is not rewritten;
* a TrueType font (matplotlib's DejaVuSans, under the names it asks for) in its config folder,
  where its font check looks before it downloads.

A Platform API key in ``ULTRALYTICS_API_KEY`` would still make its trainer upload to the
Platform; nothing here reads or clears it.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

_FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")  # plain names / non-ASCII class names
_TRACKERS = ("clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb")


def _system_font() -> Path:
    """A TrueType font that is on this machine: matplotlib's DejaVuSans (a dependency)."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: matplotlib's DejaVuSans.ttf not found; ultralytics "
                                "would download Arial.ttf without a local font")
    return path


def _copy_atomic(src: Path, dst: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def offline_environment() -> Path:
    """Set ultralytics up so that nothing it does reaches the network; idempotent.

    Returns:
        ultralytics' config folder (``USER_CONFIG_DIR``), where the font now lies.
    """
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "False"
    import ultralytics.utils as uu
    from ultralytics.utils import checks

    uu.ONLINE = checks.ONLINE = False
    uu.AUTOINSTALL = checks.AUTOINSTALL = False
    events = sys.modules.get("ultralytics.utils.events")
    if events is not None:
        events.ONLINE = False
        events.events.enabled = False
    # dict's own update: SettingsManager.update would write the user's settings file
    dict.update(uu.SETTINGS, {"sync": False, **dict.fromkeys(_TRACKERS, False)})
    config = Path(uu.USER_CONFIG_DIR)
    config.mkdir(parents=True, exist_ok=True)
    font = None
    for name in _FONT_NAMES:
        if not (config / name).is_file():
            font = font or _system_font()
            _copy_atomic(font, config / name)
    return config
