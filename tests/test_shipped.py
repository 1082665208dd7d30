"""The shipped models: their configs are the main job's, the main job reuses them without
training, and evaluating them reproduces the README's headline table (within 0.1 AP).

When the README's figures change, the last test is what forces the README to follow.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from maskiou.addon.fit import AddonConfig
from maskiou.data.coco import CocoInstanceDataset
from maskiou.evaluation import benchmark
from maskiou.evaluation.benchmark import ADDON_IMAGES, embedded_config, evaluate_checkpoint
from maskiou.models.checkpoint import load_checkpoint
from maskiou.models.config import TrainConfig
from maskiou.models.paths import SHIPPED, shipped_model_path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def differing_fields(stored: dict, cfg: TrainConfig) -> list[str]:
    full = TrainConfig.from_dict(stored).to_dict()
    return [f"{k}: shipped {full[k]!r}, main job {v!r}" for k, v in cfg.to_dict().items()
            if full[k] != v]


@pytest.mark.parametrize("name, maskiou", [("plain", False), ("end_to_end", True)])
def test_shipped_config_is_the_main_jobs_preset_field_by_field(name, maskiou):
    stored = load_checkpoint(shipped_model_path(name))["config"]
    wanted = dataclasses.replace(embedded_config(), maskiou=maskiou)
    assert differing_fields(stored, wanted) == []


def test_shipped_addon_is_what_the_main_job_trains():
    ckpt = load_checkpoint(shipped_model_path("addon"))
    # written before the head had its own config record: it still reads as today's default
    assert AddonConfig.from_dict(ckpt["addon"]["config"]) == AddonConfig()
    from maskiou.records import file_sha1

    assert ckpt["addon"]["detector_sha1"] == file_sha1(shipped_model_path("plain"))
    assert len(ckpt["addon"]["fitted_on"]) == ADDON_IMAGES


def test_main_job_reuses_the_shipped_models_without_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MASKIOU_CACHE", str(tmp_path))

    def no_training(*args, **kwargs):
        raise AssertionError("the main job started training a shipped model")

    monkeypatch.setattr("maskiou.training.trainer.Trainer", no_training)
    for get, name in ((benchmark.default_detector, "plain"),
                      (benchmark.default_end_to_end, "end_to_end")):
        path = get(progress=False)
        assert path.is_file()
        assert load_checkpoint(path)["model"].keys() == \
            load_checkpoint(shipped_model_path(name))["model"].keys()
        assert f"using the shipped model {SHIPPED[name]}" in capsys.readouterr().out


def readme_headline() -> dict[str, tuple[float, float, float]]:
    """``{scoring: (mask AP, AP75, box AP)}`` from the README's headline table: the rows that
    start with a scoring name in backquotes, between the two headline markers."""
    text = README.read_text()
    table = text.split("<!-- headline -->")[1].split("<!-- /headline -->")[0]
    rows = {}
    for m in re.finditer(r"^\| `(\w+)`[^|]*\| ([\d.]+) \| [\d.]+ \| ([\d.]+) \| ([\d.]+) \|",
                         table, re.M):
        rows[m.group(1)] = (float(m.group(2)), float(m.group(3)), float(m.group(4)))
    return rows


def test_shipped_addon_reproduces_the_readme_headline_table():
    from maskiou.evaluation.benchmark import embedded_val

    rows = readme_headline()
    assert set(rows) >= {"cls", "maskness", "rescored", "oracle"}
    val_json, val_images = embedded_val(progress=False)
    m = evaluate_checkpoint(shipped_model_path("addon"), CocoInstanceDataset(val_json, val_images),
                            "cpu", progress=False)
    for name, (ap, ap75, box) in rows.items():
        measured = (m["segm"][name]["AP"], m["segm"][name]["AP75"], m["bbox"][name]["AP"])
        assert measured == pytest.approx((ap, ap75, box), abs=0.1), name


def test_the_demo_starts_with_the_shipped_addon_without_claiming_the_main_jobs_run(
        tmp_path, monkeypatch):
    monkeypatch.setenv("MASKIOU_CACHE", str(tmp_path))
    path = benchmark.install_shipped_addon()
    assert path == tmp_path / "models" / "synthetic-cpu-addon" / "model_final.pt"
    copied, shipped = load_checkpoint(path), load_checkpoint(shipped_model_path("addon"))
    assert copied["addon"]["fitted_on"] == shipped["addon"]["fitted_on"]
    assert all(torch.equal(copied["model"][k], v) for k, v in shipped["model"].items())
    assert not (path.parent / "addon_stamp.json").exists()  # the main job still trains its own
    assert benchmark.install_shipped_addon() is None  # never over a model that is there
