"""The head-only form of a shipped add-on (``maskiou-export --head-only``): it holds the head and
its calibration alone, names the shipped plain detector by that file's sha1, and reads back to
the full add-on's state dict; a wrong detector is one clear line. Where the package holds no
shipped model of a framework (a wheel install), the code that needs one says where it lives."""

from __future__ import annotations

import pytest
import torch

from maskiou.evaluation import benchmark
from maskiou.models import headonly, paths
from maskiou.models.checkpoint import (
    CheckpointError,
    load_checkpoint,
    read_checkpoint,
    save_atomic,
)
from maskiou.models.load import load_trained_model
from maskiou.records import file_sha1
from maskiou.training.export import main as export

PLAIN = paths.shipped_model_path("torchvision_plain")


@pytest.fixture(scope="module")
def full_addon(tmp_path_factory) -> str:
    """The shipped torchvision add-on as a trained add-on is: its detector embedded."""
    path = tmp_path_factory.mktemp("addon") / "full.pt"
    save_atomic(benchmark.shipped_checkpoint("torchvision_addon"), path)
    return str(path)


def test_head_only_holds_the_head_and_names_its_detector(full_addon, tmp_path, capsys):
    out = tmp_path / "head.pt"
    assert export(["--head-only", full_addon, str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    stored = load_checkpoint(out)
    assert stored["detector_weights"] == "torchvision_plain"
    assert stored["addon"]["detector_sha1"] == file_sha1(PLAIN)
    # the shipped head: 2 convs, 3 FCs, and its calibration (weights, bias, fitted, the map
    # per class, the thresholds and the kept-mask switch)
    assert sorted(stored["model"]) == sorted(
        f"roi_heads.maskiou_head.{k}" for k in (
            "calibration.weights", "calibration.bias", "calibration.fitted",
            "calibration.class_curves", "calibration.class_fitted",
            "calibration.class_thresholds", "calibration.keep_worth_only",
            "convs.0.weight", "convs.0.bias", "convs.1.weight", "convs.1.bias", "fc1.weight",
            "fc1.bias", "fc2.weight", "fc2.bias", "predictor.weight", "predictor.bias"))
    assert out.stat().st_size < PLAIN.stat().st_size / 2


def test_head_only_reads_back_to_the_full_add_ons_state_dict(full_addon, tmp_path):
    out = tmp_path / "head.pt"
    assert export(["--head-only", full_addon, str(out)]) == 0
    full, joined = load_checkpoint(full_addon), read_checkpoint(out)
    assert joined.keys() == full.keys()  # "detector_weights" taken out once joined
    assert full["model"].keys() == joined["model"].keys()
    for key, value in full["model"].items():
        assert joined["model"][key].dtype == value.dtype and torch.equal(joined["model"][key],
                                                                         value), key
    assert {k: v for k, v in joined.items() if k != "model"} == \
        {k: v for k, v in full.items() if k != "model"}
    a, _ = load_trained_model(full_addon)
    b, _ = load_trained_model(out)  # every loader takes the head-only form
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                 b.state_dict().values()))
    # written again from the head-only form: the same form
    again = tmp_path / "again.pt"
    assert export(["--head-only", str(out), str(again)]) == 0
    assert load_checkpoint(again)["model"].keys() == load_checkpoint(out)["model"].keys()


def test_a_mismatching_detector_hash_is_one_line(full_addon, tmp_path):
    out = tmp_path / "head.pt"
    assert export(["--head-only", full_addon, str(out)]) == 0
    ckpt = load_checkpoint(out)
    ckpt["addon"]["detector_sha1"] = "0" * 40
    save_atomic(ckpt, tmp_path / "other.pt")
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(tmp_path / "other.pt")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg == (f"{tmp_path / 'other.pt'}: its head was trained on another detector than the "
                   f"shipped synthetic_cpu_torchvision_plain.pt (sha1 {'0' * 40} recorded, "
                   f"{file_sha1(PLAIN)} found)")


def test_head_only_refuses_an_add_on_of_a_detector_not_shipped(full_addon, tmp_path, capsys):
    ckpt = load_checkpoint(full_addon)
    ckpt["addon"]["detector_sha1"] = "f" * 40
    save_atomic(ckpt, tmp_path / "mine.pt")
    assert export(["--head-only", str(tmp_path / "mine.pt"), str(tmp_path / "out.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"its detector (sha1 {'f' * 40}) is none of the shipped" in err
    assert not (tmp_path / "out.pt").exists()


def test_head_only_refuses_an_add_on_whose_detector_weights_differ(full_addon, tmp_path, capsys):
    ckpt = load_checkpoint(full_addon)
    key = "backbone.body.conv1.weight"
    ckpt["model"][key] = ckpt["model"][key].clone()
    ckpt["model"][key].view(-1)[0] += 1
    save_atomic(ckpt, tmp_path / "tuned.pt")
    assert export(["--head-only", str(tmp_path / "tuned.pt"), str(tmp_path / "out.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"maskiou-export: error: {tmp_path / 'tuned.pt'}: its detector's {key} "
                   "differs from the shipped torchvision_plain's")
    assert not (tmp_path / "out.pt").exists()


def test_head_only_needs_an_add_on(tmp_path, capsys):
    assert export(["--head-only", str(PLAIN), str(tmp_path / "out.pt")]) == 2
    assert "not an add-on checkpoint (no addon.detector_sha1)" in capsys.readouterr().err


@pytest.fixture
def wheel_install(tmp_path, monkeypatch):
    """What a wheel install sees: the package's shipped models, no repository weights/."""
    monkeypatch.setattr(paths, "REPOSITORY_WEIGHTS", tmp_path / "no-clone" / "weights")
    monkeypatch.setattr(paths, "SHIPPED_DIRS", (paths.PRETRAINED, paths.REPOSITORY_WEIGHTS))
    monkeypatch.setattr(headonly, "SHIPPED_DIRS", paths.SHIPPED_DIRS)


def test_without_the_clone_the_repository_models_are_named_in_one_line(wheel_install):
    assert paths.shipped_frameworks() == ["torchvision"]
    assert paths.shipped_name("detectron2", "plain") is None
    line = ("the shipped ultralytics_plain model is not in the installed package (it holds "
            "torchvision's): the repository's weights/ folder holds the others (licences in "
            "weights/README.md); run from a clone (pip install -e .) or give --checkpoint")
    with pytest.raises(ValueError) as e:
        benchmark.embedded_detector("ultralytics", progress=False)
    assert str(e.value) == line
    with pytest.raises(CheckpointError, match="^the shipped detectron2_addon model is not in "
                       "the installed package"):
        benchmark.shipped_checkpoint("detectron2_addon")
    # what the main job and the demo need is in the package
    assert len(benchmark.shipped_checkpoint("torchvision_addon")["model"]) == \
        len(load_checkpoint(PLAIN)["model"]) + 17  # the head and its calibration


def test_in_a_clone_the_repository_models_are_found():
    assert paths.shipped_frameworks() == ["detectron2", "torchvision", "ultralytics"]
    for name in ("detectron2_plain", "detectron2_addon", "ultralytics_plain",
                 "ultralytics_addon"):
        assert paths.shipped_model_path(name).parent == paths.REPOSITORY_WEIGHTS
        assert paths.shipped_model_path(name).is_file()
    for name in ("torchvision_plain", "torchvision_addon", "torchvision_end_to_end"):
        assert paths.shipped_model_path(name).parent == paths.PRETRAINED
    # what the package itself holds, whatever the clone adds
    assert paths.missing_shipped("x_plain").startswith(
        "the shipped x_plain model is not in the installed package (it holds torchvision's): ")
