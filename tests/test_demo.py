"""The Gradio demo: known-answer scoring, bad inputs, training offer, and the live app over HTTP.

Models are built here (a fake detector with fixed outputs, and the tiny Mask R-CNN of
``demo/testing.py`` whose classifier and MaskIoU head are forced), never trained or downloaded.
"""

from __future__ import annotations

import json
import socket
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

gr = pytest.importorskip("gradio", reason="the demo needs gradio: pip install -e '.[demo]'")
gradio_client = pytest.importorskip("gradio_client", reason="pip install -e '.[demo]'")

from demo.app import DemoApp, ValSplit, benchmark_summary, build_app, parse_args  # noqa: E402
from demo.images import MAX_SIDE, ImageInputError, load_image  # noqa: E402
from demo.inference import (  # noqa: E402
    TABLE_HEADERS,
    GroundTruth,
    Predictor,
    predict,
    ranks,
    render,
    run_detection,
)
from demo.testing import CLASS_PROBS, MASK_IOUS, tiny_model, write_tiny_checkpoint  # noqa: E402
from maskiou.data.synthetic import generate_synthetic_coco  # noqa: E402

pytestmark = pytest.mark.filterwarnings(  # pandas 3 deprecations inside gradio's queue
    "ignore:'future.no_silent_downcasting' is deprecated", "ignore:The copy keyword is deprecated")
NAMES = ["__background__", "rectangle", "ring"]
SIZE = 64
GT_RING = (slice(8, 40), slice(8, 40))  # 32 x 32 square, class "ring"
GT_RECT = (slice(44, 60), slice(44, 60))  # 16 x 16 square, class "rectangle"


class FakeDetector(torch.nn.Module):
    """Two detections with fixed scores, in a model's output format (sorted by rescored score).

    ring: cls 0.9, predicted IoU 0.2 -> 0.18; its mask is the left half of the GT ring (true
    IoU 0.5). rectangle: cls 0.6, predicted IoU 0.9 -> 0.54; its mask is the GT (true IoU 1).
    """

    calls = 0

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        FakeDetector.calls += 1
        h, w = images[0].shape[-2:]
        masks = torch.zeros(2, 1, h, w)
        masks[0, 0, 8:40, 8:24] = 0.9
        masks[1, 0, GT_RECT[0], GT_RECT[1]] = 0.8
        cls = torch.tensor([0.9, 0.6])
        iou = torch.tensor([0.2, 0.9])
        order = torch.argsort(cls * iou, descending=True)
        out = {"boxes": torch.tensor([[8.0, 8, 24, 40], [44, 44, 60, 60]]),
               "labels": torch.tensor([2, 1]), "masks": masks, "cls_scores": cls,
               "mask_ious": iou, "scores": cls * iou}
        return [{k: v[order] for k, v in out.items()}]


def gt() -> GroundTruth:
    masks = np.zeros((2, SIZE, SIZE), np.uint8)
    masks[0][GT_RING] = 1
    masks[1][GT_RECT] = 1
    return GroundTruth(masks, np.array([2, 1]), NAMES)


def image(size: int = SIZE) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def fake() -> Predictor:
    return Predictor(FakeDetector(), NAMES, "cpu")


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> ValSplit:
    paths = generate_synthetic_coco(tmp_path_factory.mktemp("synthetic"), 8, 4, progress=False)
    return ValSplit(paths.val_json, paths.val_images, num_examples=4)


@pytest.fixture(scope="module")
def checkpoint(split: ValSplit, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    return write_tiny_checkpoint(path, split.dataset.class_names, split.dataset.label_to_cat_id)


# --- known answers -------------------------------------------------------------------------------


def test_two_scorings_known_answer(fake: Predictor) -> None:
    left, right, rows = run_detection(image(), 0.3, fake, gt())
    # left: classification score, both above 0.3; right: only the rectangle (0.54) stays
    assert [label for _, label in left[1]] == ["ring 0.90 (#1)", "rectangle 0.60 (#2)"]
    assert [label for _, label in right[1]] == ["rectangle 0.54 (#2)"]
    assert rows == [
        ["ring", 0.9, 0.2, 0.18, 1, 2, 0.5, "left only"],
        ["rectangle", 0.6, 0.9, 0.54, 2, 1, 1.0, "both"],
    ]
    expected_ring = np.zeros((SIZE, SIZE), np.float32)
    expected_ring[8:40, 8:24] = 1
    np.testing.assert_array_equal(left[1][0][0], expected_ring)
    np.testing.assert_array_equal(right[1][0][0], gt().masks[1].astype(np.float32))
    np.testing.assert_array_equal(left[0], image())
    # a lower threshold shows both on the right, in the rescored order
    _, right, rows = run_detection(image(), 0.1, fake, gt())
    assert [label for _, label in right[1]] == ["rectangle 0.54 (#2)", "ring 0.18 (#1)"]
    assert [r[-1] for r in rows] == ["both", "both"]
    # without ground truth the true MaskIoU is unknown, not 0
    _, _, rows = run_detection(image(), 0.1, fake)
    assert [r[6] for r in rows] == [None, None]


def test_render_rethreshold_and_ranks(fake: Predictor) -> None:
    pred = predict(image(), fake, gt())
    np.testing.assert_allclose(pred.true_ious[np.argsort(pred.labels)], [1.0, 0.5])
    assert render(pred, 0.95)[2] == []
    left, right, rows, (lc, rc) = render(pred, 0.55)
    assert len(left[1]) == 2 and right[1] == [] and len(rows) == 2
    assert lc["ring 0.90 (#1)"] != lc["rectangle 0.60 (#2)"]
    np.testing.assert_array_equal(ranks(np.array([0.2, 0.9, 0.2, 0.5])), [3, 1, 4, 2])


def test_threshold_redraw_does_not_rerun_the_model(fake: Predictor, tmp_path: Path) -> None:
    Image.fromarray(image()).save(tmp_path / "x.png")
    app = DemoApp(predictor=fake, split=None)
    calls = FakeDetector.calls
    *_, status, pred, current = app.detect(str(tmp_path / "x.png"), 0.1, app.checkpoint)
    assert status == ("2 detections; 2 with classification score ≥ 0.10, 2 of them also with "
                      "the rescored score. Model: `in-memory model`.")
    left, right, table, status = app.rethreshold(pred, 0.55)
    assert FakeDetector.calls == calls + 1
    assert status.startswith("2 detections; 2 with classification score ≥ 0.55, 0 of them")
    assert right["value"][1] == [] and table["shown"].tolist() == ["left only", "left only"]
    assert app.rethreshold(None, 0.5)[3] == gr.update()  # nothing run yet: nothing changes


def test_real_model_forced_head(split: ValSplit) -> None:
    """The tiny Mask R-CNN: every proposal gets cls 0.6 for class 1 and 0.3 for class 2, and the
    head predicts IoU 0.2 and 0.9: rescoring must reverse the two classes' ranks."""
    names = split.dataset.class_names
    predictor = Predictor(tiny_model(len(names)), names, "cpu")
    pred = predict(split.dataset.image_path(0), predictor, split.ground_truth(0))
    assert len(pred) >= 2 and set(pred.labels.tolist()) == {1, 2}
    for label in (1, 2):
        sel = pred.labels == label
        np.testing.assert_allclose(pred.cls_scores[sel], CLASS_PROBS[label], rtol=1e-5)
        np.testing.assert_allclose(pred.mask_ious[sel], MASK_IOUS[label], rtol=1e-5)
        np.testing.assert_allclose(pred.scores[sel], CLASS_PROBS[label] * MASK_IOUS[label],
                                   rtol=1e-5)
    left, right, rows = run_detection(split.dataset.image_path(0), 0.25, predictor,
                                      split.ground_truth(0))
    n1 = int((pred.labels == 1).sum())
    by_name = {names[1]: (1, n1), names[2]: (n1 + 1, len(pred))}
    for row in rows:
        first, last = by_name[row[0]]
        assert first <= row[4] <= last  # class 1 first by classification score ...
    assert sorted(r[5] for r in rows if r[0] == names[2]) == list(range(1, len(pred) - n1 + 1))
    assert all(r[3] == round(r[1] * r[2], 3) for r in rows)  # ... class 2 first rescored
    assert len(left[1]) == len(pred) and len(right[1]) == len(pred) - n1  # 0.12 < 0.25 <= 0.27
    assert all(names[2] in label for _, label in right[1])
    # the true MaskIoU column agrees with the benchmark's COCO-based computation
    from maskiou.evaluation.cocoeval import true_mask_ious
    from maskiou.evaluation.predict import Detections

    image_id = split.dataset.image_ids[0]
    cats = np.array([split.dataset.label_to_cat_id[int(x)] for x in pred.labels])
    dets = Detections(np.full(len(pred), image_id), cats, np.zeros((len(pred), 4)), pred.rles,
                      pred.cls_scores, pred.mask_ious)
    np.testing.assert_allclose(pred.true_ious, true_mask_ious(dets, split.dataset.coco))


# --- inputs --------------------------------------------------------------------------------------


def test_load_image_conversions(tmp_path: Path) -> None:
    gray16 = np.array([[0, 257 * 100], [65535, 257]], np.uint16).repeat(16, 0).repeat(16, 1)
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    loaded = load_image(tmp_path / "g16.png")
    assert loaded.array.shape == (32, 32, 3) and loaded.array.dtype == np.uint8
    assert loaded.array[0, 0].tolist() == [0, 0, 0] and loaded.array[0, 16, 0] == 100
    assert loaded.array[16, 0, 0] == 255 and loaded.array[16, 16, 0] == 1
    assert any("16-bit" in n for n in loaded.notes)
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[:, :10] = [10, 20, 30, 255]  # opaque left half, transparent right half
    loaded = load_image(rgba)
    assert loaded.array[0, 0].tolist() == [10, 20, 30] and loaded.array[0, 19].tolist() == [255] * 3
    loaded = load_image(np.full((20, 30), 0.5))
    assert loaded.array.shape == (20, 30, 3) and (loaded.array == 128).all()
    with pytest.raises(ImageInputError, match="NaN"):
        load_image(np.full((20, 20), np.nan))
    with pytest.raises(ImageInputError, match="too thin"):
        load_image(np.zeros((10000, 20, 3), np.uint8))


def _bad_inputs(tmp: Path) -> dict[str, Path]:
    (tmp / "notes.txt").write_text("not an image\n")
    Image.fromarray(np.zeros((1200, 2666, 3), np.uint8)).save(tmp / "huge.png")
    (tmp / "truncated.png").write_bytes((tmp / "huge.png").read_bytes()[:200])
    Image.fromarray(np.full((40, 50), 77, np.uint8)).save(tmp / "gray.png")
    Image.fromarray(np.full((40, 50, 4), [200, 0, 0, 0], np.uint8)).save(tmp / "rgba.png")
    Image.fromarray(np.full((40, 50), 65535, np.uint16)).save(tmp / "deep.png")
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp / "pixel.png")
    return {p.stem: p for p in tmp.iterdir()}


@pytest.mark.parametrize("name, message, shape", [
    ("notes", "notes.txt: not an image file", None),
    ("truncated", "truncated.png: the image file is damaged or truncated", None),
    ("pixel", "pixel.png: the image is 1x1 px, too small", None),
    ("huge", "(2666x1200 px) downscaled to 1333x600 px", (600, MAX_SIDE, 3)),
    ("gray", "grayscale image", (40, 50, 3)),
    ("rgba", "transparency flattened onto white", (40, 50, 3)),
    ("deep", "16-bit image scaled to 8 bits", (40, 50, 3)),
])
def test_bad_inputs_message_on_page(fake: Predictor, tmp_path: Path, name: str, message: str,
                                    shape: tuple[int, ...] | None) -> None:
    app = DemoApp(predictor=fake, split=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gr.Warning outside a request is a Python warning
        left, right, table, status, pred, current = app.detect(
            str(_bad_inputs(tmp_path)[name]), 0.1, app.checkpoint)
    assert message in status
    assert list(table.columns) == TABLE_HEADERS
    if shape is None:  # rejected: nothing drawn, the page says why
        assert status.startswith("⚠️") and left is None and pred is None and table.empty
    else:  # converted: detections drawn on the converted image, with a note
        assert left["value"][0].shape == shape and len(table) == 2
        if name == "gray":
            assert (left["value"][0] == 77).all()
        if name == "rgba":
            assert (left["value"][0] == 255).all()
        if name == "deep":
            assert (left["value"][0] == 255).all()


def test_no_input_and_checkpoint_problems(fake: Predictor, tmp_path: Path) -> None:
    app = DemoApp(predictor=fake, split=None)
    assert "Upload an image" in app.detect(None, 0.5, app.checkpoint)[3]
    image_path = tmp_path / "x.png"
    Image.fromarray(image()).save(image_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # a path the operator did not offer is never unpickled
        (tmp_path / "other.pt").write_text("junk")
        status = app.detect(str(image_path), 0.5, str(tmp_path / "other.pt"))[3]
        assert "other.pt: not one of the offered checkpoints" in status
        app = DemoApp(tmp_path / "nope.pt", split=None)
        status = app.detect(str(image_path), 0.5, str(tmp_path / "nope.pt"))[3]
        assert status == f"⚠️ Checkpoint not found: `{tmp_path / 'nope.pt'}`."
        (tmp_path / "bad.pt").write_text("junk")
        app = DemoApp(tmp_path / "bad.pt", split=None)
        status = app.detect(str(image_path), 0.5, str(tmp_path / "bad.pt"))[3]
    assert status.startswith("⚠️ Cannot use this checkpoint") and "bad.pt" in status


def test_default_model_missing_offers_training(split: ValSplit, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASKIOU_CACHE", str(tmp_path))
    trained = []

    def fake_train(cfg, run_dir, progress, retrain=False):  # the real one takes minutes
        trained.append(run_dir)
        return write_tiny_checkpoint(run_dir / "model_final.pt", split.dataset.class_names)

    monkeypatch.setattr("maskiou.evaluation.benchmark.train_or_reuse", fake_train)
    app = DemoApp(split=split)
    default = tmp_path / "models" / "synthetic-cpu" / "model_final.pt"
    assert app.checkpoint == str(default)
    text, offer = app.model_status(app.checkpoint)
    assert offer and "not trained yet" in text and "benchmarks/coco_eval.py" in text
    status = app.example(0, 0.25, app.checkpoint)[3]
    assert "not trained yet" in status  # says so instead of failing
    status, button, choice = app.train_default()
    assert trained == [default.parent] and default.is_file()
    assert status == f"Trained the default model: `{default}`."
    assert button["visible"] is False and choice["value"] == str(default)
    assert app.model_status(app.checkpoint) == (f"Model: `{default}`.", False)
    left, right, table, status, *_ = app.example(0, 0.25, app.checkpoint)
    assert "with ground truth" in status and len(table) >= 2


def test_benchmark_summary(tmp_path: Path) -> None:
    assert "python benchmarks/coco_eval.py" in benchmark_summary(tmp_path / "metrics.json")
    metrics = {"segm": {"cls": {"AP": 31.24, "AP50": 50.0, "AP75": 30.0},
                        "rescored": {"AP": 32.5, "AP50": 50.5, "AP75": 32.1},
                        "oracle": {"AP": 35.0, "AP50": 52.0, "AP75": 36.0}},
               "bbox": {}, "correlation": {"pearson": 0.741}, "num_images": 200}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    line = benchmark_summary(tmp_path / "metrics.json")
    assert "(200 validation images" in line
    assert "mask AP **31.2** with classification scores → **32.5** rescored (+1.3)" in line
    assert "AP75 30.0 → 32.1 (+2.1)" in line and "oracle) 35.0" in line and "0.74" in line
    (tmp_path / "metrics.json").write_text("{")
    assert "could not be read" in benchmark_summary(tmp_path / "metrics.json")


def test_cli_defaults() -> None:
    args = parse_args([])
    assert (args.host, args.port, args.share, args.checkpoint) == ("127.0.0.1", 7860, False, None)
    args = parse_args(["--checkpoint", "m.pt", "--host", "0.0.0.0", "--port", "8080", "--share"])
    assert (args.host, args.port, args.share, args.checkpoint) == ("0.0.0.0", 8080, True, "m.pt")


# --- the live app --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live_app(split: ValSplit, checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    metrics = tmp_path_factory.mktemp("results") / "metrics.json"
    demo = build_app(checkpoint, split=split, metrics_path=metrics)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(),
                            prevent_thread_lock=True, quiet=True)
    yield url
    demo.close()


def _check_table(table: dict, names: list[str]) -> None:
    assert table["headers"] == TABLE_HEADERS
    rows = table["data"]
    n1 = sum(r[0] == names[1] for r in rows)
    assert n1 >= 1 and len(rows) > n1
    for row in rows:
        label = names.index(row[0])
        assert row[1:4] == [CLASS_PROBS[label], MASK_IOUS[label],
                            round(CLASS_PROBS[label] * MASK_IOUS[label], 3)]
        assert row[7] == ("left only" if label == 1 else "both")
        assert 0.0 <= row[6] <= 1.0  # a validation image: the true MaskIoU is known


def test_live_app_client(live_app: str, split: ValSplit, checkpoint: Path) -> None:
    client = gradio_client.Client(live_app, verbose=False)
    path = gradio_client.handle_file(str(split.dataset.image_path(1)))
    left, right, table, status = client.predict(path, 0.25, str(checkpoint), api_name="/detect")
    _check_table(table, split.dataset.class_names)
    assert "with ground truth" in status
    left, right = left["value"], right["value"]  # updates: value + color_map
    assert len(left["annotations"]) == len(table["data"])
    assert len(right["annotations"]) == sum(r[7] == "both" for r in table["data"])
    assert Path(left["image"]).is_file()
    # a non-image upload: the message comes back, the server stays up
    bad = Path(checkpoint).with_name("notes.txt")
    bad.write_text("hello")
    out = client.predict(gradio_client.handle_file(str(bad)), 0.25, str(checkpoint),
                         api_name="/detect")
    assert "notes.txt: not an image file" in out[3] and out[2]["data"] == []


def test_live_app_concurrent_clients(live_app: str, split: ValSplit, checkpoint: Path) -> None:
    clients = [gradio_client.Client(live_app, verbose=False) for _ in range(3)]
    jobs = [c.submit(gradio_client.handle_file(str(split.dataset.image_path(i))), 0.25,
                     str(checkpoint), api_name="/detect") for i, c in enumerate(clients)]
    results = [job.result(timeout=120) for job in jobs]
    for (_, _, table, status), i in zip(results, range(3)):
        _check_table(table, split.dataset.class_names)
        assert split.dataset.image_path(i).stem in status
