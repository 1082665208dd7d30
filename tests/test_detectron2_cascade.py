"""Cascade Mask R-CNN through the detectron2 adapter: a model built from the model zoo's
``Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml`` (made small: ResNet-18, GroupNorm so that random
weights stay finite, 64 px images, 3 classes) keeps ``CascadeROIHeads.forward``; the MaskIoU
branch runs where it calls ``_forward_mask``."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

pytest.importorskip("detectron2", reason="detectron2 is not installed (see "
                    "docs/frameworks/detectron2.md)")

from detectron2 import model_zoo  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.modeling.roi_heads import CascadeROIHeads  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402
from test_detectron2 import SIZE, gt_instances, images  # noqa: E402

from maskiou import attach_maskiou_head  # noqa: E402
from maskiou.attach import find_adapter  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

NUM_CLASSES = 3


def cascade_mask_rcnn(seed: int = 0):
    """The model zoo's Cascade Mask R-CNN config, small and with GroupNorm, random weights."""
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml"))
    cfg.merge_from_list([
        "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "MODEL.BACKBONE.FREEZE_AT", "0",
        "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
        "MODEL.RESNETS.NORM", "GN", "MODEL.FPN.NORM", "GN", "MODEL.FPN.OUT_CHANNELS", "32",
        "MODEL.ROI_BOX_HEAD.NORM", "GN", "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
        "MODEL.ROI_MASK_HEAD.NORM", "GN", "MODEL.ROI_MASK_HEAD.CONV_DIM", "32",
        "MODEL.ROI_MASK_HEAD.NUM_CONV", "2",
        "MODEL.ROI_HEADS.NUM_CLASSES", str(NUM_CLASSES),
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
        "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "200", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100",
        "MODEL.RPN.PRE_NMS_TOPK_TEST", "100", "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
        "MODEL.ANCHOR_GENERATOR.SIZES", "[[8], [16], [32], [64], [128]]",
        "INPUT.MIN_SIZE_TEST", str(SIZE), "INPUT.MAX_SIZE_TEST", str(SIZE)])
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_model(cfg).eval()


def train_step(model, seed: int = 0) -> dict[str, torch.Tensor]:
    model.train()
    torch.manual_seed(seed)
    inputs = [{"image": img * 255, "instances": t}
              for img, t in zip(images(2), [gt_instances(), gt_instances(polygons=True)])]
    with EventStorage(0):
        return model(inputs)


@pytest.fixture(scope="module")
def plain_and_attached():
    plain = cascade_mask_rcnn()
    assert type(plain.roi_heads) is CascadeROIHeads
    attached = copy.deepcopy(plain)
    attach_maskiou_head(attached, freeze_detector=True, score_inputs=2)
    return plain, attached


def test_a_cascade_trains_the_head_on_its_own_forward_and_the_frozen_detector_stays(
        plain_and_attached):
    plain, model = plain_and_attached
    rh = model.roi_heads
    assert isinstance(rh, CascadeROIHeads) and type(rh).forward is CascadeROIHeads.forward
    # what the head is given in training, and what the cascade's first stage says of the
    # same proposals (the stage that runs on the proposals the mask branch trains on)
    seen: dict[str, object] = {}

    def keep(name, value):  # the first value only; returns None (a hook's output stays)
        seen.setdefault(name, value)

    hooks = [rh.box_predictor[0].register_forward_hook(
        lambda m, i, o: keep("stage0_logits", o[0])),
        rh.maskiou_head.register_forward_hook(lambda m, i, o: keep("score_inputs", i[2]))]
    forward_mask = rh._forward_mask

    def watched_forward_mask(features, instances):
        keep("proposals", list(instances))
        return forward_mask(features, instances)

    rh._forward_mask = watched_forward_mask
    before = {k: v.clone() for k, v in model.state_dict().items() if "maskiou_head" not in k}
    head_before = rh.maskiou_head.predictor.weight.clone()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p is q for p, q in zip(trainable, rh.maskiou_head.parameters()))
    try:
        out = train_step(model)
    finally:
        for h in hooks:
            h.remove()
        del rh._forward_mask
    reference = train_step(plain)
    assert set(out) == set(reference) | {"loss_maskiou"}
    for key, value in reference.items():  # the cascade's own losses, untouched
        assert torch.equal(out[key], value), key
    assert torch.isfinite(out["loss_maskiou"]) and out["loss_maskiou"].item() > 0
    # the head's class-score input of each positive proposal: stage 0's probability of its GT
    # class, in the order of the proposals
    gt = torch.cat([p.gt_classes for p in seen["proposals"]])
    probs = seen["stage0_logits"].softmax(-1)[torch.arange(len(gt)), gt]
    positive = gt < NUM_CLASSES
    assert positive.sum() > 0
    assert torch.allclose(seen["score_inputs"][:, 0], probs[positive])
    opt = torch.optim.SGD(trainable, lr=0.1)
    sum(out.values()).backward()
    opt.step()
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # bit-identical
    assert not torch.equal(rh.maskiou_head.predictor.weight, head_before)


def test_a_cascade_returns_the_final_score_and_its_inputs_on_its_final_boxes(
        plain_and_attached):
    plain, model = plain_and_attached
    plain.eval(), model.eval()
    inputs = [{"image": images(1)[0] * 255}]
    with torch.no_grad():
        (want,) = plain.inference(inputs, do_postprocess=False)
        (got,) = model.inference(inputs, do_postprocess=False)
        model.roi_heads.maskiou_rescore = False
        (same_order,) = model.inference(inputs, do_postprocess=False)
        model.roi_heads.maskiou_rescore = True
    assert len(want) > 0 and len(got) == len(want)
    for f in ("cls_scores", "mask_quality", "maskness"):
        assert got.get(f).shape == (len(got),) and torch.isfinite(got.get(f)).all(), f
    # an unfitted calibration: the final score is cls x quality, re-sorted
    assert torch.allclose(got.scores, got.cls_scores * got.mask_quality)
    assert (got.scores[:-1] >= got.scores[1:]).all()
    # without rescoring: the cascade's own detections (its final stage's boxes, its scores)
    assert torch.equal(same_order.pred_boxes.tensor, want.pred_boxes.tensor)
    assert torch.equal(same_order.cls_scores, want.scores)
    assert torch.equal(same_order.pred_masks, want.pred_masks)
    (rec,) = find_adapter(model).predict(model, [images(1)[0]])
    assert len(rec["boxes"]) == len(want) and {"cls_scores", "mask_quality"} <= set(rec)


def test_a_cascade_that_overrides_forward_mask_is_refused_in_one_line():
    model = cascade_mask_rcnn()
    own = type("OwnMaskCascade", (CascadeROIHeads,), {"_forward_mask": lambda s, f, i: i})
    model.roi_heads.__class__ = own
    with pytest.raises(TypeError, match="OwnMaskCascade overrides _forward_mask") as e:
        attach_maskiou_head(model)
    assert "\n" not in str(e.value)


def test_a_subclass_with_its_own_forward_with_given_boxes_keeps_it_and_trains_the_same():
    """The other way in (``_forward_mask`` replaced, ``_forward_box`` watched) on a standard
    model whose class only adds its own ``forward_with_given_boxes``: in training it computes
    what the standard way computes (the same losses, ``loss_maskiou`` with the same score
    inputs included); at inference the subclass's method runs."""
    from detectron2.modeling.roi_heads import StandardROIHeads
    from test_detectron2 import losses, tiny_detectron2

    class Marked(StandardROIHeads):
        def forward_with_given_boxes(self, features, instances):
            out = super().forward_with_given_boxes(features, instances)
            for inst in out:
                inst.marked = torch.ones(len(inst))
            return out

    standard, own = tiny_detectron2(), tiny_detectron2()
    own.roi_heads.__class__ = Marked
    for model in (standard, own):
        torch.manual_seed(1)  # the same head weights
        attach_maskiou_head(model, score_inputs=2)
    assert type(own.roi_heads).forward is StandardROIHeads.forward
    assert type(own.roi_heads).forward_with_given_boxes is Marked.forward_with_given_boxes
    targets = [gt_instances(), gt_instances(polygons=True)]
    want, got = losses(standard, targets), losses(own, targets)
    assert set(got) == set(want) and "loss_maskiou" in got
    for key, value in want.items():
        assert torch.equal(got[key], value), key
    own.eval()
    with torch.no_grad():
        (inst,) = own.inference([{"image": images(1)[0] * 255}], do_postprocess=False)
    assert len(inst) > 0 and inst.has("marked") and inst.has("mask_quality")
