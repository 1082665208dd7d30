"""MaskIoU targets against hand-computed values and an independent numpy reference
(``tests/reference.py``: torchvision's roi_align re-derived, full-image IoU pasted by hand).

A note on the values: the GT is projected on the RoI grid as torchvision's mask loss does
(``roi_align``, aligned=False), so a bin's samples sit half a pixel off the pixel centres and a
grid row whose samples straddle the GT's far edge reads < 0.5. That is why a box equal to a
20 x 20 GT box scores 729/784, not 1: the last row and column of the grid fall outside.
"""

import numpy as np
import pytest
import torch
from reference import grid_mask_iou, pasted_mask_iou

from maskiou import mask_iou_targets
from maskiou.targets import gt_area_in_boxes

ALL_IN = np.full((28, 28), 5.0)  # every grid cell predicted inside the mask


def square(h=64, w=64, box=(10, 10, 30, 30)) -> torch.Tensor:
    m = torch.zeros(1, h, w, dtype=torch.uint8)
    x1, y1, x2, y2 = box
    m[0, y1:y2, x1:x2] = 1
    return m


def target(logits, box, gt, idx=0) -> float:
    return mask_iou_targets(torch.as_tensor(np.asarray(logits), dtype=torch.float32)[None],
                            torch.tensor([box], dtype=torch.float32), gt,
                            torch.tensor([idx])).item()


def test_grid_target_equals_full_image_iou_392_over_900_when_cells_are_pixels():
    # GT 30 x 30 at (10, 10); box 28 x 28 px inside it (one pixel per cell); predicted: the top
    # 14 rows. Pasted by hand: 392 px, all inside the GT, whose 900 px are the union.
    gt = square(box=(10, 10, 40, 40))
    logits = np.full((28, 28), -5.0)
    logits[:14] = 5.0
    assert pasted_mask_iou(logits, (10, 10, 38, 38), gt[0].numpy()) == pytest.approx(392 / 900)
    assert target(logits, [10, 10, 38, 38], gt) == pytest.approx(392 / 900, abs=1e-6)


def test_box_on_the_left_half_of_the_gt_is_756_over_1568():
    # 200 of the GT's 400 px lie in the box (full-image IoU 0.5). On the grid the GT fills 27 of
    # 28 rows (756 cells); the 200 px outside count 784 cells: 756 / (784 + 784) = 0.482.
    assert target(ALL_IN, [10, 10, 20, 30], square()) == pytest.approx(756 / 1568, abs=1e-6)


def test_box_equal_to_the_gt_box_is_729_over_784():
    assert target(ALL_IN, [10, 10, 30, 30], square()) == pytest.approx(729 / 784, abs=1e-6)


def test_top_half_prediction_in_a_box_the_gt_fills_is_392_over_1646_4():
    # GT 20 x 21 px at (10, 10) (one row more than the box, so that its projection fills the
    # grid: 784 cells); box = its left half. Predicted: the top 14 rows (392 cells, all inside).
    # The 220 GT px outside the 200 px box count 220 * 784 / 200 = 862.4 cells:
    # IoU = 392 / (784 + 862.4).
    gt = square(box=(10, 10, 30, 31))
    logits = np.full((28, 28), -5.0)
    logits[:14] = 5.0
    assert target(logits, [10, 10, 20, 30], gt) == pytest.approx(392 / 1646.4, abs=1e-6)


def test_one_cell_grid_with_a_quarter_cell_outside_is_0_8():
    # A 1 x 1 grid on the box (0, 0, 2, 2): its four samples at (0.5 | 1.5, 0.5 | 1.5) read the
    # 2 x 2 GT block as 1, 0.5, 0.5 and 0.25 (mean 0.5625 >= 0.5), so GT and prediction share
    # the one cell. The GT's fifth pixel, at (3, 3), lies outside: 1 px x 1/4 cell per px.
    # IoU = 1 / (1 + 1 + 0.25 - 1) = 0.8: a union below 2 cells is not rounded up.
    gt = torch.zeros(1, 4, 4, dtype=torch.uint8)
    gt[0, :2, :2] = 1
    gt[0, 3, 3] = 1
    assert target(np.full((1, 1), 5.0), [0, 0, 2, 2], gt) == pytest.approx(0.8, abs=1e-6)


def test_all_negative_logits_is_exactly_zero():
    assert target(np.full((28, 28), -5.0), [10, 10, 20, 30], square()) == 0.0


def test_probability_threshold_is_logit_zero_not_half():
    # logits of 0.3 are probabilities of 0.57: inside the mask. Thresholding raw logits at 0.5
    # (a known bug in one public port) would call every cell background and give 0.
    assert target(np.full((28, 28), 0.3), [10, 10, 30, 30], square()) == pytest.approx(729 / 784)
    assert target(np.full((28, 28), -0.3), [10, 10, 30, 30], square()) == 0.0
    # a logit of exactly 0 is a probability of exactly 0.5: not above it, so background
    assert target(np.zeros((28, 28)), [10, 10, 30, 30], square()) == 0.0


def test_zero_width_box_inside_the_gt_scores_about_0_not_a_full_match():
    # every grid cell samples the GT and is predicted inside (784 of 784 cells agree), but the
    # box holds none of the GT's 400 pixels: the GT outside it costs 400 px / 1e-6 px^2 per
    # 784 cells, so the IoU is 784 / (784 + 400 * 784 / 1e-6) = 2.5e-9, not 1
    assert target(ALL_IN, [20, 12, 20, 28], square()) == pytest.approx(1 / (1 + 4e8), rel=1e-3)


def test_zero_area_gt_gives_exact_zeros_not_nan():
    gt = torch.zeros(1, 64, 64, dtype=torch.uint8)
    iou = mask_iou_targets(torch.full((2, 28, 28), 5.0), torch.tensor([[10.0, 10, 30, 30]] * 2),
                           gt, torch.tensor([0, 0]))
    assert iou.tolist() == [0.0, 0.0]


def test_matched_idxs_pick_their_gt_and_empty_input_is_empty():
    gt = torch.cat([square(box=(0, 0, 8, 8)), square(box=(10, 10, 30, 30))])
    proposals = torch.tensor([[10.0, 10, 20, 30], [10.0, 10, 30, 30]])
    iou = mask_iou_targets(torch.full((2, 28, 28), 5.0), proposals, gt, torch.tensor([1, 1]))
    assert iou.tolist() == pytest.approx([756 / 1568, 729 / 784], abs=1e-6)
    iou0 = mask_iou_targets(torch.full((1, 28, 28), 5.0), proposals[:1], gt, torch.tensor([0]))
    assert iou0.item() == 0.0  # GT 0 lies outside the box: no overlap
    empty = mask_iou_targets(torch.zeros(0, 28, 28), torch.zeros(0, 4), gt, torch.zeros(0).long())
    assert empty.shape == (0,)


def test_gt_area_in_boxes_counts_pixels_inside_and_beyond_the_image():
    gt = square(box=(0, 0, 30, 30))  # touches the image's top-left corner
    boxes = torch.tensor([[0.0, 0, 20, 64], [25.2, 0, 100, 100], [-10.0, -10, 5, 5],
                          [-5.0, 3, 70, 4], [70.0, 0, 90, 10], [-20.0, 0, -5, 10]])
    inside, total = gt_area_in_boxes(gt, boxes, torch.tensor([0] * 6))
    # 20 x 30; x from 25 (rounded) to 30 x 30 rows; (0..5) x (0..5); one row, all 30 columns;
    # boxes right and left of the 64-pixel image hold nothing
    assert inside.tolist() == [600.0, 150.0, 25.0, 30.0, 0.0, 0.0]
    assert total.tolist() == [900.0] * 6


def test_vectorized_equals_the_numpy_reference_on_random_inputs():
    g = torch.Generator().manual_seed(0)
    gt = (torch.rand(5, 40, 60, generator=g) > 0.6).to(torch.uint8)
    gt[1] = 0  # one empty GT
    xy = torch.rand(48, 2, generator=g) * torch.tensor([70.0, 50.0]) - 10  # some leave the image
    wh = torch.rand(48, 2, generator=g) * 30 + 0.5
    proposals = torch.cat([xy, xy + wh], 1)
    logits = torch.randn(48, 28, 28, generator=g)
    idx = torch.randint(0, 5, (48,), generator=g)
    fast = mask_iou_targets(logits, proposals, gt, idx)
    ref = [grid_mask_iou(lg.numpy(), p.numpy(), gt[i].numpy())
           for lg, p, i in zip(logits, proposals, idx)]
    assert fast.tolist() == pytest.approx(ref, abs=1e-6)
    assert (fast > 0).sum() >= 10  # the comparison covers real overlaps, not only zeros
