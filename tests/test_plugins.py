"""Adapters are plugins: found through the ``maskiou.adapters`` entry-point group, the built-in
torchvision one included, and the package installs no generic top-level ``integrations``."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

PLUGIN_PYPROJECT = """
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "tiny-maskiou-plugin"
version = "0.0.1"

[project.entry-points."maskiou.adapters"]
tiny = "tiny_plugin:TinyAdapter"

[tool.setuptools]
py-modules = ["tiny_plugin"]
"""

PLUGIN_MODULE = '''
"""A third-party segmenter that ships its own maskiou adapter through an entry point."""
from torch import nn


class TinyNet(nn.Module):
    pass


class TinyAdapter:
    name = "tiny plugin adapter"
    framework = "tiny"
    capabilities = frozenset()  # attaching only

    def matches(self, model):
        return isinstance(model, TinyNet)

    def head_defaults(self, model):
        return {"in_channels": 8, "num_classes": 3, "roi_size": 14}

    def install(self, model, head, config):
        model.installed_by = self.name
        model.maskiou_head = head
'''

CHECK_PLUGIN = """
import maskiou, tiny_plugin
from maskiou import attach_maskiou_head, available_adapters
model = attach_maskiou_head(tiny_plugin.TinyNet())
print("installed by:", model.installed_by)
print("head input:", model.maskiou_head.convs[0].in_channels)
print("adapters:", sorted(a.name for a in available_adapters()))
"""

CHECK_TORCHVISION = """
import maskiou, maskiou_integrations
from torchvision.models.detection import maskrcnn_resnet50_fpn
from maskiou import attach_maskiou_head, find_maskiou_head
m = attach_maskiou_head(maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3))
print("maskiou from:", maskiou.__file__)
print("adapter from:", maskiou_integrations.__file__)
print("head classes:", find_maskiou_head(m).num_classes)
"""


def _pip(*args: str, cwd: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
                   check=True, cwd=cwd, capture_output=True, text=True)


def _run(code: str, pythonpath: Path, cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_adapter_of_an_installed_package_is_found_through_its_entry_point(tmp_path):
    src = tmp_path / "plugin"
    src.mkdir()
    (src / "pyproject.toml").write_text(PLUGIN_PYPROJECT)
    (src / "tiny_plugin.py").write_text(textwrap.dedent(PLUGIN_MODULE))
    site = tmp_path / "site"
    _pip("install", "--no-deps", "--no-build-isolation", "--target", str(site), str(src),
         cwd=tmp_path)
    out = _run(CHECK_PLUGIN, site, tmp_path)
    assert "installed by: tiny plugin adapter" in out
    assert "head input: 9" in out  # 8 RoI-feature channels + the mask
    assert "torchvision MaskRCNN" in out  # the built-in adapter is still there


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # from a copy of the sources: a stale build/ folder in a checkout would leak into the wheel
    src = out / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "results", "runs", "__pycache__", ".*cache",
        "mutants", ".whl", ".gl", ".devscripts"))
    _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(src), cwd=out)
    return next(out.glob("maskiou-*.whl"))


def test_wheel_installs_maskiou_integrations_not_a_top_level_integrations(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("maskiou-")}
    assert tops == {"maskiou", "maskiou_integrations"}
    assert "maskiou_integrations/torchvision_maskrcnn.py" in names
    assert "maskiou/pretrained/synthetic_cpu_torchvision_end_to_end.pt" in names
    assert not [n for n in names if n.startswith("weights/")]
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[maskiou.adapters]" in text
    assert "maskiou_integrations.torchvision_maskrcnn:TorchvisionMaskRCNNAdapter" in text


WHEEL_LIMIT = 30_000_000  # bytes (issue 38: a wheel a user would download)


def test_the_wheel_is_lean_and_holds_no_ultralytics_trained_file(wheel):
    """The wheel carries the shipped models the main job and the demo need (torchvision's: the
    plain detector, the add-on's head alone, the end-to-end model); detectron2's and the
    ultralytics-trained (AGPL-3.0) ones stay in the repository's weights/ folder."""
    assert wheel.stat().st_size <= WHEEL_LIMIT
    z = zipfile.ZipFile(wheel)
    models = sorted(n for n in z.namelist() if n.endswith((".pt", ".pth", ".onnx", ".ts")))
    assert models == [f"maskiou/pretrained/synthetic_cpu_torchvision_{kind}.pt"
                      for kind in ("addon", "end_to_end", "plain")]
    for name in models:
        ckpt = torch.load(io.BytesIO(z.read(name)), weights_only=True)
        assert ckpt["framework"] == "torchvision", name
    assert not data_files_naming("ultralytics", z) and not data_files_naming("yolo", z)


def data_files_naming(word: str, z: zipfile.ZipFile) -> list[str]:
    """The files of the wheel, code aside, whose path names ``word`` (logs, configs)."""
    return [n for n in z.namelist() if word in n.lower() and not n.endswith(".py")]


CHECK_SHIPPED = """
from maskiou.evaluation.benchmark import embedded_detector, shipped_checkpoint
from maskiou.models.paths import shipped_frameworks
print("frameworks:", shipped_frameworks())
print("addon tensors:", len(shipped_checkpoint("torchvision_addon")["model"]))
try:
    embedded_detector("ultralytics", progress=False)
except ValueError as e:
    print("ultralytics:", e)
"""


def test_a_wheel_install_has_the_main_jobs_models_and_names_where_the_others_are(wheel,
                                                                                 tmp_path):
    site = tmp_path / "site"
    _pip("install", "--no-deps", "--target", str(site), str(wheel), cwd=tmp_path)
    out = _run(CHECK_SHIPPED, site, tmp_path)  # outside the checkout: no weights/ folder
    assert "frameworks: ['torchvision']" in out
    assert "addon tensors: 173" in out  # the plain detector's 156 joined to the head's 17
    assert "ultralytics: the shipped ultralytics_plain model is not in the installed package " \
        "(it holds torchvision's): the repository's weights/ folder holds the others" in out


def test_non_editable_install_finds_the_torchvision_adapter(wheel, tmp_path):
    site = tmp_path / "site"
    _pip("install", "--no-deps", "--target", str(site), str(wheel), cwd=tmp_path)
    out = _run(CHECK_TORCHVISION, site, tmp_path)  # run outside the checkout
    assert f"maskiou from: {site}" in out and f"adapter from: {site}" in out
    assert "head classes: 3" in out
    assert not (site / "integrations").exists()


def test_an_entry_point_that_fails_to_import_is_named_in_the_error(fake_entry_points):
    """A broken install (an editable one whose folder moved) must not read as "no adapters"."""
    from importlib.metadata import EntryPoint

    import maskiou.attach as attach

    fake_entry_points(EntryPoint("gone", "no_such_module_xyz.adapter:Adapter",
                                 attach.ENTRY_POINT_GROUP))
    failed: list[str] = []
    with pytest.warns(RuntimeWarning) as caught:  # the plugin's own module is missing
        assert attach.entry_point_adapters(failed) == []
    assert len(caught) == 1
    assert "entry point gone = no_such_module_xyz.adapter:Adapter (ModuleNotFoundError" \
        in str(caught[0].message)
    assert failed == ["gone = no_such_module_xyz.adapter:Adapter (ModuleNotFoundError: "
                      "No module named 'no_such_module_xyz')"]
    with pytest.raises(TypeError) as e:
        attach.find_adapter(torch.nn.Linear(1, 1))
    assert "Adapters available: none. Entry points that failed to import: gone = " \
        "no_such_module_xyz.adapter:Adapter (ModuleNotFoundError" in str(e.value)
