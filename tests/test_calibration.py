"""The final score in the model (maskiou.calibration): the rescored score until fitted, then a
logistic function of the signals' logarithms that hand-computed values check; the same in
TorchScript; carried by the head's state dict."""

from __future__ import annotations

import math

import torch

from maskiou import MaskIoUHead
from maskiou.calibration import EPS, ScoreCalibration, box_area_share, signal_logs


def signals():
    cls = torch.tensor([0.9, 0.5, 0.2])
    quality = torch.tensor([0.8, 0.0, 1.0])
    mk = torch.tensor([0.95, 0.6, 0.7])
    area = torch.tensor([0.25, 0.01, 1.0])
    return cls, quality, mk, area


def test_unfitted_it_is_the_papers_rescoring_exactly():
    cal = ScoreCalibration()
    cls, quality, mk, area = signals()
    assert not bool(cal.fitted)
    assert torch.equal(cal(cls, quality, mk, area), cls * quality)


def test_fitted_it_is_the_logistic_function_of_the_signals_logs():
    cal = ScoreCalibration()
    cal.set([1.0, 2.0, 0.5, -0.25], 0.75)
    cls, quality, mk, area = signals()
    out = cal(cls, quality, mk, area)
    for i in range(3):  # quality 0 is clipped to EPS before its logarithm
        z = 0.75 + math.log(cls[i]) + 2 * math.log(max(quality[i].item(), EPS)) \
            + 0.5 * math.log(mk[i]) - 0.25 * math.log(area[i])
        assert abs(out[i].item() - 1 / (1 + math.exp(-z))) < 1e-6
    assert torch.equal(signal_logs(*signals())[1, 1], torch.tensor(math.log(EPS)).float())
    cal.clear()
    assert torch.equal(cal(cls, quality, mk, area), cls * quality)


def test_float64_stays_float64_and_the_script_equals_eager():
    cal = ScoreCalibration().double()
    cal.set([0.3, 1.0, 2.0, 0.1], -0.5)
    x = [s.double() for s in signals()]
    assert cal(*x).dtype == torch.float64
    eager = ScoreCalibration()
    eager.set([0.3, 1.0, 2.0, 0.1], -0.5)
    scripted = torch.jit.script(eager)
    assert torch.equal(scripted(*signals()), eager(*signals()))


def test_box_area_share_and_the_heads_state_dict_carry_it():
    boxes = torch.tensor([[0.0, 0.0, 64.0, 32.0], [10.0, 10.0, 5.0, 20.0]])
    assert box_area_share(boxes, (128, 64)).tolist() == [0.25, 0.0]  # a degenerate box: 0
    head = MaskIoUHead(8, 3, conv_channels=4, fc_dim=8)
    head.calibration.set([1.0, 1.0, 1.0, 1.0], 0.0)
    state = head.state_dict()
    assert state["calibration.fitted"].item() is True
    again = MaskIoUHead(8, 3, conv_channels=4, fc_dim=8)
    again.load_state_dict(state)
    assert bool(again.calibration.fitted) and again.calibration.weights.tolist() == [1.0] * 4


def test_the_recalibration_is_kept_unless_the_held_out_check_measured_it_below_rescoring():
    from maskiou.addon.run import recalibration_kept

    def gain(**ap):
        return {"mask_ap": {"maskness": 40.0, **ap}}

    assert recalibration_kept(None)  # no masks to check with: kept
    assert recalibration_kept(gain(rescored=41.0))  # nothing recalibrated to compare
    assert recalibration_kept(gain(rescored=41.0, recalibrated=41.0))
    assert recalibration_kept(gain(rescored=41.0, recalibrated=41.5))
    assert not recalibration_kept(gain(rescored=41.8, recalibrated=39.6))  # YOLO-seg's case
