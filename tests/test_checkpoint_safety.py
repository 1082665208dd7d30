"""Checkpoints are data: every loader reads them with ``weights_only=True``, a file that would
unpickle code is refused with one line (and its code never runs), the shipped checkpoints are
plain data, and a file of the older form converts with ``maskiou-convert`` to the same model."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from maskiou.models.checkpoint import SCHEMA, CheckpointError, load_checkpoint, read_checkpoint
from maskiou.models.paths import PRETRAINED, SHIPPED_DIRS

ROOT = Path(__file__).resolve().parents[1]


def touch(path: str) -> None:
    """What the payload runs when unpickled."""
    pathlib.Path(path).touch()


class Payload:
    """Pickled, it would create ``marker`` when loaded: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (touch, (str(self.marker),))


@pytest.fixture
def evil(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    plain = load_checkpoint(PRETRAINED / "synthetic_cpu_torchvision_plain.pt")
    torch.save({**plain, "payload": Payload(marker)}, path)
    assert not marker.exists()
    return path, marker


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _one_refusal(done: subprocess.CompletedProcess, path: Path) -> None:
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [x for x in done.stderr.splitlines() if "error:" in x]
    assert len(lines) == 1 and f"{path}: refused: it holds pickled objects" in lines[0], \
        done.stderr[-2000:]


def test_every_loader_refuses_a_pickle_payload_and_never_runs_it(evil, tmp_path):
    path, marker = evil
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert str(e.value).startswith(f"{path}: refused: it holds pickled objects (test_checkpoint"
                                   "_safety.touch)")  # what it would have run
    assert "maskiou-convert" in str(e.value)
    from maskiou.data.synthetic import generate_synthetic_coco

    data = generate_synthetic_coco(tmp_path / "data", 4, 2, seed=5, image_size=64,
                                   progress=False)
    _one_refusal(_run([str(ROOT / "benchmarks" / "coco_eval.py"), "--checkpoint", str(path),
                       "--train-json", str(data.train_json), "--train-images",
                       str(data.train_images), "--val-json", str(data.val_json),
                       "--val-images", str(data.val_images), "--no-progress",
                       "--output-dir", str(tmp_path / "out")], tmp_path), path)
    _one_refusal(_run(["-m", "maskiou.addon", "--detector", str(path), "--train-json",
                       str(data.train_json), "--train-images", str(data.train_images),
                       "--output-dir", str(tmp_path / "addon"), "--no-progress"], tmp_path),
                 path)
    _one_refusal(_run(["-m", "maskiou.training.export", str(path), str(tmp_path / "x.pt")],
                      tmp_path), path)
    done = _run(["-m", "maskiou.models.convert", str(path), str(tmp_path / "y.pt")], tmp_path)
    assert done.returncode == 2 and "refused: it would unpickle test_checkpoint_safety.touch" \
        in done.stderr
    assert not marker.exists()


def test_the_demo_refuses_a_pickle_payload_and_never_runs_it(evil):
    """The demo: a checkpoint the operator offered, chosen on the page."""
    path, marker = evil
    pytest.importorskip("gradio", reason="the demo needs the demo extra: pip install -e "
                        "'.[demo]'")
    from demo.handlers import NO_HEAD, DemoApp

    app = DemoApp([str(path)], [], split=None)
    with pytest.raises(CheckpointError, match="refused: it holds pickled objects"):
        app.model(str(path), NO_HEAD)
    assert not marker.exists()


def test_no_loader_unpickles():
    """``torch.load`` is called in one place, with ``weights_only=True``; the converter's
    allow-list is the only other reader."""
    needle = "weights_only=" + "False"
    found = [str(p.relative_to(ROOT)) for folder in ("maskiou", "integrations", "demo",
                                                     "benchmarks", "research", "examples", "tests")
             for p in (ROOT / folder).rglob("*.py") if needle in p.read_text()]
    assert found == []


@pytest.mark.parametrize("path", sorted(p for d in SHIPPED_DIRS for p in d.glob("*.pt")),
                         ids=lambda p: p.name)
def test_the_shipped_checkpoints_are_plain_data_of_the_current_schema(path):
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    # schema 2 (the plain detectors, no calibration) reads as it is
    assert ckpt["schema"] in (2, SCHEMA) and ckpt["framework"] in ("torchvision", "detectron2",
                                                         "ultralytics")
    assert "detector" in ckpt and "class_names" in ckpt and "maskiou_head" in ckpt


def _old_form(ckpt: dict) -> dict:
    """What maskiou wrote before schema 2 for an add-on of its own trainer's detector: no
    schema, framework or head entries, no calibration in the state dict, and the recalibration
    a pickled scikit-learn model."""
    from sklearn.linear_model import LogisticRegression

    recal = ckpt["addon"]["recalibration"]
    model = LogisticRegression()
    model.coef_ = np.array([recal["weights"]])
    model.intercept_ = np.array([recal["bias"]])
    model.classes_ = np.array([0.0, 1.0])
    old = {k: v for k, v in ckpt.items() if k not in ("schema", "framework", "detector",
                                                      "maskiou_head")}
    old["model"] = {k: v for k, v in ckpt["model"].items() if ".calibration." not in k}
    old["addon"] = {**ckpt["addon"], "recalibration": {"kind": "logistic", "model": model,
                                                       "fitted_on": recal["fitted_on"]}}
    return old


def test_an_old_add_on_checkpoint_is_refused_then_converts_to_the_same_model(tmp_path):
    from maskiou.configs import HeadConfig
    from maskiou.evaluation.benchmark import shipped_checkpoint
    from maskiou.models.checkpoint import save_atomic
    from maskiou.models.convert import main as convert
    from maskiou.models.load import load_trained_model

    new = shipped_checkpoint("torchvision_addon")
    # before schema 2 there was no map per class and no thresholds: the shipped add-on without
    # them is what such a file converts to
    new["model"] = {k: v for k, v in new["model"].items()
                    if not k.rsplit(".", 1)[-1].startswith(("class_", "keep_"))}
    save_atomic(new, tmp_path / "new.pt")
    torch.save(_old_form(new), tmp_path / "old.pt")  # pickles the scikit-learn model
    with pytest.raises(CheckpointError, match="sklearn.linear_model._logistic.LogisticRegression"):
        read_checkpoint(tmp_path / "old.pt")
    assert convert([str(tmp_path / "old.pt"), str(tmp_path / "converted.pt")]) == 0
    converted = read_checkpoint(tmp_path / "converted.pt")
    assert converted["schema"] == SCHEMA and converted["framework"] == "torchvision"
    # the same head (a record written before an option existed reads with its default)
    assert HeadConfig(**converted["maskiou_head"]) == HeadConfig(**new["maskiou_head"])
    assert converted["addon"]["recalibration"]["weights"] == new["addon"]["recalibration"][
        "weights"]
    a, _ = load_trained_model(tmp_path / "new.pt")
    b, _ = load_trained_model(tmp_path / "converted.pt")
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 128, 128, generator=g) for _ in range(2)]
    with torch.no_grad():
        out_a, out_b = a(images), b(images)
    for x, y in zip(out_a, out_b):
        assert len(x["scores"]) > 0
        for k, v in x.items():
            assert torch.equal(v, y[k]), k  # the same model, the same computation


def test_a_schema_2_calibration_reads_with_the_new_signal_weighing_zero():
    from maskiou.calibration import SIGNALS
    from maskiou.models.checkpoint import migrate

    old = {"schema": 2, "framework": "torchvision",
           "model": {"roi_heads.maskiou_head.calibration.weights": torch.tensor([1.0, 2, 3, 4]),
                     "roi_heads.maskiou_head.calibration.bias": torch.tensor(0.5)}}
    new = migrate(old)
    assert new["schema"] == SCHEMA == 3 and len(SIGNALS) == 5
    assert new["model"]["roi_heads.maskiou_head.calibration.weights"].tolist() == [1, 2, 3, 4, 0]
    assert old["model"]["roi_heads.maskiou_head.calibration.weights"].numel() == 4  # a copy
