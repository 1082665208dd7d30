"""The kept-mask switch on a detectron2 model (``maskiou.set_keep``): filtered inside its
forward, eager and scripted alike; ``maskiou.kept`` reads detectron2's ``[{"instances": ...}]``
(its class c is maskiou's label c + 1)."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("detectron2", reason="detectron2 is not installed (see "
                    "docs/frameworks/detectron2.md)")

from test_detectron2 import eager_and_scripted, images, inference, tiny_detectron2  # noqa: E402
from test_keep import threshold_between  # noqa: E402

from maskiou import attach_maskiou_head, find_adapter, kept, set_keep  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
COMPARED = ("scores", "pred_classes", "pred_masks", "cls_scores", "mask_quality", "maskness")


@pytest.fixture(scope="module")
def fitted():
    """A tiny detectron2 model with the head, a fitted recalibration (scores spread) and a
    threshold on its most frequent label (between its scores; the others 0); its outputs with
    the switch off; that label and its threshold."""
    model = tiny_detectron2()
    attach_maskiou_head(model)
    cal = model.roi_heads.maskiou_head.calibration
    cal.set([1.0, 0.0, 0.0, 0.0, 0.0], 3.0)
    everything = inference(model, images(2))
    labels = torch.cat([i.pred_classes for i in everything]) + 1
    scores = torch.cat([i.scores for i in everything])
    label = int(labels.mode().values)
    assert int((labels == label).sum()) >= 3
    threshold = threshold_between(scores[labels == label])
    thresholds = [0.0] * len(cal.class_thresholds)
    thresholds[label] = threshold
    cal.set_class_thresholds(thresholds)
    return model, everything, label, threshold


def by_hand(everything, label: int, threshold: float):
    return [i[(i.pred_classes + 1 != label) | (i.scores >= threshold)] for i in everything]


def assert_same(a, b) -> None:
    assert [len(x) for x in a] == [len(y) for y in b]
    for x, y in zip(a, b):
        for f in COMPARED:
            assert torch.equal(x.get(f), y.get(f)), f


def test_the_switch_filters_detectron2s_forward_and_kept_reads_its_outputs(fitted):
    model, everything, label, threshold = fitted
    on = set_keep(copy.deepcopy(model), "worth")
    out = inference(on, images(2))
    assert_same(out, by_hand(everything, label, threshold))
    assert 0 < sum(len(i) for i in out) < sum(len(i) for i in everything)
    inputs = [{"image": img * 255} for img in images(2)]
    with torch.no_grad():
        full, worth = model(inputs), on(inputs)  # detectron2's output: [{"instances": ...}]
    assert_same([r["instances"] for r in kept(full, model)], [r["instances"] for r in worth])
    assert_same(inference(model, images(2)), everything)  # the switch off: every detection


def test_the_scripted_detectron2_model_applies_the_switch_equal_to_eager(fitted):
    model, _, _, _ = fitted
    on = set_keep(copy.deepcopy(model), "worth").eval()
    eager, script = eager_and_scripted(on)
    for e, s in zip(eager, script):
        assert len(e) == len(s.scores)
        for f in COMPARED:
            torch.testing.assert_close(getattr(s, f), e.get(f), rtol=0, atol=1e-6, msg=f)


def test_predict_keeps_only_the_worth_and_collect_sees_every_detection(fitted):
    model, everything, _, _ = fitted
    on = set_keep(copy.deepcopy(model), "worth")
    adapter = find_adapter(on)
    records = adapter.predict(on, images(2))
    assert [len(r["scores"]) for r in records] == [
        len(r["scores"]) for r in kept(adapter.predict(model, images(2)), model)]
    assert [len(r["scores"]) for r in adapter.collect(on, images(2))] == [
        len(i) for i in everything]
