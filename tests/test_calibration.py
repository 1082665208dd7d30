"""The final score in the model (maskiou.calibration): the rescored score until fitted, then a
logistic function of the signals' logarithms that hand-computed values check; the same in
TorchScript; carried by the head's state dict."""

from __future__ import annotations

import math

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
    cal = ScoreCalibration()
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
    cal = ScoreCalibration()
    cal.set([1.0, 2.0, 0.5, -0.25, 3.0], 0.75)
    cls, quality, mk, *_ = signals()
    out = cal(*signals())
    for i in range(3):  # quality 0 is clipped to EPS before its logarithm
        z = 0.75 + math.log(cls[i]) + 2 * math.log(max(quality[i].item(), EPS)) \
            + 0.5 * math.log(mk[i]) - 0.25 * math.log(AREA[i]) + 3 * math.log(FREE[i])
        assert abs(out[i].item() - 1 / (1 + math.exp(-z))) < 1e-6
    cal.clear()
    assert torch.equal(cal(*signals()), cls * quality)


def test_float64_stays_float64_and_the_script_equals_eager():
    cal = ScoreCalibration().double()
    cal.set([0.3, 1.0, 2.0, 0.1, 1.5], -0.5)
    cls, quality, mk, boxes, labels, size = signals()
    assert cal(cls.double(), quality.double(), mk.double(), boxes.double(), labels,
               size).dtype == torch.float64
    eager = ScoreCalibration()
    eager.set([0.3, 1.0, 2.0, 0.1, 1.5], -0.5)
    scripted = torch.jit.script(eager)
    assert torch.equal(scripted(*signals()), eager(*signals()))
    empty = torch.zeros(0)
    assert scripted(empty, empty, empty, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64),
                    SIZE).shape == (0,)


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
