import pytest
import torch

from maskiou import MaskIoUHead, mask_iou_loss, maskness, rescore
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
    batch = maskness(torch.stack([torch.full((4, 4), 0.75), torch.zeros(4, 4)]))
    assert batch.tolist() == pytest.approx([0.75, 0.0])


def test_output_fields_and_rescored_order():
    r = {"scores": torch.tensor([0.9, 0.8]), "boxes": torch.tensor([[0.0, 0, 1, 1], [1, 1, 2, 2]]),
         "labels": torch.tensor([1, 2])}
    add_maskiou_outputs(r, torch.tensor([0.5, 1.0]), torch.tensor([0.7, 0.6]),
                        rescore_outputs=True)
    assert r["scores"].tolist() == pytest.approx([0.8, 0.45])  # re-sorted, highest first
    assert r["labels"].tolist() == [2, 1] and r["cls_scores"].tolist() == pytest.approx([0.8, 0.9])
    assert r["mask_ious"].tolist() == [1.0, 0.5]
    assert r["maskness"].tolist() == pytest.approx([0.6, 0.7])
    assert r["boxes"].tolist() == [[1, 1, 2, 2], [0, 0, 1, 1]]


def test_output_fields_without_rescoring_keep_order_and_scores():
    r = {"scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([1, 2])}
    add_maskiou_outputs(r, torch.tensor([0.1, 1.0]), torch.tensor([0.7, 0.6]),
                        rescore_outputs=False)
    assert r["scores"].tolist() == pytest.approx([0.9, 0.8])
    assert r["labels"].tolist() == [1, 2] and r["mask_ious"].tolist() == pytest.approx([0.1, 1.0])


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
    with pytest.raises(ValueError, match="score inputs"):
        head(x, p)
    sig = MaskIoUHead(8, 3, conv_channels=8, num_convs=2, fc_dim=16, output="sigmoid")
    out = sig(x, p)
    assert ((out > 0) & (out < 1)).all()


def test_light_head_has_a_1x1_reduction_and_the_paper_head_has_none():
    light = MaskIoUHead(256, 81, reduce_channels=32, conv_channels=32, num_convs=2, fc_dim=256)
    assert light.reduce.kernel_size == (1, 1) and light.reduce.in_channels == 257
    assert light.convs[0].in_channels == 32
    assert light(torch.randn(2, 256, 14, 14), torch.rand(2, 28, 28)).shape == (2, 81)
    assert MaskIoUHead().reduce is None
