"""The adapter contract (maskiou.contract) and its checker: every adapter shipped here passes
it, and a deliberately broken adapter fails with a message naming the member that breaks it."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
from conftest import square_target, tiny_maskrcnn
from custom_adapter import TinySegmenter, TinySegmenterAdapter

from maskiou import add_maskiou_outputs, attach_maskiou_head, check_adapter, register_adapter
from maskiou.attach import _registered, entry_point_adapters, framework_adapter
from maskiou.contract import (
    CAPABILITIES,
    AdapterContractError,
    missing_members,
    require,
)
from maskiou.models.checkpoint import detector_entry
from maskiou.models.config import resolve
from maskiou_integrations.torchvision_maskrcnn import TorchvisionMaskRCNNAdapter

ROOT = Path(__file__).resolve().parents[1]


def images() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.rand(3, 64, 64, generator=g) for _ in range(2)]


def targets() -> list[dict]:
    return [square_target(), square_target(box=(30, 20, 60, 50), label=2)]


def tv_detector_entry() -> dict:
    return detector_entry(resolve("synthetic-cpu", {}), 4, {})


def test_the_torchvision_adapter_passes_the_whole_contract():
    report = check_adapter(TorchvisionMaskRCNNAdapter(), tiny_maskrcnn(), images(), targets(),
                           detector=tv_detector_entry())
    assert report.ok and report.skipped == ["train (declared; needs the framework's files or "
                                            "a training run)"]
    assert {"matches", "head_defaults", "install", "predict (plain model)",
            "predict (head attached)", "predict: detector outputs unchanged by attaching",
            "collect", "losses", "mask_branch", "load_detector"} <= set(report.passed)


def test_the_example_adapter_passes_the_whole_contract():
    torch.manual_seed(0)
    report = check_adapter(TinySegmenterAdapter(), TinySegmenter(), images(), targets(),
                           detector={"num_classes": 3, "channels": 16})
    assert report.ok and len(report.passed) == 9, str(report)


def test_the_detectron2_adapter_passes_the_whole_contract():
    pytest.importorskip("detectron2", reason="detectron2 is not installed")
    from test_detectron2 import tiny_detectron2

    from maskiou_integrations.detectron2_models import embedded_config
    from maskiou_integrations.detectron2_rcnn import Detectron2RCNNAdapter

    report = check_adapter(Detectron2RCNNAdapter(), tiny_detectron2(), images(), targets(),
                           detector={"config": embedded_config(3).dump()})
    assert report.ok, str(report)
    assert "losses" in report.passed and "collect" in report.passed
    assert report.skipped == ["convert (declared; needs the framework's files or a training "
                              "run)", "train (declared; needs the framework's files or a "
                              "training run)"]


# --- broken adapters: each problem is named ------------------------------------------------


class NoFramework:
    name = "no framework"
    capabilities = frozenset()

    def matches(self, model):
        return True

    def head_defaults(self, model):
        return {}

    def install(self, model, head, config):
        pass


class DeclaresCollectWithoutIt(TorchvisionMaskRCNNAdapter):
    collect = None


class UnsortedPredict(TorchvisionMaskRCNNAdapter):
    def predict(self, model, images):
        out = super().predict(model, images)
        for r in out:
            for k in list(r):
                r[k] = r[k].flip(0)
        return out


class WrongRoIFeatures(TorchvisionMaskRCNNAdapter):
    def collect(self, model, images):
        out = super().collect(model, images)
        for r in out:
            r["roi_features"] = r["roi_features"][:, :, :7, :7]
        return out


class CollectsOtherInputs(TorchvisionMaskRCNNAdapter):
    def collect(self, model, images):
        out = super().collect(model, images)
        for r in out:
            r["mask_probs"] = r["mask_probs"].flip(-1)
        return out


class ForgetsTheHead(TorchvisionMaskRCNNAdapter):
    def install(self, model, head, config):
        pass


class NoRoISize(TorchvisionMaskRCNNAdapter):
    def head_defaults(self, model):
        d = super().head_defaults(model)
        del d["roi_size"]
        return d


class NoHeadLoss(TorchvisionMaskRCNNAdapter):
    def losses(self, model, images, targets):
        out = super().losses(model, images, targets)
        out.pop("loss_maskiou")
        return out


class ChangesTheDetector(TorchvisionMaskRCNNAdapter):
    def predict(self, model, images):
        out = super().predict(model, images)
        if "cls_scores" in out[0]:
            for r in out:
                r["boxes"] = r["boxes"] + 1.0
        return out


class SkipsTheFinalScore(TorchvisionMaskRCNNAdapter):
    """Puts cls x the head's output in ``scores``, re-sorted: what an adapter that never calls
    the head's calibration returns (``add_maskiou_outputs`` without ``final_scores``)."""

    def predict(self, model, images):
        out = super().predict(model, images)
        for r in out:
            if "cls_scores" in r and not torch.equal(r["scores"], r["cls_scores"]):  # rescored
                rescored = {k: v for k, v in r.items()
                            if k not in ("cls_scores", "mask_quality", "maskness")}
                rescored["scores"] = r["cls_scores"]
                add_maskiou_outputs(rescored, r["mask_quality"], r["maskness"], True)
                r.clear()
                r.update(rescored)
        return out


class UnknownCapability(TorchvisionMaskRCNNAdapter):
    capabilities = frozenset({"predict", "telepathy"})


@pytest.mark.parametrize("adapter,message", [
    (NoFramework(), "missing framework (required of every adapter)"),
    (DeclaresCollectWithoutIt(), "missing collect (declared capability 'collect'"),
    (SkipsTheFinalScore(), "problem: predict (head attached): record 0: scores are not the "
                           "final score (the head's calibration of cls_scores, mask_quality, "
                           "maskness, the boxes and labels"),
    (UnknownCapability(), "missing capability 'telepathy' (unknown; known: predict, collect"),
    (UnsortedPredict(), "problem: predict (plain model): record 0: scores are not sorted, "
                        "highest first"),
    (WrongRoIFeatures(), "problem: collect: record 0: roi_features (n, 256, 7, 7), the head "
                         "takes (n, 256, 14, 14)"),
    (CollectsOtherInputs(), "problem: collect: record 0: the head on the collected inputs does "
                            "not give predict's mask_quality"),
    (ForgetsTheHead(), "problem: install: no MaskIoUHead is in the model after install"),
    (NoRoISize(), "problem: head_defaults: roi_size is None, not an int > 0"),
    (NoHeadLoss(), "problem: losses: no loss_maskiou among"),
    (ChangesTheDetector(), "problem: predict: detector outputs unchanged by attaching: record "
                           "0: boxes differs from the plain detector's"),
], ids=lambda x: type(x).__name__ if not isinstance(x, str) else "")
def test_a_broken_adapter_fails_naming_what_breaks_the_contract(adapter, message):
    model = tiny_maskrcnn()
    with pytest.raises(AdapterContractError) as e:
        check_adapter(adapter, model, images(), targets())
    text = re.sub(r"\(\d+, 256, ", "(n, 256, ", str(e.value))
    assert message in text, text


def test_skipping_the_final_score_is_the_one_problem_found():
    """The check fits a recalibration in the head before it reads ``scores``: cls x quality
    (right for an unfitted head) is then wrong, and nothing else is."""
    report = check_adapter(SkipsTheFinalScore(), tiny_maskrcnn(), images(), targets(),
                           raise_errors=False)
    assert [p.split(":")[0] for p in report.problems] == ["predict (head attached)"]
    assert "predict (plain model)" in report.passed and "collect" in report.passed
    from maskiou.check import CHECK_CALIBRATION

    weights, bias = CHECK_CALIBRATION
    assert bias != 0 and weights[0] != weights[1]  # not cls x quality in disguise


def test_check_adapter_leaves_the_global_random_state_alone():
    model, imgs = TinySegmenter(), images()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check_adapter(TinySegmenterAdapter(), model, imgs)
    assert torch.equal(torch.rand(3), expected)


def test_require_names_the_capability_its_members_and_who_needs_it():
    class AttachOnly(NoFramework):
        framework = "attach-only"

    with pytest.raises(AdapterContractError) as e:
        require(AttachOnly(), "collect", "the add-on")
    assert str(e.value) == (
        "the adapter no framework does not declare the capability 'collect' (collect(...): to "
        "read each final detection's head inputs (the add-on's collection pass)); the add-on "
        "needs it (see maskiou.contract)")
    assert require(TorchvisionMaskRCNNAdapter(), "collect").framework == "torchvision"


def test_register_adapter_and_entry_points_refuse_what_lacks_members(fake_entry_points):
    with pytest.raises(AdapterContractError, match="lacks framework"):
        register_adapter(NoFramework())
    from importlib.metadata import EntryPoint

    import maskiou.attach as attach

    fake_entry_points(EntryPoint("nf", "test_contract:NoFramework", attach.ENTRY_POINT_GROUP))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert entry_point_adapters() == []
    assert "it lacks framework (required of every adapter)" in str(caught[0].message)


def test_every_capability_names_members_the_protocols_declare():
    for name, (protocol, members, purpose) in CAPABILITIES.items():
        for m in members:
            assert callable(getattr(protocol, m)), (name, m)
        assert purpose
    assert missing_members(TorchvisionMaskRCNNAdapter()) == []
    assert missing_members(TinySegmenterAdapter()) == []


def test_framework_adapter_requires_the_capability_asked_for():
    adapter = register_adapter(TinySegmenterAdapter())
    try:
        assert framework_adapter("tiny-segmenter") is adapter
        with pytest.raises(AdapterContractError, match="'convert'"):
            framework_adapter("tiny-segmenter", "convert")
    finally:
        _registered.remove(adapter)


def test_attach_refuses_a_passed_adapter_that_lacks_members():
    with pytest.raises(AdapterContractError, match="lacks framework"):
        attach_maskiou_head(tiny_maskrcnn(), adapter=NoFramework())
