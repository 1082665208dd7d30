"""The final score in the model (maskiou.calibration): the rescored score until fitted, then a
logistic function of the signals' logarithms that hand-computed values check; the same in
TorchScript; carried by the head's state dict."""

from __future__ import annotations

import math

import pytest
import torch

from maskiou import MaskIoUHead
from maskiou.calibration import (
    EPS,
    SIGNALS,
    ScoreCalibration,
    box_area_share,
    image_signal_logs,
)

SIZE = (128, 64)  # (height, width): 8,192 pixels


def signals():
    """Three detections of one image: the second half-covered by the first, of its class."""
    cls = torch.tensor([0.9, 0.5, 0.2])
    quality = torch.tensor([0.8, 0.0, 1.0])
    mk = torch.tensor([0.95, 0.6, 0.7])
    boxes = torch.tensor([[0.0, 0.0, 64.0, 32.0], [0.0, 0.0, 64.0, 16.0],
                          [0.0, 0.0, 64.0, 128.0]])
    labels = torch.tensor([1, 1, 2])
    return cls, quality, mk, boxes, labels, SIZE


AREA = [0.25, 0.125, 1.0]  # box area / 8,192
FREE = [1.0, 0.5, 1.0]  # 1 - IoU with a higher-scored box of the class: 1,024 / 2,048 for #2


def test_unfitted_it_is_the_papers_rescoring_exactly():
    cal = ScoreCalibration(3)
    cls, quality, *_ = signals()
    assert not bool(cal.fitted)
    assert torch.equal(cal(*signals()), cls * quality)


def test_the_signals_of_one_image_are_computed_from_its_boxes():
    x = image_signal_logs(*signals())
    assert x.shape == (3, len(SIGNALS)) and SIGNALS[3:] == ("rel_area", "uncontested")
    assert torch.allclose(x[:, 3].exp(), torch.tensor(AREA))
    assert torch.allclose(x[:, 4].exp(), torch.tensor(FREE))
    assert torch.equal(x[1, 1], torch.tensor(math.log(EPS)).float())  # quality 0: clipped


def test_fitted_it_is_the_logistic_function_of_the_signals_logs():
    cal = ScoreCalibration(3)
    cal.set([1.0, 2.0, 0.5, -0.25, 3.0], 0.75)
    cls, quality, mk, *_ = signals()
    out = cal(*signals())
    for i in range(3):  # quality 0 is clipped to EPS before its logarithm
        z = 0.75 + math.log(cls[i]) + 2 * math.log(max(quality[i].item(), EPS)) \
            + 0.5 * math.log(mk[i]) - 0.25 * math.log(AREA[i]) + 3 * math.log(FREE[i])
        assert abs(out[i].item() - 1 / (1 + math.exp(-z))) < 1e-6
    cal.clear()
    assert torch.equal(cal(*signals()), cls * quality)


def test_float64_stays_float64():
    cal = ScoreCalibration(3).double()
    cal.set([0.3, 1.0, 2.0, 0.1, 1.5], -0.5)
    cls, quality, mk, boxes, labels, size = signals()
    assert cal(cls.double(), quality.double(), mk.double(), boxes.double(), labels,
               size).dtype == torch.float64


def test_the_script_equals_eager():
    eager = ScoreCalibration(3)
    eager.set([0.3, 1.0, 2.0, 0.1, 1.5], -0.5)
    scripted = torch.jit.script(eager)
    assert torch.equal(scripted(*signals()), eager(*signals()))
    empty = torch.zeros(0)
    assert scripted(empty, empty, empty, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64),
                    SIZE).shape == (0,)


def class_mapped() -> tuple[ScoreCalibration, torch.Tensor, torch.Tensor]:
    """A fitted calibration with a map per class (label 1: half of the score; label 2: a
    constant 0.3), its scores of :func:`signals` before the map, and the curves."""
    from maskiou.calibration import CURVE_KNOTS

    cal = ScoreCalibration(3)
    cal.set([1.0, 2.0, 0.5, -0.25, 3.0], 0.75)
    before = cal(*signals())
    knots = torch.linspace(0, 1, CURVE_KNOTS)
    curves = torch.stack([knots, knots / 2, torch.full((CURVE_KNOTS,), 0.3)])
    cal.set_class_curves(curves.tolist())
    return cal, before, curves


def test_the_class_map_scripts():
    cal, _, _ = class_mapped()
    assert torch.equal(torch.jit.script(cal)(*signals()), cal(*signals()))


def test_the_class_map_runs_each_score_through_its_class_curve():
    from maskiou.calibration import CURVE_KNOTS

    cal, before, curves = class_mapped()
    out = cal(*signals())  # labels 1, 1, 2
    expected = 0.99 * torch.stack([before[0] / 2, before[1] / 2, torch.tensor(0.3)]) \
        + 0.01 * before
    assert torch.allclose(out, expected, atol=1e-6)
    # between two knots, linear: a score of 0.1 lies 1/2 + 0.5 of the way 0.08 -> 0.12
    from maskiou.calibration import class_curve

    step = torch.zeros(3, CURVE_KNOTS)
    step[1, 3:] = 1.0  # 0 up to the knot at 0.08, 1 from the knot at 0.12
    got = class_curve(torch.tensor([0.1, 0.0, 1.0, 0.12]), torch.tensor([1, 1, 1, 1]), step)
    assert got.tolist() == pytest.approx([0.5, 0.0, 1.0, 1.0])
    # a flat curve still keeps the class's order: the score's own 1%
    assert (out[0] > out[1]) == (before[0] > before[1])
    with pytest.raises(ValueError, match="nondecreasing"):
        cal.set_class_curves(torch.flip(curves, [1]).tolist())
    with pytest.raises(ValueError, match="one curve of 26 per label"):
        cal.set_class_curves([[0.0] * CURVE_KNOTS])
    cal.clear()  # back to cls x quality, no map
    assert not bool(cal.class_fitted)


def test_a_state_dict_without_the_class_map_loads_without_one(tmp_path):
    head = MaskIoUHead(8, 3, conv_channels=4, fc_dim=8)
    head.calibration.set([1.0] * len(SIGNALS), 0.5)
    old = {k: v for k, v in head.state_dict().items() if "class_" not in k}
    again = MaskIoUHead(8, 3, conv_channels=4, fc_dim=8)
    again.calibration.set_class_curves([[0.5] * 26] * 3)
    again.load_state_dict(old)  # strict: the missing map is no map, not an error
    assert not bool(again.calibration.class_fitted)
    assert again.calibration.bias.item() == 0.5
    from maskiou.models.checkpoint import load_model_state

    fresh = MaskIoUHead(8, 3, conv_channels=4, fc_dim=8)
    load_model_state(fresh, old, tmp_path / "old.pt")  # maskiou's own strict loader too
    assert not bool(fresh.calibration.class_fitted) and bool(fresh.calibration.fitted)


def test_box_area_share_and_the_heads_state_dict_carry_it():
    boxes = torch.tensor([[0.0, 0.0, 64.0, 32.0], [10.0, 10.0, 5.0, 20.0]])
    assert box_area_share(boxes, (128, 64)).tolist() == [0.25, 0.0]  # a degenerate box: 0
    head = MaskIoUHead(8, 3, conv_channels=4, fc_dim=8)
    head.calibration.set([1.0] * len(SIGNALS), 0.0)
    state = head.state_dict()
    assert state["calibration.fitted"].item() is True
    again = MaskIoUHead(8, 3, conv_channels=4, fc_dim=8)
    again.load_state_dict(state)
    assert bool(again.calibration.fitted)
    assert again.calibration.weights.tolist() == [1.0] * len(SIGNALS)


def test_the_recalibration_is_kept_unless_the_held_out_check_measured_it_below_rescoring():
    from maskiou.addon.run import recalibration_kept

    def gain(**ap):
        return {"mask_ap": {"maskness": 40.0, **ap}}

    assert recalibration_kept(None)  # no masks to check with: kept
    assert recalibration_kept(gain(rescored=41.0))  # nothing recalibrated to compare
    assert recalibration_kept(gain(rescored=41.0, recalibrated=41.0))
    assert recalibration_kept(gain(rescored=41.0, recalibrated=41.5))
    assert not recalibration_kept(gain(rescored=41.8, recalibrated=39.6))  # YOLO-seg's case


def test_the_class_curves_fit_hand_solvable_cases():
    import numpy as np

    from maskiou.addon.recalibration import apply_class_curves, fit_class_curves, isotonic_curve

    # isotonic: the scores 0.2, 0.4 have targets 0.6, 0.2 (against the order: pooled to 0.4),
    # 0.8 has 0.9; read at the knots, clipped outside [0.2, 0.8] and linear between points
    curve = isotonic_curve(np.array([0.2, 0.4, 0.8]), np.array([0.6, 0.2, 0.9]))
    at = np.linspace(0, 1, 26)
    assert curve[at <= 0.4 + 1e-9] == pytest.approx(0.4)
    assert curve[at >= 0.8 - 1e-9] == pytest.approx(0.9)
    assert curve[15] == pytest.approx(0.4 + (0.6 - 0.4) / 0.4 * 0.5)  # at 0.6: halfway
    assert isotonic_curve(np.zeros(0), np.zeros(0)) == pytest.approx(at)  # none: identity
    # per class, blended with the curve of all as ``prior`` more detections: class 1's two
    # detections both have target 1 (its curve 1 everywhere), class 2's two target 0; all
    # four pooled: scores 0.5 (targets 1 and 0) -> 0.5. With prior 2: class 1 (2 x 1 + 2 x 0.5)
    # / 4 = 0.75, class 2 0.25; class 0 has no detection: the common 0.5
    scores, labels = np.full(4, 0.5), np.array([1, 1, 2, 2])
    curves = fit_class_curves(scores, labels, np.array([1.0, 1.0, 0.0, 0.0]), 3, prior=2.0)
    assert np.array(curves[1]) == pytest.approx(0.75) and np.array(curves[2]) == pytest.approx(
        0.25) and np.array(curves[0]) == pytest.approx(0.5)
    # what the model computes: 0.99 x curve + 0.01 x score
    assert apply_class_curves(np.array([0.5, 0.5]), np.array([1, 2]), curves) == \
        pytest.approx([0.99 * 0.75 + 0.005, 0.99 * 0.25 + 0.005])


def test_keep_worth_keeps_each_detection_at_or_above_its_class_threshold():
    from maskiou.keep import keep_worth

    result = {"scores": torch.tensor([0.9, 0.3, 0.6, 0.2]), "labels": torch.tensor([1, 2, 1, 2]),
              "boxes": torch.arange(16.0).reshape(4, 4), "masks": torch.zeros(4, 1, 2, 2)}
    thresholds = torch.tensor([0.0, 0.7, 0.3])
    # label 1 needs 0.7: 0.9 kept, 0.6 not; label 2 needs 0.3: 0.3 kept (at it), 0.2 not
    out = keep_worth(result, thresholds)
    assert out["scores"].tolist() == pytest.approx([0.9, 0.3])
    assert out["boxes"].tolist() == result["boxes"][[0, 1]].tolist()
    assert out["masks"].shape == (2, 1, 2, 2) and out["labels"].tolist() == [1, 2]
    scripted = torch.jit.script(keep_worth)
    assert all(torch.equal(scripted(result, thresholds)[k], v) for k, v in out.items())
    cal = ScoreCalibration(3)
    assert cal.class_thresholds.tolist() == [0.0] * 3  # unfitted: every mask kept
    cal.set_class_thresholds([0.1, 0.2, 0.3])
    assert cal.class_thresholds.tolist() == pytest.approx([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="2 thresholds for 3 labels"):
        cal.set_class_thresholds([0.1, 0.2])
    cal.clear()
    assert cal.class_thresholds.tolist() == [0.0] * 3


def test_class_curve_clamps_scores_and_reads_the_last_knot_of_the_last_class():
    from maskiou.calibration import CURVE_KNOTS, class_curve

    curves = torch.full((2, CURVE_KNOTS), 0.7)  # label 0's curve: a score never reads it
    curves[1] = torch.linspace(0, 1, CURVE_KNOTS) ** 2  # not a straight line at its end
    got = class_curve(torch.tensor([-0.5, 1.0, 1.5, 0.98]), torch.tensor([1, 1, 1, 1]), curves)
    # below 0 reads the first knot, 1 and above the last; 0.98 is halfway from 0.96 to 1.0
    assert got.tolist() == pytest.approx([0.0, 1.0, 1.0, (0.96 ** 2 + 1.0) / 2])
    assert class_curve(torch.tensor([0.5], dtype=torch.float64), torch.tensor([1]),
                       curves).dtype == torch.float64


def test_signal_logs_clip_at_one_and_widen_half_inputs():
    from maskiou.calibration import signal_logs

    one = torch.ones(2)
    x = signal_logs(torch.tensor([0.5, 1.0]), torch.tensor([2.0, 1.0]), one, one, one)
    assert x[:, 1].tolist() == [0.0, 0.0]  # a signal above 1 counts as 1
    half = signal_logs(*(torch.tensor([0.5, 0.25], dtype=torch.float16),) * 5)
    assert half.dtype == torch.float32
    assert half[:, 0].tolist() == pytest.approx([math.log(0.5), math.log(0.25)])
    mixed = signal_logs(torch.tensor([0.5], dtype=torch.float64), torch.tensor([0.5]),
                        torch.tensor([0.5]), torch.tensor([0.5]), torch.tensor([0.5]))
    assert mixed.dtype == torch.float64


def test_box_area_share_uses_each_side_of_each_box():
    boxes = torch.tensor([[2.0, 8.0, 10.0, 12.0],   # 8 x 4
                          [4.0, 6.0, 8.0, 6.5],     # 4 x 0.5
                          [4.0, 6.0, 8.0, 2.0]])    # upside down: 0
    assert box_area_share(boxes, (10, 20)).tolist() == pytest.approx([32 / 200, 2 / 200, 0.0])


def test_one_class_is_enough_none_is_refused_and_the_map_starts_as_the_identity(tmp_path):
    from maskiou.calibration import CURVE_KNOTS

    assert ScoreCalibration(1).class_curves.shape == (1, CURVE_KNOTS)
    with pytest.raises(ValueError, match="num_classes must be >= 1, got 0"):
        ScoreCalibration(0)
    identity = torch.linspace(0, 1, CURVE_KNOTS)
    assert torch.equal(ScoreCalibration(2).class_curves, identity.repeat(2, 1))
    cal = ScoreCalibration(2)
    old = {k: v for k, v in ScoreCalibration(2).state_dict().items() if "class_" not in k}
    cal.load_state_dict(old)  # no map in the old state dict: the identity, not fitted
    assert torch.equal(cal.class_curves, identity.repeat(2, 1)) and not bool(cal.class_fitted)


def test_the_score_keeps_the_detections_dtype_whatever_the_calibrations():
    cal = ScoreCalibration(3)  # float32 buffers
    cal.set([1.0, 2.0, 0.5, -0.25, 3.0], 0.75)
    cls, quality, mk, boxes, labels, size = signals()
    want = cal(*signals())
    wide = cal(cls.double(), quality.double(), mk.double(), boxes.double(), labels, size)
    assert wide.dtype == torch.float64 and torch.allclose(wide.float(), want, atol=1e-6)
    narrow = cal(cls.half(), quality.half(), mk.half(), boxes, labels, size)
    assert narrow.dtype == torch.float16
