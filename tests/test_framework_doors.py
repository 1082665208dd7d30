"""Every framework through the same doors (issue 36, item 4): torchvision's trainer is reached
through its adapter's ``train`` like detectron2's and ultralytics', and ``maskiou-export``
exports a model whose adapter declares ``export`` or refuses another framework's checkpoint in
one line, exit 2, nothing written."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import tiny_maskrcnn

from maskiou.attach import framework_adapter
from maskiou.evaluation import benchmark
from maskiou.models.checkpoint import load_checkpoint, save_atomic
from maskiou.models.config import TrainConfig
from maskiou.models.load import load_trained_model, trainer_framework
from maskiou.models.paths import model_dir, shipped_model_path
from maskiou.training.export import main as export
from maskiou_integrations import torchvision_maskrcnn as tv

ROOT = Path(__file__).resolve().parents[1]


# --- train ---------------------------------------------------------------------------------

def test_torchvision_declares_load_train_and_export():
    adapter = framework_adapter("torchvision", "train", "a test")
    assert {"load", "train", "export"} <= adapter.capabilities
    assert trainer_framework() == "torchvision"  # what maskiou-train's models are


def test_torchvision_train_runs_maskiou_train_with_the_shipped_detectors_recipe(
        monkeypatch, tmp_path):
    """``train_embedded`` runs ``maskiou-train`` in a child process with arguments that
    resolve to the shipped plain detector's config (the device aside), without torchrun's
    variables (the child would wait for ranks that never come)."""
    from maskiou.training.cli import parse_args

    calls = []

    def run(command, env, check):
        calls.append((command, env))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(tv.subprocess, "run", run)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    path = tv.TorchvisionMaskRCNNAdapter().train_embedded(str(tmp_path), device="cpu")
    assert path == str(tmp_path / "model_final.pt")
    (command, env), = calls
    assert command[:3] == [sys.executable, "-m", "maskiou.training"]
    assert "RANK" not in env and "WORLD_SIZE" not in env and env["PATH"]
    args, cfg = parse_args(command[3:])
    assert args.output_dir == str(tmp_path)
    shipped = TrainConfig.from_dict(load_checkpoint(shipped_model_path("torchvision_plain"))
                                    ["config"]).to_dict()
    assert cfg.to_dict() == {**shipped, "device": "cpu"}


def test_torchvision_train_failure_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(tv.subprocess, "run",
                        lambda command, env, check: subprocess.CompletedProcess(command, 3))
    with pytest.raises(RuntimeError, match=r"^maskiou-train exited with 3 training the "
                       r"embedded torchvision detector into .*\(its output is above\)$"):
        tv.TorchvisionMaskRCNNAdapter().train_embedded(str(tmp_path))


def test_retrain_of_the_torchvision_detector_goes_through_its_adapter(monkeypatch, tmp_path):
    """``coco_eval.py --retrain``'s path: the benchmark asks the adapter (capability
    ``train``), as for every framework; maskiou's Trainer is not called in process."""
    monkeypatch.setenv("MASKIOU_CACHE", str(tmp_path))
    calls = []

    def train_embedded(self, output_dir, device="cpu"):
        calls.append((output_dir, device))
        out = Path(output_dir) / "trained.pt"
        save_atomic(load_checkpoint(shipped_model_path("torchvision_plain")), out)
        return str(out)

    def no_trainer(*args, **kwargs):
        raise AssertionError("the benchmark trained in process instead of through the adapter")

    monkeypatch.setattr(tv.TorchvisionMaskRCNNAdapter, "train_embedded", train_embedded)
    monkeypatch.setattr("maskiou.training.trainer.Trainer", no_trainer)
    final = benchmark.embedded_detector("torchvision", progress=False, retrain=True)
    assert final == model_dir("torchvision_plain") / "model_final.pt"
    assert calls == [(str(final.parent), "cpu")]
    assert load_checkpoint(final)["model"].keys() == \
        load_checkpoint(shipped_model_path("torchvision_plain"))["model"].keys()


# --- export --------------------------------------------------------------------------------

def test_torchvision_export_example_is_the_test_size_or_the_one_asked():
    adapter = framework_adapter("torchvision", "export", "a test")
    model = tiny_maskrcnn(size=48)
    (image,) = adapter.export_example(model)
    assert image.shape == (3, 48, 48) and 0 <= image.min() and image.max() <= 1
    (image,) = adapter.export_example(model, (40, 72))
    assert image.shape == (3, 40, 72)


def quietly_found(framework: str) -> None:
    """Import the adapters first, outside what a test reads: detectron2's import warns that
    ``torch.jit.script`` is deprecated (its FutureWarning, not maskiou's line)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        framework_adapter(framework)


def refused(capsys, src: Path, tmp_path: Path, framework: str) -> None:
    """``maskiou-export SRC DST --torchscript --onnx`` exits 2 with one line naming the
    framework and why, and writes none of the three files."""
    outs = [tmp_path / "slim.pt", tmp_path / "m.ts", tmp_path / "m.onnx"]
    quietly_found(framework)
    capsys.readouterr()
    code = export([str(src), str(outs[0]), "--torchscript", str(outs[1]), "--onnx",
                   str(outs[2])])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == 2 and len(err) == 1, captured.err
    assert err[0].startswith(f"maskiou-export: error: {src}: a {framework} model is not "
                             "written as TorchScript or ONNX here")
    assert "does not declare the capability 'export'" in err[0]
    assert "Traceback" not in captured.err and captured.out == ""
    assert not any(p.exists() for p in outs)


def slimmed(src: Path, tmp_path: Path) -> None:
    """``maskiou-export SRC DST`` (the slim copy) works for any framework: the copy loads
    into the same model, float16 weights equal to the source's rounded to float16."""
    dst = tmp_path / "slim.pt"
    assert export([str(src), str(dst)]) == 0
    model, meta = load_trained_model(src)
    again, meta_again = load_trained_model(dst)
    assert meta_again["framework"] == meta["framework"]
    want, got = model.state_dict(), again.state_dict()
    assert want.keys() == got.keys()
    for k, v in want.items():
        expect = v.half().to(v.dtype) if v.is_floating_point() else v
        assert torch.equal(got[k], expect), k


def test_export_refuses_a_detectron2_checkpoint_in_one_line(capsys, tmp_path):
    pytest.importorskip("detectron2", reason="detectron2 is not installed")
    src = shipped_model_path("detectron2_plain")
    refused(capsys, src, tmp_path, "detectron2")
    slimmed(src, tmp_path)


def test_export_refuses_a_yolo_checkpoint_in_one_line(capsys, tmp_path):
    from offline_ultralytics import require_offline_ultralytics

    require_offline_ultralytics()
    src = shipped_model_path("ultralytics_plain")
    refused(capsys, src, tmp_path, "ultralytics")
    slimmed(src, tmp_path)


def test_export_refusal_as_a_program_is_one_line_and_exit_2(tmp_path):
    """The console script's process: exit 2, the one line, no traceback (detectron2's own
    import warns that ``torch.jit.script`` is deprecated: that FutureWarning is not ours)."""
    pytest.importorskip("detectron2", reason="detectron2 is not installed")
    src = shipped_model_path("detectron2_plain")
    done = subprocess.run([sys.executable, "-W", "ignore::FutureWarning", "-m",
                           "maskiou.training.export", str(src), "--onnx",
                           str(tmp_path / "m.onnx")], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "a detectron2 model is not written" in lines[0], done.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_coco_eval_without_a_checkpoint_refuses_a_framework_maskiou_train_does_not_build(
        tmp_path, capsys):
    """Without --checkpoint on the user's data, ``coco_eval.py`` trains with maskiou-train: the
    framework it builds comes from the adapter of a model it builds, not from a name."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import coco_eval

    quietly_found("torchvision")
    trainer_framework()  # (cached) the adapters imported first, their import warnings apart

    files = ["--train-json", str(tmp_path / "t.json"), "--train-images", str(tmp_path / "t"),
             "--val-json", str(tmp_path / "v.json"), "--val-images", str(tmp_path / "v"),
             "--output-dir", str(tmp_path / "out")]
    assert coco_eval.main(["--detector-framework", "detectron2", *files]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["coco_eval: error: maskiou's own trainer does not build detectron2 models "
                   "(it builds torchvision models): train it with detectron2 itself and pass "
                   "--checkpoint WEIGHTS --detector-config CONFIG"]
    assert not (tmp_path / "out").exists()
