import math
import warnings

import pytest
import torch

from maskiou import MaskIoUHead, mask_iou_loss, maskness, rescore
from maskiou.branch import (
    maskiou_outputs,
    maskiou_training_inputs,
    maskiou_training_loss,
    predicted_mask_probs,
    select_masks,
)
from maskiou.scoring import add_maskiou_outputs


def paper_param_count(num_classes: int) -> int:
    convs = (257 * 256 * 9 + 256) + 3 * (256 * 256 * 9 + 256)
    fcs = (256 * 7 * 7 * 1024 + 1024) + (1024 * 1024 + 1024) + (1024 * num_classes + num_classes)
    return convs + fcs


@pytest.mark.parametrize("num_classes", [81, 5])
def test_default_head_is_the_paper_architecture(num_classes):
    head = MaskIoUHead(num_classes=num_classes)
    assert sum(p.numel() for p in head.parameters()) == paper_param_count(num_classes)
    assert head.convs[-1].stride == (2, 2) and all(c.stride == (1, 1) for c in head.convs[:-1])
    out = head(torch.randn(3, 256, 14, 14), torch.rand(3, 28, 28))
    assert out.shape == (3, num_classes)


@pytest.mark.parametrize("fusion,first", [("concat", 257), ("multiply", 256), ("mask", 1),
                                          ("roi", 256)])
def test_fusion_options_of_table_4(fusion, first):
    head = MaskIoUHead(num_classes=3, fusion=fusion)
    assert head.convs[0].in_channels == first
    x = head.fuse(torch.ones(2, 256, 14, 14), torch.full((2, 28, 28), 0.5))
    assert x.shape[1] == first
    if fusion == "multiply":
        assert torch.all(x == 0.5)
    if fusion == "concat":
        assert torch.all(x[:, 256] == 0.5)


def test_mask_is_max_pooled_2x2():
    head = MaskIoUHead(num_classes=2, fusion="mask")
    probs = torch.zeros(1, 28, 28)
    probs[0, 1, 1] = 0.9  # inside the first 2x2 cell
    x = head.fuse(torch.zeros(1, 256, 14, 14), probs)
    assert x[0, 0, 0, 0].item() == pytest.approx(0.9) and x.sum().item() == pytest.approx(0.9)


def test_narrow_head_and_bad_fusion():
    head = MaskIoUHead(64, 4, conv_channels=32, num_convs=2, fc_dim=128)
    assert head(torch.randn(2, 64, 14, 14), torch.rand(2, 28, 28)).shape == (2, 4)
    with pytest.raises(ValueError, match="fusion"):
        MaskIoUHead(fusion="add")


def test_loss_value_on_gt_class_and_positive_targets_only():
    pred = torch.tensor([[0.0, 0.5, 0.9], [0.0, 0.2, 0.1], [1.0, 1.0, 1.0]], requires_grad=True)
    labels = torch.tensor([1, 2, 1])
    targets = torch.tensor([0.7, 0.4, 0.0])  # third RoI: target 0, ignored
    loss = mask_iou_loss(pred, labels, targets)
    assert loss.item() == pytest.approx(((0.5 - 0.7) ** 2 + (0.1 - 0.4) ** 2) / 2)
    assert mask_iou_loss(pred, labels, targets, weight=2.0).item() == pytest.approx(2 * loss.item())
    loss.backward()
    assert pred.grad[2].abs().sum() == 0 and pred.grad[0, 1] != 0


def test_loss_is_exact_zero_in_graph_without_positive_targets():
    pred = torch.randn(3, 4, requires_grad=True)
    loss = mask_iou_loss(pred, torch.tensor([1, 2, 3]), torch.zeros(3))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.all(pred.grad == 0)
    empty = mask_iou_loss(torch.zeros(0, 4, requires_grad=True), torch.zeros(0).long(),
                          torch.zeros(0))
    assert empty.item() == 0.0 and empty.requires_grad


def test_loss_of_one_roi_is_its_squared_error_and_empty_is_zero_in_graph():
    pred = torch.tensor([[0.1, 0.4]], requires_grad=True)
    loss = mask_iou_loss(pred, torch.tensor([1]), torch.tensor([0.9]))
    assert loss.item() == pytest.approx(0.25)
    empty = mask_iou_loss(torch.zeros(0, 2, requires_grad=True), torch.zeros(0).long(),
                          torch.zeros(0), weight=3.0)
    assert empty.item() == 0.0 and empty.requires_grad and empty.grad_fn is not None


def test_rescore_clamps_the_iou_and_keeps_the_dtype():
    out = rescore(torch.tensor([0.8, 0.5, 0.9]), torch.tensor([0.5, 1.3, -0.2]))
    assert out.tolist() == pytest.approx([0.4, 0.5, 0.0])
    half = rescore(torch.tensor([0.5], dtype=torch.float16), torch.tensor([0.5]))
    assert half.dtype == torch.float16 and half.item() == 0.25


def test_maskness_of_a_constant_0_8_mask_is_0_8():
    assert maskness(torch.full((1, 28, 28), 0.8)).tolist() == pytest.approx([0.8])


def test_maskness_without_a_pixel_above_half_is_exactly_0_not_nan():
    out = maskness(torch.tensor([[[0.5, 0.2], [0.0, 0.49]]]))
    assert out.tolist() == [0.0]


def test_maskness_averages_only_the_pixels_above_half():
    # pixels 0.9, 0.7 and 0.6 are in the mask; 0.5 (not > 0.5), 0.4 and 0.1 are not
    probs = torch.tensor([[[0.9, 0.7, 0.6], [0.5, 0.4, 0.1]]])
    assert maskness(probs).item() == pytest.approx((0.9 + 0.7 + 0.6) / 3)
    assert maskness(probs, threshold=0.65).item() == pytest.approx(0.8)
    one_pixel = torch.zeros(4, 4)
    one_pixel[2, 1] = 0.9
    batch = maskness(torch.stack([torch.full((4, 4), 0.75), torch.zeros(4, 4), one_pixel]))
    assert batch.tolist() == pytest.approx([0.75, 0.0, 0.9])  # each mask over its own area


def test_output_fields_and_rescored_order():
    r = {"scores": torch.tensor([0.9, 0.8]), "boxes": torch.tensor([[0.0, 0, 1, 1], [1, 1, 2, 2]]),
         "labels": torch.tensor([1, 2]), "image_id": torch.tensor(7), "other": torch.arange(3)}
    add_maskiou_outputs(r, torch.tensor([0.5, 1.0]), torch.tensor([0.7, 0.6]),
                        rescore_outputs=True)
    assert r["scores"].tolist() == pytest.approx([0.8, 0.45])  # re-sorted, highest first
    assert r["labels"].tolist() == [2, 1] and r["cls_scores"].tolist() == pytest.approx([0.8, 0.9])
    assert r["mask_quality"].tolist() == [1.0, 0.5]
    assert r["maskness"].tolist() == pytest.approx([0.6, 0.7])
    assert r["boxes"].tolist() == [[1, 1, 2, 2], [0, 0, 1, 1]]
    assert r["image_id"].item() == 7 and r["other"].tolist() == [0, 1, 2]  # not per detection


def test_output_fields_without_rescoring_keep_order_and_scores():
    r = {"scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([1, 2])}
    add_maskiou_outputs(r, torch.tensor([0.1, 1.0]), torch.tensor([0.7, 0.6]),
                        rescore_outputs=False)
    assert r["scores"].tolist() == pytest.approx([0.9, 0.8])
    assert r["labels"].tolist() == [1, 2]
    assert r["mask_quality"].tolist() == pytest.approx([0.1, 1.0])


def test_under_onnx_tracing_the_order_is_by_score_too(monkeypatch):
    monkeypatch.setattr(torch.jit, "is_tracing", lambda: True)  # the TopK path of the export
    r = {"scores": torch.tensor([0.9, 0.8, 0.5]), "labels": torch.tensor([1, 2, 3])}
    add_maskiou_outputs(r, torch.tensor([0.25, 1.0, 0.5]), torch.zeros(3), rescore_outputs=True)
    assert r["scores"].tolist() == pytest.approx([0.8, 0.25, 0.225])
    assert r["labels"].tolist() == [2, 3, 1]


def test_inference_outputs_clamp_the_iou_and_split_per_image():
    pred = torch.tensor([[9.0, -0.2], [1.3, 9.0], [9.0, 0.4]])
    probs = torch.stack([torch.full((28, 28), 0.75), torch.zeros(28, 28), torch.ones(28, 28)])
    ious, mk = maskiou_outputs(pred, probs, torch.tensor([1, 0, 1]), [2, 1])
    assert [x.tolist() for x in ious] == [[0.0, 1.0], pytest.approx([0.4])]
    assert [x.tolist() for x in mk] == [[0.75, 0.0], [1.0]]


def test_predicted_probs_of_no_image_are_empty():
    probs, labels = predicted_mask_probs(torch.zeros(0, 3, 28, 28), [])
    assert probs.shape == (0, 28, 28) and labels.shape == (0,) and labels.dtype == torch.int64


def test_ties_keep_the_detector_order():
    r = {"scores": torch.tensor([1.0, 0.5, 0.25]), "labels": torch.tensor([1, 2, 3])}
    add_maskiou_outputs(r, torch.tensor([0.25, 0.5, 1.0]), torch.zeros(3), rescore_outputs=True)
    assert r["scores"].tolist() == [0.25, 0.25, 0.25]
    assert r["labels"].tolist() == [1, 2, 3]  # exact ties: the detector's order stays


def test_score_inputs_reach_the_head():
    torch.manual_seed(0)
    head = MaskIoUHead(8, 3, conv_channels=8, num_convs=2, fc_dim=16, score_inputs=2)
    x, p = torch.rand(2, 8, 14, 14), torch.rand(2, 28, 28)
    a = head(x, p, torch.tensor([[0.9, 0.8], [0.9, 0.8]]))
    b = head(x, p, torch.tensor([[0.1, 0.2], [0.1, 0.2]]))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError) as e:
        head(x, p)
    assert str(e.value) == "this MaskIoU head needs its score inputs"
    one = MaskIoUHead(8, 3, conv_channels=8, num_convs=2, fc_dim=16, score_inputs=1)
    # float64 scores (from numpy, say) meet a float32 head: converted, not promoted
    assert one(x, p, torch.rand(2, 1, dtype=torch.float64)).dtype == torch.float32
    plain = MaskIoUHead(8, 3, conv_channels=8, num_convs=2, fc_dim=16)  # score_inputs=0
    with pytest.raises(ValueError) as e:
        plain(x, p, torch.zeros(2, 2))
    assert str(e.value) == ("this MaskIoU head has no score inputs (score_inputs=0); pass "
                            "scores=None")
    sig = MaskIoUHead(8, 3, conv_channels=8, num_convs=2, fc_dim=16, output="sigmoid")
    out = sig(x, p)
    assert ((out > 0) & (out < 1)).all()


def test_light_head_has_a_1x1_reduction_and_the_paper_head_has_none():
    light = MaskIoUHead(256, 81, reduce_channels=32, conv_channels=32, num_convs=2, fc_dim=256)
    assert light.reduce.kernel_size == (1, 1) and light.reduce.in_channels == 257
    assert light.convs[0].in_channels == 32
    assert light(torch.randn(2, 256, 14, 14), torch.rand(2, 28, 28)).shape == (2, 81)
    assert MaskIoUHead().reduce is None


class ConstantHead(torch.nn.Module):
    """Predicts 0.5 for every class, through the RoI features and the mask probabilities."""

    score_inputs = 0

    def forward(self, features: torch.Tensor, probs: torch.Tensor,
                scores: torch.Tensor | None = None) -> torch.Tensor:
        per_roi = 0.5 + 0.0 * (features.mean((1, 2, 3)) + probs.mean((1, 2)))
        return per_roi[:, None].expand(-1, 3)


def one_gt_batch(requires_grad: bool = True):
    """One image, one 20x20 GT square; two RoIs: its own box predicted all in (target 729/784,
    as in test_targets) and a box right of the image (target 0)."""
    gt = torch.zeros(1, 64, 64, dtype=torch.uint8)
    gt[0, 10:30, 10:30] = 1
    logits = torch.full((2, 3, 28, 28), 5.0, requires_grad=requires_grad)
    features = torch.ones(2, 4, 14, 14, requires_grad=requires_grad)
    boxes = torch.tensor([[10.0, 10, 30, 30], [70.0, 0, 90, 20]])
    return features, logits, [torch.tensor([2, 1])], [boxes], [gt], [torch.tensor([0, 0])]


def test_training_inputs_pick_the_gt_class_and_give_targets_729_784_and_0():
    _, logits, labels, boxes, gts, idxs = one_gt_batch()
    probs, targets, all_labels = maskiou_training_inputs(logits, labels, boxes, gts, idxs)
    assert targets.tolist() == pytest.approx([729 / 784, 0.0]) and all_labels.tolist() == [2, 1]
    assert probs.shape == (2, 28, 28) and torch.all(probs == torch.sigmoid(torch.tensor(5.0)))


def test_training_inputs_of_an_empty_batch_are_empty():
    probs, targets, all_labels = maskiou_training_inputs(torch.zeros(0, 3, 28, 28), [], [], [],
                                                         [])
    assert probs.shape == (0, 28, 28) and targets.shape == (0,) and all_labels.shape == (0,)


def test_training_loss_is_the_squared_error_of_positive_rois_weight_1_by_default():
    features, logits, labels, boxes, gts, idxs = one_gt_batch()
    loss = maskiou_training_loss(ConstantHead(), features, logits, labels, boxes, gts, idxs)
    expected = (0.5 - 729 / 784) ** 2  # the one positive RoI; the other has target 0
    assert loss.item() == pytest.approx(expected)
    doubled = maskiou_training_loss(ConstantHead(), features, logits, labels, boxes, gts, idxs,
                                    loss_weight=2.0)
    assert doubled.item() == pytest.approx(2 * expected)


def test_training_loss_reaches_the_features_unless_inputs_are_detached():
    features, logits, labels, boxes, gts, idxs = one_gt_batch()
    maskiou_training_loss(ConstantHead(), features, logits, labels, boxes, gts, idxs).backward()
    assert features.grad is not None and logits.grad is not None  # end to end by default
    features, logits, labels, boxes, gts, idxs = one_gt_batch()
    head = MaskIoUHead(num_classes=3, in_channels=4)
    loss = maskiou_training_loss(head, features, logits, labels, boxes, gts, idxs,
                                 detach_inputs=True)
    loss.backward()
    assert features.grad is None and logits.grad is None
    assert all(p.grad is not None for p in head.parameters())


def test_select_masks_takes_the_labels_class_or_the_one_class_agnostic_mask():
    logits = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    picked = select_masks(logits, torch.tensor([2, 0]))
    assert torch.equal(picked, torch.stack([logits[0, 2], logits[1, 0]]))
    agnostic = logits[:, 1:2]  # K == 1: every label uses it
    assert torch.equal(select_masks(agnostic, torch.tensor([2, 5])), logits[:, 1])


def test_head_defaults_are_the_papers_and_bad_arguments_get_one_line():
    head = MaskIoUHead()
    assert (head.in_channels, head.num_classes, head.roi_size, head.mask_size, head.mask_pool,
            head.predictor.out_features, len(head.convs)) == (256, 81, 14, 28, 2, 81, 4)
    one = MaskIoUHead(8, 3, num_convs=1, conv_channels=4, fc_dim=8)  # one convolution is fine
    assert len(one.convs) == 1
    assert one(torch.rand(2, 8, 14, 14), torch.rand(2, 28, 28)).shape == (2, 3)
    for kwargs, message in (
            ({"num_convs": 0}, "HeadConfig.num_convs: 0 is outside [1, inf]"),
            ({"output": "relu"}, "HeadConfig.output: 'relu' is not one of 'linear', 'sigmoid'")):
        with pytest.raises(ValueError) as e:
            MaskIoUHead(**kwargs)
        assert str(e.value) == message


def test_fuse_pools_the_mask_with_a_fixed_kernel_or_adaptively_onto_the_roi_grid():
    roi = torch.zeros(1, 2, 4, 4)
    # mask 8 = 2 x RoI 4: a fixed 2 x 2 max pool; a single 1 at (5, 2) lands in cell (2, 1)
    head = MaskIoUHead(2, 3, roi_size=4, conv_channels=4, fc_dim=8)
    assert head.mask_pool == 2
    m8 = torch.zeros(1, 8, 8)
    m8[0, 5, 2] = 1.0
    fixed = torch.zeros(4, 4)
    fixed[2, 1] = 1.0
    assert torch.equal(head.fuse(roi, m8)[0, 2], fixed)
    assert torch.equal(head.fuse(roi, m8)[0, :2], roi[0])
    # a float64 mask meets float32 features: converted, not promoted
    assert head.fuse(roi, m8.double()).dtype == torch.float32
    # mask 6 over RoI 4 is no multiple: adaptive windows [0,2) [1,3) [3,5) [4,6), so a 1 at
    # (2, 4) is in row window 1 and column windows 2 and 3
    m6 = torch.zeros(1, 6, 6)
    m6[0, 2, 4] = 1.0
    adaptive = torch.zeros(4, 4)
    adaptive[1, 2] = adaptive[1, 3] = 1.0
    six = MaskIoUHead(2, 3, roi_size=4, mask_size=6, conv_channels=4, fc_dim=8)
    assert six.mask_pool == 0
    assert torch.equal(six.fuse(roi, m6)[0, 2], adaptive)
    # a mask of another size than the head's is pooled adaptively too
    assert torch.equal(head.fuse(roi, m6)[0, 2], adaptive)


def test_mask_features_are_the_learned_convolution_of_the_full_mask_beside_the_pooled_one():
    torch.manual_seed(0)
    head = MaskIoUHead(2, 3, roi_size=4, mask_features=1, conv_channels=4, fc_dim=8)
    roi, m = torch.rand(1, 2, 4, 4), torch.rand(1, 8, 8)
    x = head.fuse(roi, m)
    assert x.shape == (1, 2 + 1 + 1, 4, 4)
    # the same convolution of the same input: exact
    assert torch.equal(x[:, 3:], torch.relu(head.mask_conv(m[:, None])))
    assert x[:, 3:].abs().sum() > 0
    assert head(roi, m).shape == (1, 3)
    conv = head.mask_conv  # the documented 3x3 stride-2 convolution: 8 x 8 -> 4 x 4
    assert (conv.kernel_size, conv.stride, conv.padding) == ((3, 3), (2, 2), (1, 1))
    with pytest.raises(ValueError) as e:
        MaskIoUHead(2, 3, roi_size=4, mask_size=6, mask_features=1)
    assert str(e.value) == "mask_features needs masks of twice the RoI size"


def test_the_boundary_band_is_the_ring_one_pixel_either_side_of_the_mask_edge():
    from maskiou.head import boundary_band

    m = torch.zeros(1, 1, 6, 6)
    m[0, 0, 2:4, 2:4] = 0.9  # a 2 x 2 square: its band is the 4 x 4 square around it, whole
    band = torch.zeros(6, 6)
    band[1:5, 1:5] = 1.0
    assert torch.equal(boundary_band(m)[0, 0], band)
    m[0, 0, 2:4, 2:4] = 0.4  # below 0.5: no mask, no band
    assert not boundary_band(m).any()
    big = torch.zeros(1, 1, 7, 7)
    big[0, 0, 1:6, 1:6] = 1.0  # a 5 x 5 square: its 3 x 3 core is off the band
    out = boundary_band(big)[0, 0]
    assert out[3, 3] == 0 and out[2, 2] == 0 and out[0, 0] == 1 and out[1, 1] == 1
    assert out.sum() == 49 - 9  # all but the 3 x 3 erosion


def test_the_boundary_band_channel_is_the_pooled_band_after_the_other_inputs():
    torch.manual_seed(0)
    head = MaskIoUHead(2, 3, roi_size=4, boundary_band=True, conv_channels=4, fc_dim=8)
    roi, m = torch.rand(1, 2, 4, 4), torch.zeros(1, 8, 8)
    m[0, 2:4, 2:4] = 1.0  # band rows/cols 1..4 of 8 -> pooled 2 x 2 cells 0..2
    x = head.fuse(roi, m)
    assert x.shape == (1, 2 + 1 + 1, 4, 4)
    band = torch.zeros(4, 4)
    band[:3, :3] = 1.0
    assert torch.equal(x[0, 3], band)
    assert head.convs[0].in_channels == 4
    assert head(roi, m).shape == (1, 3)


def test_mask_logits_enter_as_the_clamped_logit_of_the_pooled_probability():
    from maskiou.head import MASK_LOGIT_CLAMP

    head = MaskIoUHead(2, 3, roi_size=2, mask_input="logits", conv_channels=4, fc_dim=8)
    m = torch.tensor([[[0.5, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0],
                       [0.0, 0.0, 0.0, 0.0], [0.0, 0.25, 0.0, 0.0]]])
    pooled = head.fuse(torch.zeros(1, 2, 2, 2), m)[0, 2]
    # max of logits = logit of the max: 0.5 -> 0, 1 -> +8 (clamped), 0 -> -8, 0.25 -> -ln 3
    assert MASK_LOGIT_CLAMP == 8.0
    assert pooled[0, 0] == 0.0 and pooled[0, 1] == 8.0 and pooled[1, 1] == -8.0
    assert pooled[1, 0].item() == pytest.approx(-math.log(3.0))
    probs = MaskIoUHead(2, 3, roi_size=2, conv_channels=4, fc_dim=8)
    assert probs.fuse(torch.zeros(1, 2, 2, 2), m)[0, 2, 0, 1] == 1.0  # the default: probs


def test_heads_with_the_new_inputs_script_and_export_to_the_same_output():
    import io

    torch.manual_seed(0)
    head = MaskIoUHead(4, 3, roi_size=4, conv_channels=4, fc_dim=8, boundary_band=True,
                       mask_input="logits").eval()
    roi, m = torch.randn(2, 4, 4, 4), torch.rand(2, 8, 8)
    m[0] = 1.0  # logits clamped
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(head)
    assert torch.equal(scripted(roi, m), head(roi, m))
    ort = pytest.importorskip("onnxruntime")
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(head, (roi, m), buf, dynamo=False, input_names=["f", "m"],
                          dynamic_axes={"f": {0: "n"}, "m": {0: "n"}})
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"f": roi[:1].numpy(), "m": m[:1].numpy()})
    torch.testing.assert_close(torch.from_numpy(out), head(roi[:1], m[:1]).detach())


def test_initialization_is_he_fan_out_for_convs_bounded_uniform_for_fcs_and_small_predictor():
    import math

    torch.manual_seed(0)
    head = MaskIoUHead(16, 50, roi_size=4, conv_channels=8, num_convs=2, fc_dim=64,
                       reduce_channels=4, mask_features=8)
    # convolutions: He normal over fan_out = out channels x kernel area, zero bias (fan_in
    # would give 0.47 and 0.28 for the first two)
    for conv, fan_out in ((head.mask_conv, 8 * 9), (head.reduce, 4), (head.convs[0], 8 * 9)):
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.25)
        assert not conv.bias.any()
    # hidden FCs: Kaiming uniform with a = 1, so bounded by sqrt(3 / fan_in), zero bias
    for fc in (head.fc1, head.fc2):
        bound = math.sqrt(3 / fc.in_features)
        assert 0.95 * bound < fc.weight.abs().max().item() <= bound
        assert not fc.bias.any()
    assert head.predictor.weight.std().item() == pytest.approx(0.01, rel=0.15)
    assert not head.predictor.bias.any()
    assert MaskIoUHead(8, 3, reduce_channels=1).reduce.out_channels == 1
