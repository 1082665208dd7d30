"""The shipped models: their configs are the main job's, the main job reuses them without
training, and evaluating them reproduces the headline tables of the main job's page
(docs/benchmarks/main-job.md, within 0.1 AP), which the README's table repeats.

When the figures change, these tests are what force the pages to follow.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from pages import marked

from maskiou.addon.fit import AddonConfig
from maskiou.data.coco import CocoInstanceDataset
from maskiou.evaluation import benchmark
from maskiou.evaluation.benchmark import ADDON_IMAGES, embedded_config, evaluate_checkpoint
from maskiou.models.checkpoint import load_checkpoint
from maskiou.models.config import TrainConfig
from maskiou.models.paths import shipped_model_path


def has_detectron2() -> bool:
    try:
        import detectron2.modeling  # noqa: F401
    except ImportError:
        return False
    return True


NO_DETECTRON2 = pytest.mark.skipif(not has_detectron2(), reason="detectron2 is not installed")


def differing_fields(stored: dict, cfg: TrainConfig) -> list[str]:
    full = TrainConfig.from_dict(stored).to_dict()
    return [f"{k}: shipped {full[k]!r}, main job {v!r}" for k, v in cfg.to_dict().items()
            if full[k] != v]


@pytest.mark.parametrize("name, maskiou", [("torchvision_plain", False),
                                           ("torchvision_end_to_end", True)])
def test_shipped_config_is_the_main_jobs_preset_field_by_field(name, maskiou):
    stored = load_checkpoint(shipped_model_path(name))["config"]
    wanted = dataclasses.replace(embedded_config(), maskiou=maskiou)
    assert differing_fields(stored, wanted) == []


def assert_default_at_addon_images(cfg: AddonConfig) -> None:
    """``cfg`` is today's default but for ``zoom``, whose views are the default's at the main
    job's number of add-on images."""
    assert dataclasses.replace(cfg, zoom="auto") == AddonConfig()
    assert cfg.zoom_views_for(ADDON_IMAGES) == AddonConfig().zoom_views_for(ADDON_IMAGES) == ()


def test_shipped_addon_is_what_the_main_job_trains():
    ckpt = benchmark.shipped_checkpoint("torchvision_addon")
    # the package carries the detector once: the add-on file holds the head alone
    alone = load_checkpoint(shipped_model_path("torchvision_addon"))
    assert alone["detector_weights"] == "torchvision_plain"
    assert alone["model"] and all(".maskiou_head." in k for k in alone["model"])
    # written before the head had its own config record and before the zoom views: it reads
    # as today's default, with no zoom views, which is what "auto" gives at its 2,000 images
    assert_default_at_addon_images(AddonConfig.from_dict(ckpt["addon"]["config"]))
    from maskiou.records import file_sha1

    assert ckpt["addon"]["detector_sha1"] == file_sha1(shipped_model_path("torchvision_plain"))
    assert len(ckpt["addon"]["fitted_on"]) == ADDON_IMAGES


@NO_DETECTRON2
def test_shipped_detectron2_addon_is_what_its_main_job_trains_on_the_frozen_detector():
    from maskiou.records import file_sha1

    ckpt = benchmark.shipped_checkpoint("detectron2_addon")
    plain = load_checkpoint(shipped_model_path("detectron2_plain"))
    # the package carries the detector once: the add-on file holds the head alone
    alone = load_checkpoint(shipped_model_path("detectron2_addon"))["model"]
    assert alone and all(".maskiou_head." in k for k in alone)
    assert ckpt["framework"] == plain["framework"] == "detectron2"
    assert plain["detector"]["config"] == ckpt["detector"]["config"]
    # what the main job trains today, the searched recalibration included
    cfg = AddonConfig.from_dict(ckpt["addon"]["config"])
    assert cfg.recalibration == "search" and ckpt["addon"]["recalibration"]["kind"] == "search"
    assert_default_at_addon_images(cfg)
    assert ckpt["addon"]["detector_sha1"] == file_sha1(shipped_model_path("detectron2_plain"))
    assert len(ckpt["addon"]["fitted_on"]) == ADDON_IMAGES
    assert all(torch.equal(ckpt["model"][k], v) for k, v in plain["model"].items())  # frozen


def test_main_job_reuses_the_shipped_models_without_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MASKIOU_CACHE", str(tmp_path))

    def no_training(*args, **kwargs):
        raise AssertionError("the main job started training a shipped model")

    monkeypatch.setattr("maskiou.training.trainer.Trainer", no_training)
    for get, name in ((benchmark.default_detector, "torchvision_plain"),
                      (benchmark.default_end_to_end, "torchvision_end_to_end")):
        path = get(progress=False)
        assert path.is_file()
        assert load_checkpoint(path)["model"].keys() == \
            load_checkpoint(shipped_model_path(name))["model"].keys()
        out = capsys.readouterr().out
        assert out.startswith("using the shipped ") and shipped_model_path(name).name in out


RESULTS_PAGE = "benchmarks/main-job"  # docs/benchmarks/main-job.md: the two headline tables
ROW = re.compile(r"^\| `(\w+)`[^|]*((?:\| [*\d.]+ )+)\|$", re.M)


def marked_rows(name: str, marker: str) -> dict[str, list[float]]:
    """``{scoring: [the row's numbers]}`` from the table between the ``<!-- marker -->`` markers
    of page ``name``: the rows that start with a scoring name in backquotes (bold figures too)."""
    table = marked(name, marker)
    return {m.group(1): [float(x.strip(" *")) for x in m.group(2).split("|")[1:]]
            for m in ROW.finditer(table)}


def headline_table(marker: str = "headline") -> dict[str, tuple[float, float, float]]:
    """``{scoring: (mask AP, AP75, box AP)}`` from a headline table of the main job's page
    (columns mask AP, AP50, AP75, box AP)."""
    return {name: (ap, ap75, box) for name, (ap, _, ap75, box) in
            marked_rows(RESULTS_PAGE, marker).items()}


@pytest.mark.parametrize("addon, marker", [
    ("torchvision_addon", "headline"),
    pytest.param("detectron2_addon", "headline-detectron2", marks=NO_DETECTRON2),
])
def test_shipped_addon_reproduces_the_headline_table(addon, marker, tmp_path):
    from maskiou.evaluation.benchmark import embedded_val, shipped_checkpoint
    from maskiou.models.checkpoint import save_atomic

    rows = headline_table(marker)
    assert set(rows) == {"cls", "maskness", "rescored", "recalibrated", "oracle"}
    val_json, val_images = embedded_val(progress=False)
    save_atomic(shipped_checkpoint(addon), tmp_path / "addon.pt")
    m = evaluate_checkpoint(tmp_path / "addon.pt", CocoInstanceDataset(val_json, val_images),
                            "cpu", progress=False)
    for name, (ap, ap75, box) in rows.items():
        measured = (m["segm"][name]["AP"], m["segm"][name]["AP75"], m["bbox"][name]["AP"])
        assert measured == pytest.approx((ap, ap75, box), abs=0.1), name


def test_readme_table_is_the_two_headline_tables():
    """The README's side-by-side table shows, figure for figure, the two headline tables the
    test above checks against the shipped add-ons."""
    both = marked_rows("README", "headline-both")
    torchvision, detectron2 = headline_table("headline"), headline_table("headline-detectron2")
    assert set(both) == set(torchvision) == set(detectron2)
    for name, row in both.items():
        assert tuple(row) == torchvision[name] + detectron2[name], name


def test_the_demo_starts_with_the_shipped_addon_without_claiming_the_main_jobs_run(
        tmp_path, monkeypatch):
    monkeypatch.setenv("MASKIOU_CACHE", str(tmp_path))
    path = benchmark.install_shipped_addon()
    assert path == tmp_path / "models" / "synthetic-cpu-torchvision-addon" / "model_final.pt"
    copied = load_checkpoint(path)
    shipped = load_checkpoint(shipped_model_path("torchvision_addon"))
    assert copied["addon"]["fitted_on"] == shipped["addon"]["fitted_on"]
    assert all(torch.equal(copied["model"][k], v) for k, v in shipped["model"].items())
    assert not (path.parent / "addon_stamp.json").exists()  # the main job still trains its own
    assert benchmark.install_shipped_addon() is None  # never over a model that is there


@NO_DETECTRON2
def test_detectron2_addon_keeps_the_plain_detectors_box_ap(tmp_path, monkeypatch):
    from maskiou.evaluation.benchmark import embedded_val

    monkeypatch.setenv("MASKIOU_CACHE", str(tmp_path))
    addon_path = benchmark.install_shipped_addon("detectron2_addon")  # as the demo gets it
    assert addon_path == tmp_path / "models" / "synthetic-cpu-detectron2-addon" / "model_final.pt"
    monkeypatch.undo()
    val = CocoInstanceDataset(*embedded_val(progress=False))
    plain = evaluate_checkpoint(shipped_model_path("detectron2_plain"), val, "cpu",
                                progress=False)
    addon = evaluate_checkpoint(addon_path, val, "cpu", progress=False)
    assert not plain["has_head"] and set(plain["segm"]) >= {"cls", "maskness"}
    # the same detections, frozen: the same weights on the same batches, so exact
    assert plain["bbox"]["cls"] == addon["bbox"]["cls"]
    assert plain["segm"]["cls"] == addon["segm"]["cls"]
    assert plain["segm"]["maskness"]["AP"] == pytest.approx(addon["segm"]["maskness"]["AP"],
                                                            abs=0.1)
