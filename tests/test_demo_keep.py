"""The demo shows which detections the model's stored per-class thresholds keep: a "kept"
column, dropped masks drawn grey and faint, a switch that hides them, a status line."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gradio", reason="the demo needs gradio: pip install -e '.[demo]'")

from test_demo import GT_RECT, NAMES, FakeDetector, gt, image  # noqa: E402

from demo.draw import DIMMED_ALPHA, DROPPED_COLOR, Shape, draw  # noqa: E402
from demo.handlers import IN_MEMORY, NO_HEAD, DemoApp  # noqa: E402
from demo.inference import Predictor, panel, predict, table  # noqa: E402
from maskiou import MaskIoUHead  # noqa: E402

STATUS = 7  # a handler's outputs: 5 panels, table, plot, status


class ThresholdedDetector(FakeDetector):
    """:class:`test_demo.FakeDetector` (ring: label 2, final 0.35; rectangle: label 1, final
    0.5) with a MaskIoU head whose stored thresholds are label 1 at 0.6 (the rectangle is
    dropped) and label 2 at 0.3 (the ring is kept)."""

    def __init__(self) -> None:
        super().__init__()
        self.maskiou_head = MaskIoUHead(8, 3, conv_channels=4, num_convs=1, fc_dim=4)
        self.maskiou_head.calibration.set_class_thresholds([0.0, 0.6, 0.3])


@pytest.fixture(scope="module")
def thresholded() -> Predictor:
    return Predictor(ThresholdedDetector(), NAMES, "cpu", kind="add-on")


def test_each_detection_is_marked_kept_or_dropped_by_the_stored_thresholds(thresholded):
    pred = predict(image(), thresholded, gt())
    by_label = np.argsort(pred.labels)  # rectangle (1), ring (2)
    assert pred.kept[by_label].tolist() == [False, True]
    df = table(pred)  # by the final score: rectangle 0.5, ring 0.35
    assert df["class"].tolist() == ["rectangle", "ring"]
    assert df["kept"].tolist() == ["dropped", "kept"]


def test_a_model_without_thresholds_keeps_all_and_one_without_a_head_shows_no_column():
    every = predict(image(), Predictor(_zero_thresholds(), NAMES, "cpu"), gt())
    assert every.kept.tolist() == [True, True]
    plain = predict(image(), Predictor(FakeDetector(), NAMES, "cpu"), gt())
    assert plain.kept is None and "kept" not in table(plain)


def _zero_thresholds() -> ThresholdedDetector:
    model = ThresholdedDetector()
    model.maskiou_head.calibration.set_class_thresholds([0.0, 0.0, 0.0])
    return model


def test_a_dropped_mask_is_drawn_faint_and_grey():
    img = np.full((40, 40, 3), 100, np.uint8)
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:30] = True
    out = draw(img, [Shape(mask, (10, 10, 30, 30), DROPPED_COLOR, "x", dimmed=True)])
    k = out.shape[0] // 40
    grey = int(DROPPED_COLOR[1:3], 16)
    assert DIMMED_ALPHA == 0.12
    assert out[20 * k, 20 * k].tolist() == [int((1 - 0.12) * 100 + 0.12 * grey)] * 3


def test_panels_dim_the_dropped_mask_or_hide_it(thresholded):
    pred = predict(image(), thresholded, gt())
    blank = draw(pred.image, [])
    rect = (slice(GT_RECT[0].start * 6 + 12, GT_RECT[0].stop * 6 - 12),
            slice(GT_RECT[1].start * 6 + 12, GT_RECT[1].stop * 6 - 12))  # inside, 6x larger
    dimmed = panel(pred, "cls", 0.0)
    hidden = panel(pred, "cls", 0.0, only_kept=True)
    assert (dimmed[rect] != blank[rect]).any()  # drawn ...
    expected = ((1 - DIMMED_ALPHA) * blank[rect] + DIMMED_ALPHA * int(DROPPED_COLOR[1:3], 16))
    assert np.array_equal(dimmed[rect], expected.astype(np.uint8))  # ... faint and grey
    assert np.array_equal(hidden[rect], blank[rect])  # hidden with only_kept
    ring = (slice(8 * 6 + 12, 40 * 6 - 12), slice(8 * 6 + 12, 24 * 6 - 12))
    assert (hidden[ring] != blank[ring]).any()  # the kept ring is still drawn


def test_the_page_says_how_many_are_kept_and_its_switch_redraws(thresholded, tmp_path):
    from PIL import Image

    Image.fromarray(image()).save(tmp_path / "x.png")
    app = DemoApp(heads=[], split=None, predictor=thresholded, upload_dirs=[tmp_path])
    out = app.detect(str(tmp_path / "x.png"), NO_HEAD, IN_MEMORY, 0.0, "final", False)
    assert "1 of 2 are worth keeping by the per-class thresholds stored in the model" in \
        out[STATUS]
    pred = out[STATUS + 1]
    shown, only = app.redraw(pred, 0.0, "final", False), app.redraw(pred, 0.0, "final", False,
                                                                    True)
    final = list(pred.scores()).index("final")
    assert not np.array_equal(shown[final], only[final])
    assert np.array_equal(only[final], panel(pred, "final", 0.0, only_kept=True))
