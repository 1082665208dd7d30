import pytest
import torch
import torchvision
from conftest import empty_target, square_target, tiny_maskrcnn
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.roi_heads import RoIHeads

from maskiou import attach_maskiou_head, find_maskiou_head
from maskiou.models.builders import build_maskrcnn


def images(n=1, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, size, size, generator=g) for _ in range(n)]


def backbones():
    d = torchvision.models.detection
    yield "resnet50_fpn", lambda: d.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=3, min_size=64, max_size=64)
    yield "resnet50_fpn_v2", lambda: d.maskrcnn_resnet50_fpn_v2(
        weights=None, weights_backbone=None, num_classes=3, min_size=64, max_size=64)
    yield "resnet18_fpn", lambda: tiny_maskrcnn(num_classes=3)
    yield "mobilenet_v3", lambda: build_maskrcnn(
        "maskrcnn_mobilenet_v3_large_fpn", 3, norm="bn", min_size=64, max_size=64)


@pytest.mark.parametrize("name,build", list(backbones()), ids=[n for n, _ in backbones()])
def test_every_backbone_trains_and_infers(name, build):
    torch.manual_seed(0)
    model = attach_maskiou_head(build())
    head = find_maskiou_head(model)
    assert head.num_classes == 3 and head.in_channels == 256 and head.roi_size == 14
    model.train()
    losses = model(images(2), [square_target(), empty_target()])
    assert set(losses) >= {"loss_classifier", "loss_mask", "loss_maskiou", "loss_objectness"}
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        out = model(images(2))
    for r in out:
        assert set(r) >= {"boxes", "labels", "scores", "masks", "cls_scores", "mask_quality"}
        assert ((r["mask_quality"] >= 0) & (r["mask_quality"] <= 1)).all()
        torch.testing.assert_close(r["scores"], r["cls_scores"] * r["mask_quality"])
        assert torch.all(r["scores"][:-1] >= r["scores"][1:])


def test_negative_only_batch_has_zero_maskiou_loss(model):
    attach_maskiou_head(model).train()
    losses = model(images(2), [empty_target(), empty_target()])
    assert losses["loss_maskiou"].item() == 0.0 and losses["loss_maskiou"].requires_grad
    assert all(torch.isfinite(v) for v in losses.values())


def test_gradients_reach_head_and_mask_head(model):
    attach_maskiou_head(model).train()
    torch.manual_seed(1)
    losses = model(images(1), [square_target()])
    assert losses["loss_maskiou"].item() > 0
    losses["loss_maskiou"].backward()
    head = model.roi_heads.maskiou_head
    assert head.predictor.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in model.roi_heads.mask_head.parameters())


def test_detach_inputs_keeps_maskiou_loss_out_of_the_detector(model):
    attach_maskiou_head(model, detach_inputs=True).train()
    torch.manual_seed(1)
    model(images(1), [square_target()])["loss_maskiou"].backward()
    assert all(p.grad is None for p in model.roi_heads.mask_head.parameters())
    assert model.roi_heads.maskiou_head.predictor.weight.grad.abs().sum() > 0


def test_frozen_detector_is_bit_identical_after_a_step():
    torch.manual_seed(0)
    bb = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5,
                             norm_layer=nn.BatchNorm2d)
    model = MaskRCNN(bb, num_classes=3, min_size=64, max_size=64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attach_maskiou_head(model, freeze_detector=True)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(trainable) == len(list(model.roi_heads.maskiou_head.parameters()))
    opt = torch.optim.SGD(trainable, lr=0.1, momentum=0.9)
    for _ in range(2):
        losses = model(images(2), [square_target(), square_target(box=(20, 4, 60, 30))])
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k  # weights and BN running stats untouched
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)


def test_frozen_head_trains():
    model = attach_maskiou_head(tiny_maskrcnn(), freeze_detector=True).train()
    head = model.roi_heads.maskiou_head
    w0 = head.predictor.weight.clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    torch.manual_seed(0)
    sum(model(images(1), [square_target()]).values()).backward()
    opt.step()
    assert not torch.equal(head.predictor.weight, w0)


def test_image_with_zero_detections(model):
    model.roi_heads.score_thresh = 1.01  # nothing survives
    attach_maskiou_head(model).eval()
    with torch.no_grad():
        out = model(images(2))
    for r in out:
        assert r["boxes"].shape == (0, 4) and r["mask_quality"].shape == (0,)
        assert r["cls_scores"].shape == (0,) and r["masks"].shape[0] == 0


def test_rescore_outputs_false_keeps_scores(model):
    attach_maskiou_head(model, rescore_outputs=False).eval()
    with torch.no_grad():
        r = model(images(1))[0]
    assert len(r["scores"]) > 0 and torch.equal(r["scores"], r["cls_scores"])


def test_bfloat16_autocast_on_cpu():
    # the narrow synthetic-cpu architecture: bf16 convolutions are slow on CPUs without bf16
    # units, and what is checked here does not depend on the width
    torch.manual_seed(0)
    model = build_maskrcnn("maskrcnn_resnet18_fpn", 4, norm="bn", head_norm="bn",
                           returned_layers=[1, 2, 3], anchor_sizes=[8, 16, 32, 64],
                           fpn_channels=64, mask_head_channels=64, mask_head_convs=2,
                           box_head_dim=256, min_size=64, max_size=64,
                           rpn_post_nms_top_n_train=100, rpn_post_nms_top_n_test=50)
    attach_maskiou_head(model, conv_channels=64, num_convs=2, fc_dim=256).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(images(2), [square_target(), empty_target()])
    assert all(torch.isfinite(v.float()) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        r = model(images(1))[0]
    assert torch.isfinite(r["scores"].float()).all() and torch.isfinite(r["mask_quality"]).all()


@pytest.mark.threads
def test_state_dict_round_trip(model, tmp_path):
    attach_maskiou_head(model).eval()
    torch.save(model.state_dict(), tmp_path / "m.pt")
    other = attach_maskiou_head(tiny_maskrcnn()).eval()
    torch.manual_seed(5)
    nn.init.normal_(other.roi_heads.maskiou_head.predictor.weight)  # differ before loading
    other.load_state_dict(torch.load(tmp_path / "m.pt"))
    with torch.no_grad():
        a, b = model(images(1)), other(images(1))
    for k in ("boxes", "scores", "mask_quality", "masks"):  # same weights: same computation
        assert torch.equal(a[0][k], b[0][k])


def test_unknown_model_and_double_attach(model):
    with pytest.raises(TypeError, match="(?s)for models of other packages.*"
                                        "torchvision-maskrcnn.*adapter="):
        attach_maskiou_head(nn.Linear(2, 2))
    attach_maskiou_head(model)
    with pytest.raises(ValueError, match="already"):
        attach_maskiou_head(model)


def test_coco_predictors_keep_the_rows_of_the_dataset_classes():
    from maskiou.models.builders import _adapt_predictors

    coco = build_maskrcnn("maskrcnn_resnet18_fpn", 91, min_size=64, max_size=64)
    box = coco.roi_heads.box_predictor
    old_cls, old_reg = box.cls_score.weight.clone(), box.bbox_pred.weight.clone()
    old_mask = coco.roi_heads.mask_predictor.mask_fcn_logits.weight.clone()
    _adapt_predictors(coco, 3, {1: 5, 2: 17}, keep=True)
    rh = coco.roi_heads
    assert torch.equal(rh.box_predictor.cls_score.weight, old_cls[[0, 5, 17]])
    assert torch.equal(rh.box_predictor.bbox_pred.weight[4:8], old_reg[20:24])  # class 5's box
    assert torch.equal(rh.mask_predictor.mask_fcn_logits.weight, old_mask[[0, 5, 17]])
    with pytest.raises(ValueError, match="do not map"):
        _adapt_predictors(build_maskrcnn("maskrcnn_resnet18_fpn", 91), 3, {1: 5, 2: 200},
                          keep=True)


@pytest.mark.threads
def test_plain_and_adapted_roi_heads_agree_on_the_detector():
    """Same weights, same seed: the adapter changes nothing torchvision computes."""
    plain = tiny_maskrcnn()
    scored = attach_maskiou_head(tiny_maskrcnn())
    scored.load_state_dict(plain.state_dict(), strict=False)
    for m in (plain, scored):
        m.train()
    torch.manual_seed(3)
    a = plain(images(2), [square_target(), empty_target()])
    torch.manual_seed(3)
    b = scored(images(2), [square_target(), empty_target()])
    for k, v in a.items():
        assert torch.equal(v, b[k]), k
    scored.roi_heads.maskiou_rescore = False
    plain.eval(), scored.eval()
    with torch.no_grad():
        pa, pb = plain(images(1)), scored(images(1))
    for k in ("boxes", "labels", "scores", "masks"):
        assert torch.equal(pa[0][k], pb[0][k]), k
    assert torch.equal(pb[0]["cls_scores"], pa[0]["scores"])


def test_roi_heads_refuse_int_boxes_and_int32_labels_as_torchvision_does(model):
    roi_heads = attach_maskiou_head(model).roi_heads.train()
    boxes, labels = torch.tensor([[0.0, 0, 8, 8]]), torch.tensor([1])
    with pytest.raises(TypeError, match="^target boxes must be of float type$"):
        roi_heads({}, [], [], [{"boxes": boxes.long(), "labels": labels}])
    with pytest.raises(TypeError, match="^target labels must be of int64 type$"):
        roi_heads({}, [], [], [{"boxes": boxes, "labels": labels.int()}])


def test_training_needs_targets(model):
    roi_heads = attach_maskiou_head(model).roi_heads.train()
    with pytest.raises(ValueError, match="^targets are required in training mode$"):
        roi_heads({}, [], [], None)


def test_score_inputs_are_the_class_probability_and_maskness_in_training_and_inference(model):
    from maskiou import maskness

    rh = attach_maskiou_head(model, score_inputs=2).roi_heads
    rh.score_thresh = 0.0
    head, seen, captured = rh.maskiou_head, [], {}
    forward = head.forward
    head.forward = lambda f, p, s=None: (seen.append((p, s)), forward(f, p, s))[1]
    rh.box_predictor.register_forward_hook(lambda m, i, o: captured.update(logits=o[0]))
    select = rh.select_training_samples
    rh.select_training_samples = lambda p, t: captured.setdefault("samples", select(p, t))
    model.train()
    model(images(1), [square_target()])
    probs, scores = seen[-1]
    labels = captured["samples"][2][0]
    pos = torch.where(labels > 0)[0]
    assert len(pos) > 0
    expected = captured["logits"].softmax(1)[pos, labels[pos]]
    torch.testing.assert_close(scores[:, 0], expected)
    torch.testing.assert_close(scores[:, 1], maskness(probs))
    model.eval()
    with torch.no_grad():
        out = model(images(1))[0]
    probs, scores = seen[-1]
    assert len(out["cls_scores"]) > 0
    assert sorted(scores[:, 0].tolist()) == sorted(out["cls_scores"].tolist())
    torch.testing.assert_close(scores[:, 1], maskness(probs))
    torch.testing.assert_close(out["scores"], out["cls_scores"] * out["mask_quality"])


def test_loss_weight_scales_the_maskiou_loss():
    losses = []
    for weight in (1.0, 2.0):
        model = attach_maskiou_head(tiny_maskrcnn(), loss_weight=weight).train()
        torch.manual_seed(1)
        losses.append(model(images(1), [square_target()])["loss_maskiou"])
    assert losses[0].item() > 0
    torch.testing.assert_close(losses[1], 2 * losses[0])


def constant_scores_class() -> type:
    """A user's RoIHeads overriding something unrelated to masks: every detection scores 0.5.
    A new class at each call, so that the adapter makes its scoring class in every run of the
    test (it keeps one per class: a module-level class would hit that cache after a first run
    in the same process, as under mutmut)."""

    class ConstantScores(RoIHeads):
        def postprocess_detections(self, class_logits, box_regression, proposals, image_shapes):
            boxes, scores, labels = super().postprocess_detections(class_logits, box_regression,
                                                                   proposals, image_shapes)
            return boxes, [torch.full_like(s, 0.5) for s in scores], labels

    return ConstantScores


def test_roi_heads_subclass_keeps_its_override_pickles_and_shares_one_class():
    import pickle

    ConstantScores = constant_scores_class()
    models = []
    for _ in range(2):
        m = tiny_maskrcnn(box_score_thresh=0.0)
        m.roi_heads.__class__ = ConstantScores
        models.append(attach_maskiou_head(m).eval())
    cls = type(models[0].roi_heads)
    assert cls is type(models[1].roi_heads) and issubclass(cls, ConstantScores)
    assert cls.__name__.startswith("MaskScoringConstantScores")
    with torch.no_grad():
        out = models[0](images(1))[0]
    assert len(out["cls_scores"]) > 0 and torch.all(out["cls_scores"] == 0.5)
    copy = pickle.loads(pickle.dumps(models[0]))
    assert type(copy.roi_heads) is cls


def test_roi_heads_that_are_not_torchvisions_or_replace_its_forward_are_refused_by_name():
    class OwnHeads(torch.nn.Module):
        pass

    class OwnForward(RoIHeads):
        def forward(self, features, proposals, image_shapes, targets=None):
            return super().forward(features, proposals, image_shapes, targets)

    m = tiny_maskrcnn()
    m.roi_heads = OwnHeads()
    with pytest.raises(TypeError) as e:
        attach_maskiou_head(m)
    assert str(e.value) == ("attach_maskiou_head: model.roi_heads is a OwnHeads, not "
                            "torchvision's RoIHeads; write an adapter for it "
                            "(see examples/custom_adapter.py)")
    m = tiny_maskrcnn()
    m.roi_heads.__class__ = OwnForward
    with pytest.raises(TypeError) as e:
        attach_maskiou_head(m)
    assert str(e.value) == ("attach_maskiou_head: OwnForward overrides RoIHeads.forward, which "
                            "the MaskIoU branch replaces; write an adapter for it "
                            "(see examples/custom_adapter.py)")


def test_mask_rcnns_the_branch_cannot_serve_are_refused_with_one_line_each():
    def refusal(edit) -> str:
        m = tiny_maskrcnn()
        edit(m)
        with pytest.raises(TypeError) as e:
            attach_maskiou_head(m)
        return str(e.value)

    def no_mask(m):
        m.roi_heads.mask_head = None

    def keypoints(m):
        rh = m.roi_heads
        rh.keypoint_roi_pool, rh.keypoint_head, rh.keypoint_predictor = nn.Identity(), \
            nn.Identity(), nn.Identity()

    def no_out_channels(m):
        del m.backbone.out_channels

    assert refusal(no_mask) == "attach_maskiou_head: this MaskRCNN has no mask branch"
    assert refusal(keypoints) == "attach_maskiou_head: keypoint branches are not supported"
    assert refusal(no_out_channels) == "attach_maskiou_head: model.backbone has no out_channels"


def test_head_defaults_read_the_mask_pool_size_as_tuple_int_or_default_14():
    from maskiou_integrations.torchvision_maskrcnn import TorchvisionMaskRCNNAdapter

    class Pool(nn.Module):  # a user's own mask RoI pool; only its output_size is read
        pass

    adapter = TorchvisionMaskRCNNAdapter()
    seen = []
    for size in ((9, 9), 9, None):
        m = tiny_maskrcnn(num_classes=6)
        m.roi_heads.mask_roi_pool = Pool()
        if size is not None:
            m.roi_heads.mask_roi_pool.output_size = size
        seen.append(adapter.head_defaults(m))
    assert [d["roi_size"] for d in seen] == [9, 9, 14]
    assert seen[0]["in_channels"] == 256 and seen[0]["num_classes"] == 6
