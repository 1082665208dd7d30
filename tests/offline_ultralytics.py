"""What every ultralytics test module runs first: a module-level skip, saying why, where
ultralytics is not installed; else its offline set-up, before anything imports ultralytics (no
network attempt, PIL and torch.save as they were)."""

from __future__ import annotations

import importlib.util

import pytest


def require_offline_ultralytics() -> None:
    """Skip the calling test module without ultralytics; otherwise ``offline_environment()``."""
    if importlib.util.find_spec("ultralytics") is None:
        pytest.skip("ultralytics is not installed (pip install maskiou[ultralytics])",
                    allow_module_level=True)
    from maskiou_integrations.ultralytics_offline import offline_environment

    offline_environment()
