"""One head configuration for the end-to-end trainer and the add-on, and the configs written
before it (flat ``maskiou_*`` fields, the add-on's boolean ``score_inputs``) still read."""

from __future__ import annotations

import dataclasses

import pytest

from maskiou.addon.cli import config_from_args
from maskiou.addon.fit import AddonConfig
from maskiou.head import HeadConfig
from maskiou.models.checkpoint import load_checkpoint
from maskiou.models.config import TrainConfig, resolve
from maskiou.models.paths import shipped_model_path
from maskiou.training.trainer import parse_args


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


@pytest.mark.parametrize("name", ["plain", "end_to_end"])
def test_the_shipped_checkpoints_configs_read_with_the_embedded_head(name):
    stored = load_checkpoint(shipped_model_path(name))["config"]
    assert "maskiou_conv_channels" in stored  # written before the head had its own record
    assert TrainConfig.from_dict(stored).maskiou_head == \
        resolve("synthetic-cpu", {}).maskiou_head == HeadConfig(64, 0, 2, 256)


def test_the_trainers_head_flags_reach_the_head_config():
    _, cfg = parse_args(["--maskiou-conv-channels", "32", "--maskiou-score-inputs", "2"])
    assert cfg.maskiou_head == HeadConfig(conv_channels=32, num_convs=2, fc_dim=256,
                                          score_inputs=2)


def test_the_add_on_reads_its_old_flat_config_and_routes_head_fields():
    shipped = load_checkpoint(shipped_model_path("addon"))["addon"]["config"]
    assert shipped["score_inputs"] is True and "head" not in shipped
    assert AddonConfig.from_dict(shipped) == AddonConfig()
    assert AddonConfig.from_dict({"score_inputs": False}).head.score_inputs == 0
    assert AddonConfig.from_dict(dataclasses.asdict(AddonConfig(epochs=3))).epochs == 3
    light = AddonConfig().replace(reduce_channels=32, conv_channels=32, epochs=2)
    assert light.head == HeadConfig(conv_channels=32, reduce_channels=32, num_convs=2,
                                    fc_dim=256, score_inputs=2) and light.epochs == 2
    assert AddonConfig(loss="bce").head_kwargs()["output"] == "sigmoid"
    assert AddonConfig().head_kwargs()["output"] == "linear"


def test_add_on_flags_reach_the_config_and_its_head():
    import argparse

    from maskiou.addon.cli import add_config_flags

    p = argparse.ArgumentParser()
    add_config_flags(p)
    cfg = config_from_args(p.parse_args(["--addon-conv-channels", "16", "--addon-epochs", "5",
                                         "--addon-flip", "false", "--addon-score-inputs", "0"]))
    assert cfg.head.conv_channels == 16 and cfg.head.score_inputs == 0
    assert cfg.epochs == 5 and cfg.flip is False and cfg.head.fc_dim == 256
