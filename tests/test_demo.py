"""The Gradio demo: known-answer scorings and ranks, drawing, bad inputs and checkpoints, the
training switch, and every endpoint of the live app over HTTP.

Models are built here (a fake detector with fixed outputs, and the tiny Mask R-CNN of
``demo/testing.py`` whose classifier and MaskIoU head are forced); the one real training is the
add-on head on a handful of images, for seconds.
"""

from __future__ import annotations

import json
import re
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
from demo.draw import Shape, contour, draw  # noqa: E402
from demo.handlers import (  # noqa: E402
    IN_MEMORY,
    MAX_UPLOAD_BYTES,
    NO_HEAD,
    training_allowed,
    upload_problem,
)
from demo.images import MAX_SIDE, ImageInputError, load_image  # noqa: E402
from demo.inference import (  # noqa: E402
    PANELS,
    GroundTruth,
    Predictor,
    panel,
    predict,
    rank_changes,
    ranks,
    table,
)
from demo.testing import (  # noqa: E402
    CLASS_PROBS,
    MASK_IOUS,
    tiny_model,
    write_tiny_checkpoint,
    write_tiny_plain_checkpoint,
)
from maskiou.data.synthetic import generate_synthetic_coco  # noqa: E402

TABLE, STATUS = len(PANELS), len(PANELS) + 2  # a handler's outputs: panels, table, plot, status

pytestmark = pytest.mark.filterwarnings(  # pandas 3 deprecations inside gradio's queue
    "ignore:'future.no_silent_downcasting' is deprecated", "ignore:The copy keyword is deprecated")
NAMES = ["__background__", "rectangle", "ring"]
SIZE = 64
GT_RING = (slice(8, 40), slice(8, 40))  # 32 x 32 square, class "ring"
GT_RECT = (slice(44, 60), slice(44, 60))  # 16 x 16 square, class "rectangle"


class FakeDetector(torch.nn.Module):
    """Two detections with fixed scores, in a model's output format (sorted by the final score,
    which, as a recalibrated one does, differs from the rescored score).

    ring: cls 0.9, predicted IoU 0.2 -> 0.18, final 0.35; its mask is the left half of the GT
    ring (true IoU 0.5), maskness 0.9. rectangle: cls 0.6, predicted IoU 0.9 -> 0.54, final
    0.5; its mask is the GT (true IoU 1), maskness 0.8.
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
        final = torch.tensor([0.35, 0.5])
        order = torch.argsort(final, descending=True)
        out = {"boxes": torch.tensor([[8.0, 8, 24, 40], [44, 44, 60, 60]]),
               "labels": torch.tensor([2, 1]), "masks": masks, "cls_scores": cls,
               "mask_quality": iou, "maskness": torch.tensor([0.9, 0.8]), "scores": final}
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
    return Predictor(FakeDetector(), NAMES, "cpu", kind="add-on")


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> ValSplit:
    paths = generate_synthetic_coco(tmp_path_factory.mktemp("synthetic"), 8, 4, progress=False)
    return ValSplit(paths.val_json, paths.val_images, num_examples=4)


@pytest.fixture(scope="module")
def checkpoints(split: ValSplit, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ckpt")
    names, ids = split.dataset.class_names, split.dataset.label_to_cat_id
    return {"head": write_tiny_checkpoint(d / "tiny.pt", names, ids),
            "plain": write_tiny_plain_checkpoint(d / "plain.pt", names, ids)}


# --- known answers -------------------------------------------------------------------------------


def test_every_scoring_ranks_the_two_detections_as_computed_by_hand(fake: Predictor) -> None:
    pred = predict(image(), fake, gt())
    by_label = np.argsort(pred.labels)  # rectangle (1), ring (2)
    assert pred.true_ious[by_label].tolist() == pytest.approx([1.0, 0.5])
    s = pred.scores()
    assert list(s) == ["cls", "maskness", "rescored", "final", "oracle"]
    # rectangle: cls 0.6, maskness 0.48, rescored 0.54, final 0.5, oracle 0.6
    # ring:      cls 0.9, maskness 0.81, rescored 0.18, final 0.35, oracle 0.45
    expected = {"cls": [0.6, 0.9], "maskness": [0.48, 0.81], "rescored": [0.54, 0.18],
                "final": [0.5, 0.35], "oracle": [0.6, 0.45]}
    for k, v in expected.items():
        assert s[k][by_label].tolist() == pytest.approx(v, abs=1e-6), k
    assert rank_changes(pred) == 2
    df = table(pred)  # by the final score, what the model returns
    assert df["class"].tolist() == ["rectangle", "ring"]
    assert df["rank: cls"].tolist() == [2, 1] and df["rank: final"].tolist() == [1, 2]
    assert df["final score"].tolist() == pytest.approx([0.5, 0.35])
    assert df["move"].tolist() == [1, -1]  # the final score moves the rectangle up, the ring down
    assert table(pred, "rescored")["class"].tolist() == ["rectangle", "ring"]
    assert table(pred, "cls")["class"].tolist() == ["ring", "rectangle"]  # the order switches
    assert table(pred, "oracle")["class"].tolist() == ["rectangle", "ring"]
    np.testing.assert_array_equal(ranks(np.array([0.2, 0.9, 0.2, 0.5])), [3, 1, 4, 2])


def test_panels_show_what_clears_the_threshold_under_their_own_scoring(fake: Predictor) -> None:
    pred = predict(image(), fake, gt())
    blank = draw(pred.image, [])
    # at 0.5: cls shows both, rescored only the rectangle (0.54), oracle both (0.6, 0.45 < 0.5:
    # only the rectangle)
    for scoring, shown in (("cls", 2), ("rescored", 1), ("final", 1), ("oracle", 1),
                           ("maskness", 1)):
        out = panel(pred, scoring, 0.5)
        changed = (out != blank).any(axis=2)
        ring_area = changed[8 * 6:40 * 6, 8 * 6:24 * 6].mean()  # drawn 6x larger (64 -> 384)
        assert (ring_area > 0.5) == (shown == 2 or scoring == "maskness"), scoring
    assert (panel(pred, "cls", 0.95) == blank).all()  # nothing clears 0.95


def test_draw_fills_at_low_opacity_and_outlines_in_colour() -> None:
    img = np.full((40, 40, 3), 100, np.uint8)
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:30] = True
    out = draw(img, [Shape(mask, (10, 10, 30, 30), "#ff0000", "x")])
    k = out.shape[0] // 40
    inside = out[20 * k, 20 * k]
    assert inside.tolist() == [round(0.65 * 100 + 0.35 * 255), 65, 65]  # 35% red fill
    edge = contour(np.repeat(np.repeat(mask, k, 0), k, 1), max(1, k // 2))
    assert (out[edge] == [255, 0, 0]).all()  # a solid red contour
    assert out[2 * k, 35 * k].tolist() == [100, 100, 100]  # far from it: untouched


def test_without_ground_truth_or_head_the_missing_scorings_are_absent(fake: Predictor) -> None:
    pred = predict(image(), fake)
    assert list(pred.scores()) == ["cls", "maskness", "rescored", "final"]
    assert "true MaskIoU" not in table(pred).columns
    plain = Predictor(FakeDetector(), NAMES, "cpu", kind="plain")
    plain.model = _Headless()
    pred = predict(image(), plain, gt())
    assert list(pred.scores()) == ["cls", "maskness", "oracle"]
    assert rank_changes(pred) == 0 and any("no MaskIoU head" in n for n in pred.notes)


class _Headless(torch.nn.Module):
    def forward(self, images):
        out = FakeDetector()(images)[0]
        return [{"boxes": out["boxes"], "labels": out["labels"], "scores": out["cls_scores"],
                 "masks": out["masks"]}]


def test_real_model_forced_head_reverses_the_classes(split: ValSplit) -> None:
    """The tiny Mask R-CNN: every proposal gets cls 0.6 for class 1 and 0.3 for class 2, and the
    head predicts IoU 0.2 and 0.9: rescoring must reverse the two classes' ranks."""
    names = split.dataset.class_names
    predictor = Predictor(tiny_model(len(names)), names, "cpu")
    pred = predict(split.dataset.image_path(0), predictor, split.ground_truth(0))
    assert len(pred) >= 2 and set(pred.labels.tolist()) == {1, 2}
    for label in (1, 2):
        sel = pred.labels == label
        np.testing.assert_allclose(pred.cls_scores[sel], CLASS_PROBS[label], rtol=1e-5)
        np.testing.assert_allclose(pred.mask_quality[sel], MASK_IOUS[label], rtol=1e-5)
    df = table(pred, "rescored")
    n2 = int((pred.labels == 2).sum())
    assert set(df["class"][:n2]) == {names[2]}  # class 2 first when rescored ...
    assert set(table(pred, "cls")["class"][:len(pred) - n2]) == {names[1]}  # ... 1 by cls
    # the true MaskIoU column agrees with the benchmark's COCO-based computation
    from maskiou.records import Detections, true_mask_ious

    n = len(pred)
    cats = np.array([split.dataset.label_to_cat_id[int(x)] for x in pred.labels])
    dets = Detections(np.full(n, split.dataset.image_ids[0]), cats, np.zeros((n, 4)), pred.rles,
                      pred.cls_scores, pred.mask_quality, pred.maskness, pred.labels, np.zeros(n),
                      pred.scores)
    np.testing.assert_allclose(pred.true_ious, true_mask_ious(dets, split.dataset.coco))


# --- inputs and checkpoints ----------------------------------------------------------------------


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
    with pytest.raises(ImageInputError, match="NaN"):
        load_image(np.full((20, 20), np.nan))
    with pytest.raises(ImageInputError, match="too thin"):
        load_image(np.zeros((10000, 20, 3), np.uint8))


def _bad_inputs(tmp: Path) -> dict[str, Path]:
    (tmp / "notes.txt").write_text("not an image\n")
    (tmp / "fake.png").write_text("text with an image's name\n")
    Image.fromarray(np.zeros((1200, 2666, 3), np.uint8)).save(tmp / "huge.png")
    (tmp / "truncated.png").write_bytes((tmp / "huge.png").read_bytes()[:200])
    Image.fromarray(np.full((40, 50), 77, np.uint8)).save(tmp / "gray.png")
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp / "pixel.png")
    with open(tmp / "big.png", "wb") as f:  # over the upload limit, refused before opening
        f.truncate(MAX_UPLOAD_BYTES + 1)
    return {p.stem: p for p in tmp.iterdir()}


@pytest.mark.parametrize("name, message", [
    ("notes", "notes.txt: not an image file (accepted: PNG, JPG"),
    ("fake", "fake.png: not an image file (PNG, JPEG"),
    ("truncated", "truncated.png: the image file is damaged or truncated"),
    ("pixel", "pixel.png: the image is 1x1 px, too small"),
    ("big", f"big.png: 20.0 MiB is over the {MAX_UPLOAD_BYTES // 2**20} MiB upload limit"),
    ("huge", "(2666x1200 px) downscaled to 1333x600 px"),
    ("gray", "grayscale image"),
])
def test_bad_inputs_one_clear_message(fake: Predictor, tmp_path: Path, name: str,
                                      message: str) -> None:
    app = DemoApp(heads=[], split=None, predictor=fake, upload_dirs=[tmp_path])
    out = app.detect(str(_bad_inputs(tmp_path)[name]), NO_HEAD, IN_MEMORY, 0.1, "rescored",
                     False)
    status, pred = out[STATUS], out[STATUS + 1]
    assert message in status
    if name in ("huge", "gray"):  # converted: detections drawn, with a note
        assert pred is not None and out[0] is not None and len(out[TABLE].data) == 2
        if name == "huge":
            assert pred.image.shape == (600, MAX_SIDE, 3)
    else:  # refused: nothing drawn, one line saying why
        assert status.startswith("⚠️") and status.count("\n") == 0 and pred is None
        assert out[0] is None


def test_upload_limits() -> None:
    assert upload_problem("/nonexistent/a.png") == "a.png: file not found"
    assert MAX_UPLOAD_BYTES == 20 * 2**20


def test_checkpoint_problems_each_say_what_is_wrong(split: ValSplit, checkpoints, tmp_path
                                                    ) -> None:
    (tmp_path / "corrupt.pt").write_text("junk")
    (tmp_path / "other.pt").write_text("junk")
    wrong = write_tiny_checkpoint(tmp_path / "wrong.pt", ["__background__", "a", "b", "c"])
    heads = [checkpoints["head"], checkpoints["plain"], tmp_path / "corrupt.pt", wrong,
             tmp_path / "missing.pt"]
    app = DemoApp([str(checkpoints["plain"])], [str(h) for h in heads], split=split)
    plain = str(checkpoints["plain"])

    def status(head: str) -> str:
        return app.example(0, plain, head, 0.25, "rescored", False)[STATUS]

    assert "not one of the offered checkpoints" in status(str(tmp_path / "other.pt"))
    assert "Not there yet" in status(str(tmp_path / "missing.pt"))
    assert "not a readable checkpoint" in status(str(tmp_path / "corrupt.pt"))
    assert "has no MaskIoU head; choose it as the detector" in status(plain)
    assert "are not the dataset's" in status(str(wrong))
    # the add-on flow: the plain detector alone, then with the head
    text = status(NO_HEAD)
    assert text.startswith("") and "(plain)" in text and "no MaskIoU head" in text
    assert "the final score the model returns changes the rank of" in \
        status(str(checkpoints["head"]))


def test_training_is_refused_unless_the_page_is_local_only(split: ValSplit) -> None:
    assert training_allowed("127.0.0.1", False) and training_allowed("localhost", False)
    assert not training_allowed("0.0.0.0", False) and not training_allowed("127.0.0.1", True)
    for host, share in (("0.0.0.0", False), ("127.0.0.1", True)):
        app = DemoApp(split=split, allow_training=training_allowed(host, share))
        text, _ = app.train_addon()
        assert text.startswith("⚠️ Training is switched off") and app.trainings == 0
        demo = build_app(split=split, allow_training=False)
        assert "train" not in {d["api_name"] for d in demo.config["dependencies"]}


def test_benchmark_summary(tmp_path: Path) -> None:
    assert "python benchmarks/coco_eval.py" in benchmark_summary(tmp_path / "metrics.json")
    ap = lambda v: {"AP": v, "AP50": 0.0, "AP75": 0.0}  # noqa: E731
    metrics = {"segm": {"cls": ap(31.24), "maskness": ap(32.0), "rescored": ap(32.5),
                        "oracle": ap(35.0)}, "correlation": {"head_pearson": 0.741},
               "num_images": 200}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    line = benchmark_summary(tmp_path / "metrics.json")
    assert "(200 validation images" in line and "classification score **31.2**" in line
    assert "× maskness (free) **32.0**" in line and "× predicted MaskIoU **32.5**" in line
    assert "oracle) **35.0**" in line and "0.74" in line
    (tmp_path / "metrics.json").write_text("{")
    assert "could not be read" in benchmark_summary(tmp_path / "metrics.json")


def test_gallery_json_puts_its_images_first(split: ValSplit, tmp_path: Path) -> None:
    ids = split.dataset.image_ids
    path = tmp_path / "gallery.json"
    path.write_text(json.dumps({"val_json": str(split.dataset.ann_file),
                                "images": [{"image_id": int(ids[3])}, {"image_id": int(ids[2])}]}))
    fresh = ValSplit(split.dataset.ann_file, split.images_dir, num_examples=4)
    assert fresh.use_gallery(path) and fresh.example_indices[:2] == [3, 2]
    assert fresh.gallery_size == 2
    path.write_text(json.dumps({"val_json": "/elsewhere.json", "images": []}))
    assert not ValSplit(split.dataset.ann_file, split.images_dir).use_gallery(path)


def test_cli_defaults() -> None:
    args = parse_args([])
    assert (args.host, args.port, args.share, args.checkpoint) == ("127.0.0.1", 7860, False, None)
    args = parse_args(["--checkpoint", "m.pt", "--detector", "p.pt", "--host", "0.0.0.0",
                       "--share"])
    assert (args.host, args.share, args.checkpoint, args.detector) == (
        "0.0.0.0", True, ["m.pt"], ["p.pt"])


# --- the live app --------------------------------------------------------------------------------


def free_port() -> int:
    """A port the OS gives now (the app binds it right after; tests never use fixed ports)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live_app(split: ValSplit, checkpoints, tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("MASKIOU_CACHE", str(cache))
    demo = build_app([str(checkpoints["plain"])], [str(checkpoints["head"])], split=split,
                     metrics_path=cache / "none.json", allow_training=True, threshold=0.25,
                     train_args={"addon_images": 10, "config": {"epochs": 1}})
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(),
                            prevent_thread_lock=True, quiet=True)
    yield url, demo
    demo.close()
    mp.undo()


def test_live_app_every_endpoint(live_app, split: ValSplit, checkpoints) -> None:
    url, demo = live_app
    client = gradio_client.Client(url, verbose=False)
    plain, head = str(checkpoints["plain"]), str(checkpoints["head"])
    # first screen: the first gallery image, rescored
    *panels, table_, plot, status = client.predict(plain, head, 0.25, "rescored", False, False,
                                                   api_name="/first_example")
    assert "the final score the model returns changes the rank of" in status
    assert "with ground truth" in status
    # no thresholds fitted in this head: every detection is worth keeping
    kept_count = re.search(r"(\d+) of (\d+) are worth keeping by the per-class thresholds",
                           status)
    assert kept_count is not None and kept_count.group(1) == kept_count.group(2)
    assert all(Path(p).is_file() for p in panels) and Path(plot).is_file()
    rows = table_["data"]
    assert table_["headers"][:2] == ["#", "class"] and len(rows) >= 2
    # an upload of a validation image: recognised, so its ground truth is used
    path = gradio_client.handle_file(str(split.dataset.image_path(1)))
    *_, status = client.predict(path, plain, head, 0.25, "cls", True, False, api_name="/detect")
    assert "with ground truth" in status
    # a gallery image by number (what a click does), with the plain detector alone
    *_, status = client.predict(2, plain, NO_HEAD, 0.25, "cls", False, False, api_name="/example")
    assert "(plain)" in status and "validation image" in status
    # a non-image upload: the message comes back, the server stays up
    bad = Path(checkpoints["head"]).with_name("notes.txt")
    bad.write_text("hello")
    out = client.predict(gradio_client.handle_file(str(bad)), plain, head, 0.25, "rescored",
                         False, False, api_name="/detect")
    assert "notes.txt: not an image file" in out[-1]
    # training, for real on 10 add-on images and one epoch (the page is local-only here)
    status, choice = client.predict(api_name="/train")
    assert status.startswith("Trained the add-on head")
    # a dropdown update
    assert choice["value"].endswith("synthetic-cpu-torchvision-addon/model_final.pt")
    # ... that offers the new head, labelled without the machine's folders
    label = next(lab for lab, value in choice["choices"] if value == choice["value"])
    assert label.endswith("/synthetic-cpu-torchvision-addon/model_final.pt")
    assert not label.startswith("/") and str(Path.home()) not in label
    *_, status = client.predict(3, plain, choice["value"], 0.25, "rescored", False, False,
                                api_name="/example")
    assert "(add-on)" in status
    assert demo.maskiou_app.trainings == 1


def test_live_app_concurrent_clients(live_app, split: ValSplit, checkpoints) -> None:
    url, _ = live_app
    clients = [gradio_client.Client(url, verbose=False) for _ in range(3)]
    jobs = [c.submit(gradio_client.handle_file(str(split.dataset.image_path(i))),
                     str(checkpoints["plain"]), str(checkpoints["head"]), 0.25, "rescored",
                     False, False, api_name="/detect") for i, c in enumerate(clients)]
    for job in jobs:
        assert "the final score the model returns changes the rank of" in \
            job.result(timeout=120)[-1]


def test_in_memory_predictor(fake: Predictor, tmp_path: Path) -> None:
    Image.fromarray(image()).save(tmp_path / "x.png")
    app = DemoApp(heads=[], split=None, predictor=fake, upload_dirs=[tmp_path])
    calls = FakeDetector.calls
    out = app.detect(str(tmp_path / "x.png"), NO_HEAD, IN_MEMORY, 0.1, "rescored", False)
    assert out[STATUS].startswith("2 detections; the final score the model returns changes "
                                  "the rank of 2.")
    redrawn = app.redraw(out[STATUS + 1], 0.55, "cls", False)
    assert FakeDetector.calls == calls + 1  # a redraw does not run the model again
    assert redrawn[TABLE].data["class"].tolist() == ["ring", "rectangle"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert app.redraw(None, 0.5, "cls", False)[0] == gr.update()
