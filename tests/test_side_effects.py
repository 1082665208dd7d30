"""Importing maskiou, attaching the head and predicting touch nothing outside what the user asked
for: no environment variable, no module of another framework (ultralytics is installed here, and
attaching to a torchvision or detectron2 model must not import it), no warnings filter, thread
count or logging set-up, and no file, neither under HOME nor in the working folder.

Each case runs in a fresh interpreter with HOME an empty folder and an empty working folder. The
user's own framework (torch, torchvision, detectron2) is imported and the model built before the
snapshot: importing torchvision sets ``TORCHINDUCTOR_CACHE_DIR`` (torch._dynamo does, on import),
which is the framework's doing, not maskiou's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

BUILD = {
    "torchvision": """
from torchvision.models.detection import maskrcnn_resnet50_fpn
model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3,
                              min_size=64, max_size=64)
""",
    "detectron2": """
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.modeling import build_model
cfg = get_cfg()
cfg.merge_from_file(model_zoo.get_config_file(
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
cfg.MODEL.DEVICE, cfg.MODEL.WEIGHTS, cfg.MODEL.ROI_HEADS.NUM_CLASSES = "cpu", "", 3
cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 64, 64
model = build_model(cfg)
""",
}

SCRIPT = """
import json, logging, os, sys, warnings
import torch
torch.manual_seed(0)
{build}
env = dict(os.environ)
filters = list(warnings.filters)
threads = torch.get_num_threads()
root_logger = (logging.root.level, list(logging.root.handlers))

import maskiou
from maskiou import attach_maskiou_head, find_adapter

attach_maskiou_head(model).eval()
image = torch.rand(3, 48, 64, generator=torch.Generator().manual_seed(1))
(record,) = find_adapter(model).predict(model, [image])

keys = sorted(set(env) | set(os.environ))
print(json.dumps({{
    "changed": {{k: [env.get(k), os.environ.get(k)] for k in keys
                 if env.get(k) != os.environ.get(k)}},
    "ultralytics": sorted(m for m in sys.modules if m.split(".")[0] == "ultralytics"),
    "filters_same": list(warnings.filters) == filters,
    "threads_same": torch.get_num_threads() == threads,
    "logging_same": (logging.root.level, list(logging.root.handlers)) == root_logger,
    "fields": sorted(record),
}}))
"""


def files_under(folder: Path) -> list[str]:
    """Every file and folder below ``folder``, relative to it, sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("framework", ["torchvision", "detectron2"])
def test_attach_and_predict_leave_the_process_and_the_disk_as_they_were(framework, tmp_path):
    pytest.importorskip(framework)
    pytest.importorskip("ultralytics", reason="the case is about not importing it")
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items()
           # everything that would point a library's config or cache elsewhere than HOME
           if not k.startswith(("XDG_", "YOLO_", "MPL", "TORCH_HOME", "FVCORE_", "DETECTRON2_"))}
    env.update(HOME=str(home), PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(build=BUILD[framework])],
                          env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["changed"] == {}
    assert out["ultralytics"] == []
    assert out["filters_same"] and out["threads_same"] and out["logging_same"]
    assert {"scores", "cls_scores", "mask_quality", "maskness"} <= set(out["fields"])
    assert files_under(home) == []
    assert files_under(cwd) == []


PLOTS = """
import sys
import matplotlib
import numpy as np
matplotlib.use("svg")  # the user's backend (a notebook's, say)
from pathlib import Path
from maskiou.evaluation.report import write_plots
rng = np.random.default_rng(0)
true, pred = rng.random(50), rng.random(50)
metrics = {"correlation": {"head_pearson": 0.5}, "model_scoring": "recalibrated",
           "calibration": {"target": "iou", "ece": 0.1, "bins": [{"score": 0.2, "truth": 0.3}]}}
write_plots(Path(sys.argv[1]), metrics, pred, true, {"cls": pred, "rescored": true})
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
"""


def test_writing_the_plots_leaves_the_matplotlib_backend_alone(tmp_path):
    """The report's figures are drawn without pyplot: the caller's backend is not switched."""
    pytest.importorskip("matplotlib")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLCONFIGDIR": str(tmp_path / "mpl")}
    done = subprocess.run([sys.executable, "-c", PLOTS, str(tmp_path)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["svg", "False"]
    for name in ("maskiou_correlation.png", "reliability.png", "score_vs_maskiou.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
