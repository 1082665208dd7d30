import sys
from pathlib import Path

import pytest
import torch

from maskiou import mask_iou_targets
from maskiou.targets import gt_area_in_boxes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from speed import mask_iou_targets_reference  # noqa: E402


def square(h=64, w=64, box=(10, 10, 30, 30)):
    m = torch.zeros(1, h, w, dtype=torch.uint8)
    x1, y1, x2, y2 = box
    m[0, y1:y2, x1:x2] = 1
    return m


def test_left_half_proposal_all_positive_is_half():
    gt = square()
    proposals = torch.tensor([[10.0, 10.0, 20.0, 30.0]])
    iou = mask_iou_targets(torch.full((1, 28, 28), 5.0), proposals, gt, torch.tensor([0]))
    assert iou.item() == pytest.approx(0.5, abs=0.02)


def test_all_negative_logits_is_zero():
    iou = mask_iou_targets(torch.full((1, 28, 28), -5.0), torch.tensor([[10.0, 10, 20, 30]]),
                           square(), torch.tensor([0]))
    assert iou.item() == 0.0


def test_proposal_equal_to_gt_box_is_one():
    iou = mask_iou_targets(torch.full((1, 28, 28), 5.0), torch.tensor([[10.0, 10, 30, 30]]),
                           square(), torch.tensor([0]))
    assert iou.item() == pytest.approx(1.0, abs=0.08)


def test_probability_threshold_is_logit_zero_not_half():
    # logits of 0.3 are probabilities of 0.57: inside the mask. Thresholding raw logits at 0.5
    # (a known bug) would call them background and give 0.
    iou = mask_iou_targets(torch.full((1, 28, 28), 0.3), torch.tensor([[10.0, 10, 30, 30]]),
                           square(), torch.tensor([0]))
    assert iou.item() > 0.9


def test_half_predicted_mask_inside_gt_box():
    logits = torch.full((1, 28, 28), -5.0)
    logits[:, :, :14] = 5.0  # left half of the grid
    iou = mask_iou_targets(logits, torch.tensor([[10.0, 10, 30, 30]]), square(),
                           torch.tensor([0]))
    assert iou.item() == pytest.approx(0.5, abs=0.04)


def test_zero_area_gt_is_finite():
    gt = torch.zeros(1, 64, 64, dtype=torch.uint8)
    iou = mask_iou_targets(torch.full((2, 28, 28), 5.0), torch.tensor([[10.0, 10, 30, 30]] * 2),
                           gt, torch.tensor([0, 0]))
    assert torch.isfinite(iou).all() and (iou == 0).all()


def test_matched_idxs_pick_their_gt_and_empty_input():
    gt = torch.cat([square(box=(0, 0, 8, 8)), square(box=(10, 10, 30, 30))])
    proposals = torch.tensor([[10.0, 10, 20, 30], [10.0, 10, 30, 30]])
    iou = mask_iou_targets(torch.full((2, 28, 28), 5.0), proposals, gt, torch.tensor([1, 1]))
    assert iou.tolist() == pytest.approx([0.5, 1.0], abs=0.08)
    empty = mask_iou_targets(torch.zeros(0, 28, 28), torch.zeros(0, 4), gt, torch.zeros(0).long())
    assert empty.shape == (0,)


def test_gt_area_in_boxes_counts_pixels():
    gt = square(box=(10, 10, 30, 30))
    inside, total = gt_area_in_boxes(gt, torch.tensor([[0.0, 0, 20, 64], [25.2, 0, 100, 100]]),
                                     torch.tensor([0, 0]))
    assert inside.tolist() == [200.0, 100.0]  # 10x20 pixels; box from x=25 (rounded) to 30
    assert total.tolist() == [400.0, 400.0]


def test_vectorized_matches_reference_on_random_inputs():
    g = torch.Generator().manual_seed(0)
    gt = (torch.rand(5, 80, 120, generator=g) > 0.6).to(torch.uint8)
    xy = torch.rand(64, 2, generator=g) * torch.tensor([100.0, 60.0])
    wh = torch.rand(64, 2, generator=g) * 40 + 1
    proposals = torch.cat([xy, xy + wh], 1)
    logits = torch.randn(64, 28, 28, generator=g)
    idx = torch.randint(0, 5, (64,), generator=g)
    fast = mask_iou_targets(logits, proposals, gt, idx)
    slow = mask_iou_targets_reference(logits, proposals, gt, idx)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


def test_exact_quarter_with_top_half_mask_on_left_half_box():
    # GT 20x20 at (10, 10); box = its left half (10x20 px on a 28x28 grid: 784 cells for 200 px).
    # Predicted: the top half of the grid (392 cells, all inside the GT). GT inside the box
    # fills the grid (784 cells), the 200 px outside count 784 more: IoU = 392 / 1568 = 0.25.
    logits = torch.full((1, 28, 28), -5.0)
    logits[:, :14] = 5.0
    proposals = torch.tensor([[10.0, 10.0, 20.0, 30.0]])
    gt = square()
    iou = mask_iou_targets(logits, proposals, gt, torch.tensor([0]))
    assert iou.item() == pytest.approx(392 / (392 + 784 + 784 - 392), abs=0.01)
