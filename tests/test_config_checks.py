"""Configurations refuse nonsense when they are made: every choice field of ``TrainConfig``,
``AddonConfig``, ``HeadConfig`` and ``MaskIoUConfig`` refuses a value outside its choices with
one line naming the class, the field and the allowed values, and the command-line tools refuse
a bad value with that one line and exit code 2 before torch is even imported."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from maskiou.addon.config import AddonConfig
from maskiou.configs import HeadConfig, MaskIoUConfig
from maskiou.models.config import TrainConfig
from maskiou.options import ConfigError, choices_of, field_types

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = (TrainConfig, AddonConfig, HeadConfig, MaskIoUConfig)


def choice_fields() -> list[tuple[type, str]]:
    return [(cls, f.name) for cls in CONFIGS for f in dataclasses.fields(cls)
            if choices_of(field_types(cls)[f.name]) is not None]


def test_the_choice_fields_are_the_ones_the_configs_have():
    assert {f"{c.__name__}.{n}" for c, n in choice_fields()} == {
        "TrainConfig.model", "TrainConfig.norm", "TrainConfig.head_norm", "TrainConfig.optimizer",
        "TrainConfig.lr_schedule", "TrainConfig.amp", "TrainConfig.dataset",
        "TrainConfig.synthetic_generator",
        "AddonConfig.target", "AddonConfig.zoom", "AddonConfig.loss", "AddonConfig.recalibration",
        "AddonConfig.crossfit_final", "HeadConfig.fusion", "HeadConfig.mask_input",
        "HeadConfig.output", "HeadConfig.target", "MaskIoUConfig.keep"}


@pytest.mark.parametrize("cls, name", choice_fields(), ids=lambda x: getattr(x, "__name__", x))
def test_every_choice_field_refuses_a_value_outside_its_choices(cls, name):
    allowed = choices_of(field_types(cls)[name])
    with pytest.raises(ConfigError) as e:
        cls(**{name: "nonsense"})
    message = str(e.value)
    assert message.startswith(f"{cls.__name__}.{name}: 'nonsense' is not one of ")
    assert all(repr(a) in message for a in allowed) and "\n" not in message
    cls(**{name: allowed[-1]})  # and each allowed value is taken


@pytest.mark.parametrize("cls, values, message", [
    (MaskIoUConfig, {"loss_weight": -1.0}, "MaskIoUConfig.loss_weight: -1.0 is outside [0.0, inf]"),
    (MaskIoUConfig, {"rescore_outputs": "yes"}, "MaskIoUConfig.rescore_outputs: 'yes' is not a "
                                                "bool"),
    (MaskIoUConfig, {"detach_inputs": 1}, "MaskIoUConfig.detach_inputs: 1 is not a bool"),
    (MaskIoUConfig, {"freeze_detector": None}, "MaskIoUConfig.freeze_detector: None is not a bool"),
    (HeadConfig, {"num_convs": 0}, "HeadConfig.num_convs: 0 is outside [1, inf]"),
    (HeadConfig, {"conv_channels": 2.5}, "HeadConfig.conv_channels: 2.5 is not a int"),
    (AddonConfig, {"recalibration_holdout": 1.0}, "AddonConfig.recalibration_holdout: 1.0 is "
                                                  "outside (0.0, 0.95]"),
    (AddonConfig, {"crossfit_folds": 1}, "AddonConfig.crossfit_folds: 1 is not a number of folds"),
    (TrainConfig, {"hflip": 2.0}, "TrainConfig.hflip: 2.0 is outside [0.0, 1.0]"),
    (TrainConfig, {"device": "gpu"}, "TrainConfig.device: 'gpu' is not auto, cpu, cuda, cuda:N or "
                                     "mps"),
])
def test_bounds_and_types_are_checked_too(cls, values, message):
    with pytest.raises(ConfigError) as e:
        cls(**values)
    assert str(e.value).startswith(message)


WATCH = "import atexit, sys; atexit.register(lambda: print('torch imported:', 'torch' in " \
        "sys.modules)); sys.argv = {argv!r}; import runpy; {run}"
CLIS = {"maskiou-addon": "runpy.run_module('maskiou.addon', run_name='__main__')",
        "maskiou-train": "runpy.run_module('maskiou.training', run_name='__main__')",
        "coco_eval": f"runpy.run_path({str(ROOT / 'benchmarks' / 'coco_eval.py')!r}, "
                     "run_name='__main__')"}
ADDON = ["--detector", "d.pt", "--train-json", "a.json", "--train-images", "imgs"]


@pytest.mark.parametrize("cli, args, message", [
    ("maskiou-addon", ["--addon-loss", "l1"], "argument --addon-loss: invalid choice: 'l1' "
                                              "(choose from 'l2', 'smooth_l1', 'bce')"),
    ("maskiou-addon", ["--addon-fusion", "sum"], "argument --addon-fusion: invalid choice"),
    ("maskiou-addon", ["--addon-epochs", "0"], "AddonConfig.epochs: 0 is outside [1, inf]"),
    ("maskiou-addon", ["--addon-crossfit-folds", "1"], "AddonConfig.crossfit_folds: 1 is not"),
    ("maskiou-train", ["--norm", "batchnorm"], "argument --norm: invalid choice: 'batchnorm'"),
    ("maskiou-train", ["--maskiou-loss-weight", "-1"], "TrainConfig.maskiou_loss_weight: -1.0 "
                                                       "is outside [0.0, inf]"),
    ("maskiou-train", ["--maskiou-output", "tanh"], "argument --maskiou-output: invalid choice"),
    ("coco_eval", ["--addon-recalibration", "foo"], "argument --addon-recalibration: invalid "
                                                    "choice: 'foo'"),
    ("coco_eval", ["--addon-recalibration-holdout", "0"], "AddonConfig.recalibration_holdout"),
])
def test_a_bad_value_on_the_command_line_is_one_line_before_torch_is_imported(cli, args, message,
                                                                               tmp_path):
    argv = [cli, *(ADDON if cli == "maskiou-addon" else []), *args]
    code = WATCH.format(argv=argv, run=CLIS[cli])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{cli}: error: ") and message in lines[0], \
        done.stderr
    assert done.stdout.strip() == "torch imported: False"  # so it cannot take long
