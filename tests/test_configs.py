"""One head configuration for the end-to-end trainer and the add-on, and the configs written
before it (flat ``maskiou_*`` fields, the add-on's boolean ``score_inputs``) still read."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from maskiou.addon.cli import config_from_args
from maskiou.addon.fit import AddonConfig
from maskiou.head import HeadConfig
from maskiou.models.checkpoint import load_checkpoint
from maskiou.models.config import TrainConfig, resolve
from maskiou.models.paths import shipped_model_path
from maskiou.training.cli import parse_args


def test_a_flat_config_of_before_reads_as_the_grouped_one():
    flat = {**{k: v for k, v in TrainConfig().to_dict().items() if k != "maskiou_head"},
            "maskiou_conv_channels": 64, "maskiou_num_convs": 2, "maskiou_fc_dim": 256,
            "maskiou_fusion": "concat", "maskiou_reduce_channels": 0,
            "maskiou_mask_features": 0, "maskiou_score_inputs": 0, "maskiou_output": "linear"}
    cfg = TrainConfig.from_dict(flat)
    assert cfg.maskiou_head == HeadConfig(conv_channels=64, num_convs=2, fc_dim=256)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg  # and the grouped form round-trips
    with pytest.raises(TypeError):
        TrainConfig.from_dict({**flat, "maskiou_width": 3})


@pytest.mark.parametrize("name", ["torchvision_plain", "torchvision_end_to_end"])
def test_the_shipped_checkpoints_configs_read_with_the_embedded_head(name):
    stored = load_checkpoint(shipped_model_path(name))["config"]
    assert "maskiou_conv_channels" in stored  # written before the head had its own record
    assert TrainConfig.from_dict(stored).maskiou_head == \
        resolve("synthetic-cpu", {}).maskiou_head == HeadConfig(64, 0, 2, 256)


def test_the_trainers_head_flags_reach_the_head_config():
    _, cfg = parse_args(["--maskiou-conv-channels", "32", "--maskiou-score-inputs", "2"])
    assert cfg.maskiou_head == HeadConfig(conv_channels=32, num_convs=2, fc_dim=256,
                                          score_inputs=2)


# an add-on checkpoint's "addon.config" as maskiou wrote it before the head had its own record
# (the shipped add-on of the earlier releases, maskiou/pretrained/synthetic_cpu_addon.config.json)
FLAT_ADDON = {"conv_channels": 64, "reduce_channels": 0, "num_convs": 2, "fc_dim": 256,
              "fusion": "concat", "mask_features": 0, "score_inputs": True, "min_target": -1.0,
              "target": "coco", "flip": True, "max_detections": 100, "loss": "l2",
              "rank_weight": 0.1, "epochs": 12, "batch_size": 256, "lr": 0.001,
              "weight_decay": 0.0001, "seed": 0, "recalibration": "logistic",
              "recalibration_holdout": 0.2}


def test_the_add_on_reads_its_old_flat_config_and_routes_head_fields():
    as_it_ran = AddonConfig(crossfit_folds=0, zoom="none", recalibration="logistic")
    assert AddonConfig.from_dict(FLAT_ADDON) == as_it_ran
    assert AddonConfig.from_dict({"score_inputs": False}).head.score_inputs == 0
    assert AddonConfig.from_dict(dataclasses.asdict(AddonConfig(epochs=3))).epochs == 3
    light = AddonConfig().replace(reduce_channels=32, conv_channels=32, epochs=2)
    assert light.head == HeadConfig(conv_channels=32, reduce_channels=32, num_convs=2,
                                    fc_dim=256, score_inputs=2, target="coco")
    assert light.epochs == 2
    assert AddonConfig(target="iou").head.target == "iou"  # the head regresses the add-on's target
    assert AddonConfig(loss="bce").head_kwargs()["output"] == "sigmoid"
    assert AddonConfig().head_kwargs()["output"] == "linear"


def test_an_add_on_checkpoint_written_before_the_head_config_loads_and_scores(tmp_path):
    """The flat form of both records (the model's config and the add-on's), as earlier
    releases wrote them: it rebuilds the same model, head included, and the demo's reader
    takes its add-on config."""
    from maskiou.models.checkpoint import save_atomic
    from maskiou.models.load import load_trained_model

    ckpt = load_checkpoint(shipped_model_path("torchvision_addon"))
    head = ckpt["config"].pop("maskiou_head")
    ckpt["config"].update({f"maskiou_{k}": v for k, v in head.items()})
    ckpt["addon"]["config"] = FLAT_ADDON
    save_atomic(ckpt, tmp_path / "old_addon.pt")
    old, meta = load_trained_model(tmp_path / "old_addon.pt")
    new, _ = load_trained_model(shipped_model_path("torchvision_addon"))
    assert old.roi_heads.maskiou_head.score_inputs == 2
    assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(),
                                                 new.state_dict().values()))
    as_it_ran = AddonConfig(crossfit_folds=0, zoom="none", recalibration="logistic")
    assert AddonConfig.from_dict(meta["addon"]["config"]) == as_it_ran


def test_add_on_flags_reach_the_config_and_its_head():
    import argparse

    from maskiou.addon.cli import add_config_flags

    p = argparse.ArgumentParser()
    add_config_flags(p)
    cfg = config_from_args(p.parse_args(["--addon-conv-channels", "16", "--addon-epochs", "5",
                                         "--addon-flip", "false", "--addon-score-inputs", "0"]))
    assert cfg.head.conv_channels == 16 and cfg.head.score_inputs == 0
    assert cfg.epochs == 5 and cfg.flip is False and cfg.head.fc_dim == 256


def test_auto_crossfit_folds_depend_on_the_number_of_images():
    from maskiou.addon.fit import AUTO_CROSSFIT_BELOW, AUTO_CROSSFIT_FOLDS

    auto = AddonConfig(crossfit_folds=-1)
    assert auto.folds_for(AUTO_CROSSFIT_BELOW - 1) == AUTO_CROSSFIT_FOLDS == 5
    assert auto.folds_for(AUTO_CROSSFIT_BELOW) == 0 and AUTO_CROSSFIT_BELOW == 1000
    assert AddonConfig(crossfit_folds=3).folds_for(10_000) == 3
    assert AddonConfig(crossfit_folds=0).folds_for(10) == 0


def test_zoom_views_are_automatic_below_a_thousand_images_and_named_otherwise():
    from maskiou.addon.fit import AUTO_CROSSFIT_BELOW
    from maskiou.addon.run import addon_views

    auto = AddonConfig()
    assert auto.zoom == "auto"
    assert auto.zoom_views_for(AUTO_CROSSFIT_BELOW - 1) == ("zoom-in", "zoom-out")
    assert auto.zoom_views_for(AUTO_CROSSFIT_BELOW) == ()
    assert AddonConfig(zoom="in").zoom_views_for(10_000) == ("zoom-in",)
    assert AddonConfig(zoom="out").zoom_views_for(10) == ("zoom-out",)
    assert AddonConfig(zoom="none").zoom_views_for(10) == ()
    with pytest.raises(ValueError, match="AddonConfig.zoom: 'sideways' is not one of 'auto'"):
        AddonConfig(zoom="sideways")
    # the views the collection adds: of the images the head trains on (not the held-out ones)
    views = addon_views([10, 11, 12], {11}, AddonConfig(zoom="in", photometric=True))
    assert views == {"mirror": [0, 2], "photometric": [0, 2], "zoom-in": [0, 2]}
    assert addon_views([10, 11], set(), AddonConfig(flip=False, zoom="none")) == {}
    import argparse

    from maskiou.addon.cli import add_config_flags

    p = argparse.ArgumentParser()
    add_config_flags(p)
    assert config_from_args(p.parse_args(["--addon-zoom", "out"])).zoom == "out"
