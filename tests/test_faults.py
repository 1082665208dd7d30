"""The fault suite: every way bad input or a damaged cache passed silently before (issue 26), each
as a test that failed on the code before it, and a property-based fuzz over COCO JSON mutations.

What each case must give: exit code 2 and one ``error:`` line naming the file and the ids (or a
repair that says so), never a traceback, never a silently wrong file. Models are the tiny ones of
``demo/testing.py`` on four 64 px images; two tests start real processes (two concurrent
``maskiou-addon`` runs on one cache).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils

from demo.testing import tiny_model, write_tiny_plain_checkpoint
from maskiou.addon import cli
from maskiou.addon.cache import (
    SHARD_FILES,
    CacheCorruptError,
    CacheError,
    DiskSamples,
    HeadSamples,
    ShardWriter,
    check_shard,
    key_hash,
)
from maskiou.addon.collect import collect_to_cache
from maskiou.data.coco import (
    MAX_PIXELS_ENV,
    CocoFormatError,
    CocoInstanceDataset,
    require_annotations,
)
from maskiou.data.synthetic import generate_synthetic_coco
from maskiou.models.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import coco_eval  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
# one shard of the four images and one of their mirror images, one epoch, no recalibration
ADDON_FLAGS = ["--addon-epochs", "1", "--addon-zoom", "none", "--addon-recalibration", "none",
               "--addon-crossfit-folds", "0"]
FAST = ["--no-progress", "--workers", "0", *ADDON_FLAGS]


# --- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate_synthetic_coco(tmp_path_factory.mktemp("faults") / "addon", 4, 0, seed=1,
                                   image_size=64, progress=False)


@pytest.fixture(scope="module")
def detector(data, tmp_path_factory) -> Path:
    names = CocoInstanceDataset(data.train_json, data.train_images).class_names
    return write_tiny_plain_checkpoint(tmp_path_factory.mktemp("det") / "plain.pt", names)


def addon(capsys, detector: Path, train_json: Path, images: Path, out: Path, *extra: str
          ) -> tuple[int, str, str]:
    """``maskiou-addon`` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = cli.main(["--detector", str(detector), "--train-json", str(train_json),
                     "--train-images", str(images), "--output-dir", str(out), *FAST, *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_line(err: str, prog: str = "maskiou-addon") -> str:
    """The one ``error:`` line of a refused run's stderr (asserting there is exactly one and no
    traceback)."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(f"{prog}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def head_of(path: Path) -> dict[str, torch.Tensor]:
    model = load_checkpoint(path)["model"]
    return {k: v for k, v in model.items() if ".maskiou_head." in k}


def same_head(a: Path, b: Path) -> bool:
    ha, hb = head_of(a), head_of(b)
    return bool(ha) and ha.keys() == hb.keys() and all(torch.equal(ha[k], hb[k]) for k in ha)


def mutated(src: Path, dst: Path, mutate: Any) -> Path:
    d = json.loads(src.read_text())
    mutate(d)
    dst.write_text(json.dumps(d))
    return dst


def flip_bit(path: Path, at: float = 0.5) -> None:
    raw = bytearray(path.read_bytes())
    raw[int(len(raw) * at)] ^= 0x10
    path.write_bytes(bytes(raw))


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that says it is ``width`` x ``height`` (1-bit gray) and holds a few bytes of pixel
    data: all that a reader sees before it decodes (a decompression bomb, without the bytes)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + \
            struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) +
                     chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def tree(path: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``path``: (size, mtime in ns)."""
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*"))}


@contextlib.contextmanager
def read_only(path: Path):
    """The tree at ``path`` read-only as on a read-only mount: write bits off for a user, the
    immutable attribute for root (who ignores write bits)."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [path, *path.rglob("*")]}
        for p, mode in sorted(modes.items(), reverse=True):
            p.chmod(mode & ~0o222)
        try:
            yield
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    if shutil.which("chattr") is None or subprocess.run(
            ["chattr", "-R", "+i", str(path)], capture_output=True).returncode:
        pytest.skip("root here, and no immutable attribute (chattr) to make a folder read-only")
    try:
        assert not os.access(path, os.W_OK)
        yield
    finally:
        subprocess.run(["chattr", "-R", "-i", str(path)], check=True)


@pytest.fixture(scope="module")
def finished(data, detector, tmp_path_factory):
    """One add-on run with its own cache folder: (cache folder, its checkpoint)."""
    root = tmp_path_factory.mktemp("finished")
    code = cli.main(["--detector", str(detector), "--train-json", str(data.train_json),
                     "--train-images", str(data.train_images), "--output-dir", str(root / "out"),
                     "--cache-dir", str(root / "cache"), *FAST])
    assert code == 0
    return root / "cache", root / "out" / "model_final.pt"


# --- COCO input ----------------------------------------------------------------------------------


def _first_annotation(d: dict[str, Any]) -> tuple[dict[str, Any], int, int]:
    ann = d["annotations"][0]
    img = next(i for i in d["images"] if i["id"] == ann["image_id"])
    return ann, img["height"], img["width"]


@pytest.mark.parametrize("counts", ["short list", "long string"])
def test_a_corrupt_rle_is_refused_when_the_file_is_loaded(data, detector, tmp_path, capsys,
                                                          counts):
    """RLE counts that do not add up to height x width (pycocotools would decode the missing
    pixels from uninitialised memory): one line naming the file, annotation and image ids,
    before the detector is loaded (here: a detector file that does not exist)."""
    d = json.loads(data.train_json.read_text())
    ann, h, w = _first_annotation(d)
    if counts == "short list":
        ann["segmentation"] = {"size": [h, w], "counts": [5, 10]}
        total = 15
    else:  # a compressed RLE of an image one column wider
        rle = mask_utils.encode(np.asfortranarray(np.ones((h, w + 1), np.uint8)))
        ann["segmentation"] = {"size": [h, w], "counts": rle["counts"].decode()}
        total = h * (w + 1)
    path = tmp_path / "corrupt.json"
    path.write_text(json.dumps(d))
    expected = (f"corrupt.json: annotation id {ann['id']} (image id {ann['image_id']}): RLE "
                f"counts add up to {total} pixels, not height x width = {h * w}")
    with pytest.raises(CocoFormatError) as e:
        CocoInstanceDataset(path, data.train_images)
    assert str(e.value) == expected
    code, _, err = addon(capsys, tmp_path / "no-detector.pt", path, data.train_images,
                         tmp_path / "out")
    assert code == 2 and error_line(err) == f"maskiou-addon: error: {expected}"
    assert not (tmp_path / "out" / "model_final.pt").exists()


@pytest.mark.parametrize("how", ["no annotations", "all degenerate", "all background"])
def test_a_split_with_no_usable_annotation_is_refused_before_any_detector_runs(
        data, detector, tmp_path, capsys, how):
    def mutate(d: dict[str, Any]) -> None:
        if how == "no annotations":
            d["annotations"] = []
        elif how == "all degenerate":
            for a in d["annotations"]:
                a["bbox"] = [1, 1, 0.5, 0.5]
        else:
            for c in d["categories"]:
                c["name"] = "background" if c["id"] == 1 else c["name"]
            d["annotations"] = [dict(a, category_id=1) for a in d["annotations"]]

    path = mutated(data.train_json, tmp_path / "empty.json", mutate)
    code, _, err = addon(capsys, tmp_path / "no-detector.pt", path, data.train_images,
                         tmp_path / "out")
    line = error_line(err)
    assert code == 2 and f"{path}: no usable annotation for the add-on (4 images" in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    # coco_eval refuses such a scored split the same way, before the add-on trains
    code = coco_eval.main(["--checkpoint", str(detector), "--train-json", str(data.train_json),
                           "--train-images", str(data.train_images), "--val-json", str(path),
                           "--val-images", str(data.train_images), "--output-dir",
                           str(tmp_path / "results"), "--no-progress"])
    line = error_line(capsys.readouterr().err, "coco_eval")
    assert code == 2 and "no usable annotation for the scored split" in line
    assert not (tmp_path / "results").exists()


def test_a_missing_image_is_named_with_its_image_id(data, detector, tmp_path, capsys):
    images = tmp_path / "images"
    shutil.copytree(data.train_images, images)
    ds = CocoInstanceDataset(data.train_json, images)
    ds.image_path(2).unlink()
    code, _, err = addon(capsys, detector, data.train_json, images, tmp_path / "out")
    line = error_line(err)
    assert code == 2 and line == (f"maskiou-addon: error: {ds.image_path(2)}: image file not "
                                  f"found or unreadable (image id {ds.image_ids[2]}): No such "
                                  "file or directory")


# --- image size ----------------------------------------------------------------------------------


def test_an_image_over_the_pixel_limit_is_refused_from_its_header(data, detector, tmp_path,
                                                                  capsys):
    """A 20000 x 20000 PNG (400 Mpx: PIL raises DecompressionBombError) where the JSON says 64 x
    64: both CLIs name the file and the image id in one line, without decoding it."""
    images = tmp_path / "images"
    shutil.copytree(data.train_images, images)
    ds = CocoInstanceDataset(data.train_json, images)
    png_header(ds.image_path(0), 20000, 20000)
    code, _, err = addon(capsys, detector, data.train_json, images, tmp_path / "out")
    line = error_line(err)
    assert code == 2 and f"{ds.image_path(0)}: cannot read image (image id {ds.image_ids[0]})" \
        in line and "over the limit of 67,108,864 px" in line
    code = coco_eval.main(["--checkpoint", str(detector), "--train-json", str(data.train_json),
                           "--train-images", str(images), "--val-json", str(data.train_json),
                           "--val-images", str(data.train_images), "--output-dir",
                           str(tmp_path / "results"), "--no-progress", *ADDON_FLAGS])
    line = error_line(capsys.readouterr().err, "coco_eval")
    assert code == 2 and f"(image id {ds.image_ids[0]})" in line and "over the limit" in line
    # 9000 x 9000 in the JSON and the file (81 Mpx: under PIL's limits, over maskiou's)
    png_header(ds.image_path(0), 9000, 9000)
    big = mutated(data.train_json, tmp_path / "big.json", lambda d: d["images"][0].update(
        height=9000, width=9000))
    code, _, err = addon(capsys, tmp_path / "no-detector.pt", big, images, tmp_path / "out")
    assert code == 2 and error_line(err).endswith(
        f"big.json: image id {ds.image_ids[0]} ({ds.image_path(0).name}): 9000x9000 px "
        "(81.0 Mpx), over the limit of 67,108,864 px per image (raise it with --max-pixels or "
        "MASKIOU_MAX_PIXELS)")


def test_the_pixel_limit_is_set_by_flag_or_environment(data, tmp_path, capsys, monkeypatch):
    import maskiou.data.coco as coco

    monkeypatch.setenv(MAX_PIXELS_ENV, "")  # the default
    monkeypatch.setattr(coco, "_max_pixels", None)  # the flag's limit, undone after the test
    code, _, err = addon(capsys, tmp_path / "no-detector.pt", data.train_json,
                         data.train_images, tmp_path / "out", "--max-pixels", "4095")
    assert code == 2 and "64x64 px (0.0 Mpx), over the limit of 4,095 px" in error_line(err)
    assert os.environ[MAX_PIXELS_ENV] == ""  # the flag sets this process's limit, not the env
    coco._max_pixels = None
    monkeypatch.setenv(MAX_PIXELS_ENV, "4095")
    code = coco_eval.main(["--checkpoint", str(tmp_path / "plain.pt"), "--train-json",
                           str(data.train_json), "--train-images", str(data.train_images),
                           "--val-json", str(data.train_json), "--val-images",
                           str(data.train_images), "--output-dir", str(tmp_path / "r")])
    assert code == 2 and "over the limit of 4,095 px" in error_line(capsys.readouterr().err,
                                                                    "coco_eval")
    monkeypatch.setenv(MAX_PIXELS_ENV, "many")
    code, _, err = addon(capsys, tmp_path / "no-detector.pt", data.train_json,
                         data.train_images, tmp_path / "out")
    assert code == 2 and "MASKIOU_MAX_PIXELS='many': must be a positive" in error_line(err)


# --- the demo ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_app(data, tmp_path_factory):
    gr = pytest.importorskip("gradio", reason="the demo needs gradio: pip install -e '.[demo]'")
    del gr
    from demo.handlers import DemoApp
    from demo.inference import Predictor
    from demo.sources import ValSplit

    uploads = tmp_path_factory.mktemp("uploads")
    split_dir = tmp_path_factory.mktemp("split")
    shutil.copytree(data.train_images, split_dir / "images")
    split = ValSplit(data.train_json, split_dir / "images", num_examples=4)
    predictor = Predictor(tiny_model(len(split.dataset.class_names)),
                          split.dataset.class_names, "cpu", kind="add-on")
    app = DemoApp(heads=[], split=split, predictor=predictor, upload_dirs=[uploads])
    return app, uploads, split


def _status(outputs: tuple[Any, ...]) -> str:
    """The status line: after the panels (one per scoring), the table and the plot."""
    from demo.inference import PANELS

    return outputs[len(PANELS) + 2]


def _prediction(outputs: tuple[Any, ...]) -> Any:
    """The prediction the page keeps, right after the status line."""
    from demo.inference import PANELS

    return outputs[len(PANELS) + 3]


def test_the_demo_opens_only_uploads_and_its_own_images(demo_app, tmp_path):
    from demo.handlers import IN_MEMORY, NO_HEAD

    app, uploads, split = demo_app
    elsewhere = tmp_path / "secret.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(elsewhere)
    run = (NO_HEAD, IN_MEMORY, 0.3, "rescored", False)
    for path in (elsewhere, "/etc/passwd", uploads / ".." / elsewhere.name,
                 uploads / "missing.png"):
        status = _status(app.detect(str(path), *run))
        assert status.startswith("⚠️") and "\n" not in status, path
    assert "secret.png: not a file uploaded through this page" in _status(
        app.detect(str(elsewhere), *run))
    (uploads / "link.png").symlink_to(elsewhere)  # a link out of the folder counts as outside
    assert "not a file uploaded through this page" in _status(
        app.detect(str(uploads / "link.png"), *run))
    shutil.copy(elsewhere, uploads / "ok.png")
    assert "detections" in _status(app.detect(str(uploads / "ok.png"), *run))
    assert "detections" in _status(app.detect(str(split.dataset.image_path(1)), *run))


@pytest.mark.parametrize("size, message", [
    ((12000, 12000), "12000x12000 px (144.0 Mpx), over the limit of 67,108,864 px"),
    ((20000, 20000), "over the limit of 67,108,864 px per image"),
])
def test_the_demo_refuses_an_image_over_the_pixel_limit(demo_app, size, message):
    from demo.handlers import IN_MEMORY, NO_HEAD
    from demo.images import ImageInputError, load_image

    app, uploads, _ = demo_app
    path = png_header(uploads / f"bomb{size[0]}.png", *size)  # 41 bytes
    with pytest.raises(ImageInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_image(path)
    status = _status(app.detect(str(path), NO_HEAD, IN_MEMORY, 0.3, "rescored", False))
    assert status.startswith(f"⚠️ bomb{size[0]}.png: the image is") and message in status
    with pytest.raises(ImageInputError, match="over the limit"):
        load_image(np.zeros((8193, 8193), np.uint8))


@pytest.mark.parametrize("handler, args", [
    ("example", (999,)), ("example", (-1,)), ("example", (1.5,)), ("example", ("2",)),
    ("example", (None,)), ("example", (True,)), ("example", (math.nan,)),
    ("detect", (123,)), ("detect", ({"path": "x.png"},)), ("detect", ("OUTSIDE",)),
    ("rerun", ("junk",)), ("rerun", ({"source": "OUTSIDE", "example": None},)),
    ("rerun", ({"source": None, "example": 10**9},)), ("rerun", ({"example": "0"},)),
])
def test_every_handler_turns_a_bad_argument_into_a_message(demo_app, tmp_path, handler, args):
    from demo.handlers import IN_MEMORY, NO_HEAD

    app, _, _ = demo_app
    outside = tmp_path / "outside.png"  # a readable image, not uploaded through the page
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(outside)
    args = tuple(json.loads(json.dumps(args).replace("OUTSIDE", str(outside))))
    out = getattr(app, handler)(*args, NO_HEAD, IN_MEMORY, 0.3, "rescored", False)
    assert _prediction(out) is None and isinstance(_status(out), str)
    assert _status(out).startswith("⚠️") or args == ("junk",), _status(out)


def test_bad_display_settings_and_a_missing_split_image_are_messages(demo_app, tmp_path):
    from demo.handlers import IN_MEMORY, NO_HEAD

    app, _, split = demo_app
    good = app.example(0, NO_HEAD, IN_MEMORY, 0.3, "rescored", False)
    pred = good[7]
    assert pred is not None
    for threshold, order in (("abc", "cls"), (math.nan, "cls"), (None, "cls"), (0.3, [1])):
        out = app.redraw(pred, threshold, order, False)
        assert out[-1].startswith("⚠️"), (threshold, order)
    assert app.redraw("not a prediction", 0.3, "cls", False)[-1].startswith("⚠️")
    assert _status(app.example(0, NO_HEAD, IN_MEMORY, "x", "cls", False)).startswith("⚠️")
    index = split.example_indices[1]
    path = split.dataset.image_path(index)
    saved = path.read_bytes()
    path.unlink()
    try:
        status = _status(app.example(1, NO_HEAD, IN_MEMORY, 0.3, "rescored", False))
    finally:
        path.write_bytes(saved)
    assert status == (f"⚠️ {path}: image file not found (image id "
                      f"{split.dataset.image_ids[index]}, in {split.dataset.ann_file.name})")


# --- the add-on cache ----------------------------------------------------------------------------

KEY = {"test": "faults"}


@pytest.fixture(scope="module")
def collected(data, tmp_path_factory):
    """The tiny model's detections of the four images and their mirror images, on disk: (model,
    dataset, cache folder, its files' bytes, the samples)."""
    dataset = CocoInstanceDataset(data.train_json, data.train_images)
    model = tiny_model(len(dataset.class_names))
    folder = tmp_path_factory.mktemp("collected") / "cache"
    samples = collect_to_cache(model, dataset, folder, KEY, {"mirror": [0, 1, 2, 3]},
                               progress=False, log=lambda m: None)
    assert samples.shards == ["orig-00000", "flip-00000"] and len(samples) > 0
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    return model, dataset, folder, files, samples.load()


def _copy(collected, tmp_path: Path) -> Path:
    folder = tmp_path / "cache"
    shutil.copytree(collected[2], folder)
    return folder


def _recollect(collected, folder: Path) -> tuple[DiskSamples, list[str]]:
    model, dataset = collected[0], collected[1]
    logs: list[str] = []
    again = collect_to_cache(model, dataset, folder, KEY, {"mirror": [0, 1, 2, 3]},
                             progress=False, log=logs.append)
    return again, logs


def _read_everything(folder: Path) -> None:
    cache = DiskSamples(folder, KEY)
    cache.load()
    cache.rles(torch.arange(len(cache)))


@pytest.mark.parametrize("suffix", SHARD_FILES)
def test_a_flipped_bit_in_any_shard_file_is_named_moved_aside_and_collected_again(
        collected, tmp_path, suffix):
    folder = _copy(collected, tmp_path)
    flip_bit(folder / f"orig-00000.{suffix}")
    with pytest.raises(CacheCorruptError) as e:  # the first read of the shard
        _read_everything(folder)
    assert f"shard orig-00000: orig-00000.{suffix} is damaged (its checksum is not the one " \
        "written)" in str(e.value)
    assert check_shard(folder, "flip-00000", key_hash(KEY)) == ("ok", None)  # the other one
    again, logs = _recollect(collected, folder)
    assert [m for m in logs if "moved aside" in m] == [
        f"add-on cache: shard orig-00000: orig-00000.{suffix} is damaged (its checksum is not "
        f"the one written); moved aside to {next((folder / 'damaged').iterdir())} and collected "
        "again"]
    assert any(m.startswith("collected 4 images") for m in logs)  # that shard only
    moved = next((folder / "damaged").iterdir()) / f"orig-00000.{suffix}"
    assert moved.read_bytes() != collected[3][f"orig-00000.{suffix}"]
    for name, raw in collected[3].items():  # written again bit for bit
        assert (folder / name).read_bytes() == raw, name
    assert torch.equal(again.load().roi_features, collected[4].roi_features)


@pytest.mark.parametrize("suffix, how", [("mask_probs.bin", "truncated"),
                                         ("roi_features.bin", "truncated"),
                                         ("rows.npz", "overwritten")])
def test_a_truncated_or_overwritten_shard_file_is_named_and_collected_again(
        collected, tmp_path, suffix, how):
    folder = _copy(collected, tmp_path)
    path = folder / f"flip-00000.{suffix}"
    raw = path.read_bytes()
    path.write_bytes(raw[:-10] if how == "truncated" else bytes(len(raw)))
    with pytest.raises(CacheCorruptError) as e:
        _read_everything(folder)
    want = (f"flip-00000.{suffix} has {len(raw) - 10} bytes where {len(raw)} were written"
            if how == "truncated" else f"flip-00000.{suffix} is damaged")
    assert f"shard flip-00000: {want}" in str(e.value) and "\n" not in str(e.value)
    again, logs = _recollect(collected, folder)
    assert any("shard flip-00000" in m and "moved aside" in m for m in logs)
    assert torch.equal(again.load().mask_probs, collected[4].mask_probs)


def test_nan_or_infinite_features_are_refused_before_anything_is_written(collected, tmp_path,
                                                                         monkeypatch):
    import maskiou.addon.collect as collect

    model, dataset = collected[0], collected[1]
    real = collect.collecting_adapter(model)

    class Overflowing:  # RoI features beyond float16's range (+-65504) for image index 2
        name = real.name

        def collect(self, m, images):
            outs = real.collect(m, images)
            for img, out in zip(images, outs):
                if torch.equal(img, dataset[2][0]) and len(out["roi_features"]):
                    out["roi_features"] = out["roi_features"] * 1e6 + 1e5
            return outs

    monkeypatch.setattr(collect, "collecting_adapter", lambda m: Overflowing())
    folder = tmp_path / "cache"
    with pytest.raises(CacheError) as e:
        collect_to_cache(model, dataset, folder, KEY, {}, progress=False, log=lambda m: None)
    assert "shard orig-00000 (not written): " in str(e.value)
    assert "have NaN or infinite roi_features in float16 (beyond +-65504, or not finite from " \
        f"the detector) (image ids {dataset.image_ids[2]})" in str(e.value)
    assert sorted(p.name for p in folder.iterdir()) == [".orig-00000.lock"]  # nothing else
    rows = {k: v.numpy() for k, v in vars(collected[4].subset(torch.arange(3))).items()}
    rows["targets"] = np.array([0.5, math.nan, 0.2], np.float32)
    with pytest.raises(CacheError, match=r"1 detections have NaN or infinite targets \(image "
                       rf"ids {int(rows['image_ids'][1])}\)"):
        HeadSamples.from_numpy(rows)
    writer = ShardWriter(tmp_path / "w", "s", "k")
    with pytest.raises(CacheError, match="NaN or infinite targets"):
        writer.append(rows)
    writer.abort()


def test_a_read_only_finished_cache_trains_the_same_head(data, detector, finished, tmp_path,
                                                         capsys):
    """The issue's cluster case: the shared cache mounted read-only. A finished cache is only
    read (same head, no file touched); a damaged one is refused in one line."""
    cache, first = finished
    ro = tmp_path / "ro"
    shutil.copytree(cache, ro)
    before = tree(ro)
    with read_only(ro):
        code, out, err = addon(capsys, detector, data.train_json, data.train_images,
                               tmp_path / "out", "--cache-dir", str(ro))
    assert code == 0, err
    assert tree(ro) == before and same_head(first, tmp_path / "out" / "model_final.pt")
    assert "collected" not in out
    shard = next(ro.iterdir()) / "orig-00000.roi_features.bin"
    flip_bit(shard)
    with read_only(ro):
        code, _, err = addon(capsys, detector, data.train_json, data.train_images,
                             tmp_path / "out2", "--cache-dir", str(ro))
    line = error_line(err)
    assert code == 2 and line == (
        f"maskiou-addon: error: {shard.parent}: the cache is read-only and 1 of its shards are "
        "unfinished or damaged (shard orig-00000: orig-00000.roi_features.bin is damaged (its "
        "checksum is not the one written)); collect into a writable --cache-dir (or repair the "
        "cache where it is writable)")
    assert not (tmp_path / "out2" / "model_final.pt").exists()


def test_a_flipped_bit_under_maskiou_addon_is_repaired_and_trains_the_same_head(
        data, detector, finished, tmp_path, capsys):
    cache, first = finished
    mine = tmp_path / "cache"
    shutil.copytree(cache, mine)
    flip_bit(next(mine.iterdir()) / "flip-00000.roi_features.bin", at=0.3)
    code, out, err = addon(capsys, detector, data.train_json, data.train_images,
                           tmp_path / "out", "--cache-dir", str(mine))
    assert code == 0, err
    assert "add-on cache: shard flip-00000: flip-00000.roi_features.bin is damaged" in out
    assert "moved aside" in out and "collected 4 images" in out
    assert same_head(first, tmp_path / "out" / "model_final.pt")


def test_two_concurrent_maskiou_addon_runs_on_one_cache_finish_with_the_same_head(
        data, detector, tmp_path):
    """Two processes started together on one empty cache (four shards: the images, their
    mirror, zoom-in and zoom-out views): each shard is written once, by whichever process
    takes its lock first; both exit 0 and train the same head."""
    args = [sys.executable, "-m", "maskiou.addon", "--detector", str(detector), "--train-json",
            str(data.train_json), "--train-images", str(data.train_images), "--cache-dir",
            str(tmp_path / "shared"), *FAST, "--addon-zoom", "both"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([*args, "--output-dir", str(tmp_path / f"out{k}")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0 and "Traceback" not in err, err
    assert same_head(tmp_path / "out0" / "model_final.pt", tmp_path / "out1" / "model_final.pt")
    collected = [int(line.split()[1]) for out, _ in results for line in out.splitlines()
                 if line.startswith("collected ")]
    assert sum(collected) == 16  # 4 shards of 4 images, each collected once
    folder = next((tmp_path / "shared").iterdir())
    names = json.loads((folder / "manifest.json").read_text())["shards"]
    assert len(names) == 4 and not list(folder.glob("*.tmp")) and not list(folder.glob(".*.tmp"))
    key = json.loads((folder / f"{names[0]}.json").read_text())["key"]
    assert all(check_shard(folder, n, key) == ("ok", None) for n in names)


# --- fuzz: COCO JSON mutations -------------------------------------------------------------------

H, W = 20, 24
RECTS = [(2, 3, 10, 12), (12, 1, 22, 9), (4, 14, 20, 19), (0, 0, 24, 20)]  # x0, y0, x1, y1


def _rect_mask(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _base() -> dict[str, Any]:
    """Three 24 x 20 images, categories 3/7/11, rectangles as a polygon, an uncompressed RLE
    and a compressed RLE."""
    anns = []
    for k, (x0, y0, x1, y1) in enumerate(RECTS):
        m = _rect_mask(x0, y0, x1, y1)
        if k % 3 == 0:
            seg: Any = [[x0, y0, x1, y0, x1, y1, x0, y1]]
        elif k % 3 == 1:  # column-major runs, starting with a run of zeros
            flat = m.T.reshape(-1)
            bounds = [0, *(np.flatnonzero(np.diff(flat)) + 1).tolist(), len(flat)]
            seg = {"size": [H, W], "counts": [0] * int(flat[0]) + np.diff(bounds).tolist()}
        else:
            seg = {"size": [H, W],
                   "counts": mask_utils.encode(np.asfortranarray(m))["counts"].decode()}
        anns.append({"id": 100 + k, "image_id": 1 + k % 3, "category_id": (3, 7, 11)[k % 3],
                     "iscrowd": 0, "bbox": [x0, y0, x1 - x0, y1 - y0],
                     "area": float(m.sum()), "segmentation": seg})
    return {"images": [{"id": i, "file_name": f"{i}.png", "height": H, "width": W}
                       for i in (1, 2, 3)],
            "categories": [{"id": c, "name": n} for c, n in ((3, "a"), (7, "b"), (11, "c"))],
            "annotations": anns}


JUNK = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                 st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4),
                 st.lists(st.integers(-3, 30), max_size=3), st.just({}))
NUMBER = st.one_of(st.integers(-50, 600), st.floats(-1e6, 1e6), st.sampled_from(
    [math.nan, math.inf, -math.inf, 1e300, 0, 0.5, 24.0]))


@st.composite
def mutation(draw) -> tuple[str, Any]:
    kind = draw(st.sampled_from([
        "counts", "compressed", "polygon", "bbox", "area", "category_id", "image_id", "iscrowd",
        "drop_key", "segmentation", "rle_size", "image_size", "file_name", "image_id_dup",
        "category_name", "category_renumber", "background_category", "no_annotations",
        "ann_id"]))
    if kind == "counts":
        return kind, draw(st.lists(st.integers(-5, 600), max_size=8))
    if kind == "compressed":
        return kind, draw(st.text(alphabet=st.characters(min_codepoint=40, max_codepoint=120),
                                  max_size=12))
    if kind == "polygon":
        return kind, draw(st.lists(NUMBER, max_size=10))
    if kind == "bbox":
        return kind, draw(st.lists(NUMBER, min_size=3, max_size=5))
    if kind in ("area", "category_id", "image_id", "iscrowd", "segmentation", "ann_id"):
        return kind, draw(st.one_of(JUNK, NUMBER, st.sampled_from([3, 7, 11, 1, 2, 3.0, 100])))
    if kind == "drop_key":
        return kind, draw(st.sampled_from(["segmentation", "bbox", "area", "id", "image_id",
                                           "category_id", "iscrowd"]))
    if kind == "rle_size":
        return kind, draw(st.lists(st.one_of(st.integers(-2, 30), st.floats(0, 30)),
                                   max_size=3))
    if kind == "image_size":
        return kind, (draw(st.sampled_from(["height", "width"])),
                      draw(st.one_of(NUMBER, JUNK, st.sampled_from([H, W, 10**5]))))
    if kind == "file_name":
        return kind, draw(st.one_of(st.sampled_from(["1.png", "2.png", "missing.png", "big.png",
                                                     "notes.txt", ""]), JUNK))
    if kind == "category_name":
        return kind, draw(st.sampled_from(["background", "__background__", "Background", "a",
                                           "z", 5]))
    if kind == "category_renumber":
        return kind, draw(st.sampled_from([0, 1, 2, 4, 99, -1]))
    return kind, None


def _apply(d: dict[str, Any], kind: str, value: Any, k: int) -> None:
    anns, imgs, cats = d["annotations"], d["images"], d["categories"]
    ann = anns[k % len(anns)] if anns else None
    if kind == "counts" and ann:
        ann["segmentation"] = {"size": [H, W], "counts": value}
    elif kind == "compressed" and ann:
        ann["segmentation"] = {"size": [H, W], "counts": value}
    elif kind == "polygon" and ann:
        ann["segmentation"] = [value]
    elif kind == "rle_size" and ann and isinstance(ann["segmentation"], dict):
        ann["segmentation"]["size"] = value
    elif kind == "drop_key" and ann:
        ann.pop(value, None)
    elif kind in ("bbox", "area", "category_id", "image_id", "iscrowd", "segmentation") and ann:
        ann[kind] = value
    elif kind == "ann_id" and ann:
        ann["id"] = value if value is not None else anns[(k + 1) % len(anns)]["id"]
    elif kind == "image_size":
        imgs[k % 3][value[0]] = value[1]
    elif kind == "file_name":
        imgs[k % 3]["file_name"] = value
    elif kind == "image_id_dup":
        imgs[k % 3]["id"] = imgs[(k + 1) % 3]["id"]
    elif kind == "category_name":
        cats[k % 3]["name"] = value
    elif kind == "category_renumber":
        old = cats[k % 3]["id"]
        cats[k % 3]["id"] = value
        for a in anns:
            a["category_id"] = value if a.get("category_id") == old else a.get("category_id")
    elif kind == "background_category":
        cats.insert(0, {"id": 0, "name": "background"})
    elif kind == "no_annotations":
        d["annotations"] = []


@pytest.fixture(scope="module")
def fuzz_images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz_images")
    rng = np.random.default_rng(0)
    for i in (1, 2, 3):
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    Image.fromarray(np.zeros((H + 1, W, 3), np.uint8)).save(folder / "big.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def fuzz_detector(tmp_path_factory) -> Path:
    return write_tiny_plain_checkpoint(tmp_path_factory.mktemp("fuzz_det") / "plain.pt",
                                       ["__background__", "a", "b", "c"])


def _reference_mask(seg: Any, h: int, w: int) -> np.ndarray:
    """The mask of a checked segmentation: an uncompressed RLE decoded here, independently of
    pycocotools; a polygon or compressed RLE by pycocotools."""
    if isinstance(seg, list):
        return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(seg, h, w)))
    if isinstance(seg["counts"], str):
        return mask_utils.decode({"size": [h, w], "counts": seg["counts"].encode()})
    flat, pos = np.zeros(h * w, np.uint8), 0
    for k, n in enumerate(int(c) for c in seg["counts"]):
        flat[pos:pos + n] = k % 2
        pos += n
    return flat.reshape(w, h).T


def _check_accepted(ds: CocoInstanceDataset, d: dict[str, Any]) -> None:
    """What an accepted file must give: images and targets of the sizes the JSON says, labels
    by the one class mapping, masks equal to an independent decoding and the same on every
    read, finite boxes inside the image."""
    cats = {c["id"]: c for c in d["categories"]}
    anns = {a["id"]: a for a in d["annotations"]}
    for i in range(len(ds)):
        image, target = ds[i]
        h, w = ds.get_height_and_width(i)
        assert image.shape == (3, h, w) and torch.isfinite(image).all()
        boxes, masks = target["boxes"], target["masks"]
        assert torch.isfinite(boxes).all() and (boxes[:, 2:] <= torch.tensor([w, h])).all()
        assert (boxes[:, :2] >= 0).all() and masks.shape[1:] == (h, w)
        assert torch.equal(masks, ds[i][1]["masks"])  # no uninitialised memory
        refs = [(x, _reference_mask(x.segmentation, h, w))  # polygons: those of >= 3 points
                for x in ds.instances(i)]
        refs = [(x, ref) for x, ref in refs if ref.any()]  # a polygon may cover no pixel
        assert len(refs) == len(masks)
        for (inst, ref), label, mask in zip(refs, target["labels"].tolist(), masks.numpy()):
            name = cats[anns[inst.ann_id]["category_id"]]["name"]
            assert ds.class_names[label] == str(name) and str(name).lower() not in (
                "background", "__background__")
            assert np.array_equal(mask, ref)


@settings(max_examples=120, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=st.lists(st.tuples(mutation(), st.integers(0, 7)), min_size=1, max_size=3))
def test_fuzz_the_reader_refuses_in_one_line_or_reads_correctly(fuzz_images, tmp_path, ops):
    """Property: a mutated COCO file is either refused with one CocoFormatError line naming the
    file (what both CLIs print after ``error:``, exit code 2), or read correctly; never another
    exception, never wrong masks or labels."""
    d = _base()
    for (kind, value), k in ops:
        _apply(d, kind, copy.deepcopy(value), k)
    path = tmp_path / "fuzz.json"
    path.write_text(json.dumps(d))
    try:
        ds = require_annotations(CocoInstanceDataset(path, fuzz_images), "the fuzz")
        _check_accepted(ds, json.loads(path.read_text()))
    except CocoFormatError as e:
        assert "\n" not in str(e) and "fuzz.json" in str(e), str(e)


@settings(max_examples=8, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=st.lists(st.tuples(mutation(), st.integers(0, 7)), min_size=1, max_size=2))
def test_fuzz_maskiou_addon_exits_0_with_a_checkpoint_or_2_with_one_line(
        fuzz_images, fuzz_detector, tmp_path_factory, ops):
    """Property, through the CLI: exit 0 and a checkpoint of the file's classes, or exit 2, one
    ``error:`` line and no checkpoint; never a traceback."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    d = _base()
    for (kind, value), k in ops:
        _apply(d, kind, copy.deepcopy(value), k)
    root = tmp_path_factory.mktemp("fuzz_cli")
    path = root / "fuzz.json"
    path.write_text(json.dumps(d))
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        code = cli.main(["--detector", str(fuzz_detector), "--train-json", str(path),
                         "--train-images", str(fuzz_images), "--output-dir", str(root / "out"),
                         *FAST])
    final = root / "out" / "model_final.pt"
    if code == 0:
        ckpt = load_checkpoint(final)
        assert ckpt["class_names"] == CocoInstanceDataset(path, fuzz_images).class_names
    else:
        assert code == 2 and not final.exists()
        error_line(err.getvalue())
