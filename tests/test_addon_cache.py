"""The add-on's disk cache: shards written and read back exactly, refused for another key,
resumed after an interruption, the same under torchrun as in one process, and head training
from disk identical to training from memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import random_samples

from demo.testing import tiny_model, write_tiny_plain_checkpoint
from maskiou import MaskIoUHead, attach_maskiou_head
from maskiou.addon.cache import (
    FEATURES,
    SCALARS,
    CacheKeyError,
    DiskSamples,
    HeadSamples,
    ShardWriter,
    key_hash,
    write_manifest,
)
from maskiou.addon.collect import (
    collect_samples,
    collect_to_cache,
    collecting_adapter,
    shard_plan,
)
from maskiou.addon.fit import AddonConfig, predict_ious, train_head
from maskiou.data.coco import CocoInstanceDataset
from maskiou.data.synthetic import generate_synthetic_coco
from maskiou.models.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _rows(n: int, start: int, c: int = 3, s: int = 2, m: int = 4) -> dict[str, np.ndarray]:
    """n rows whose every value says which row it is: feature = row id + position / 1000."""
    ids = np.arange(start, start + n)
    feats = ids[:, None, None, None] + np.arange(c * s * s).reshape(1, c, s, s) / 1000
    return {"roi_features": feats, "mask_probs": np.tile(ids[:, None, None] / 100, (1, m, m)),
            "labels": ids % 3, "cls_scores": ids / 100, "maskness": ids / 200,
            "rel_areas": ids / 300, "targets": ids / 400, "image_ids": ids // 2,
            "views": ids % 2, "boxes": ids[:, None] + np.arange(4)[None, :] / 10}


def _write_cache(directory: Path, sizes: list[int], key: dict) -> DiskSamples:
    h, start, names = key_hash(key), 0, []
    for k, n in enumerate(sizes):
        w = ShardWriter(directory, f"s{k}", h)
        for part in (n // 2, n - n // 2):  # two appends per shard
            w.append(_rows(part, start))
            start += part
        w.close()
        names.append(f"s{k}")
    write_manifest(directory, key, names, {"roi_features": [3, 2, 2], "mask_probs": [4, 4]})
    return DiskSamples(directory, key)


def test_disk_cache_reads_any_rows_in_any_order_exactly(tmp_path):
    cache = _write_cache(tmp_path, [5, 0, 7, 3], {"k": 1})
    assert len(cache) == 15 and cache.nbytes == 15 * (12 + 16) * 2
    rows = torch.tensor([14, 0, 5, 6, 4, 4, 13, 12, 11, 7])  # across shards, repeats, runs
    got = cache.batch(rows)
    want = HeadSamples.from_numpy({k: v[rows.numpy()] for k, v in _rows(15, 0).items()})
    assert got.roi_features.dtype == torch.float16 and got.roi_features.shape == (10, 3, 2, 2)
    for f in ("roi_features", "mask_probs"):
        assert torch.equal(getattr(got, f), getattr(want, f).half())
    assert got.labels.tolist() == (rows % 3).tolist()
    assert got.image_ids.tolist() == (rows // 2).tolist()
    assert got.targets.tolist() == pytest.approx((rows / 400).tolist())
    assert torch.equal(cache.load().roi_features, cache.batch(torch.arange(15)).roi_features)
    with pytest.raises(IndexError):
        cache.batch(torch.tensor([15]))


def test_a_cache_is_refused_for_another_key_and_an_unfinished_shard_is_not_read(tmp_path):
    _write_cache(tmp_path, [4, 4], {"detector": "a"})
    with pytest.raises(CacheKeyError, match="another detector"):
        DiskSamples(tmp_path, {"detector": "b"})
    (tmp_path / "s1.json").unlink()  # the marker a shard gets last
    with pytest.raises(FileNotFoundError, match="shard s1 is missing or unfinished"):
        DiskSamples(tmp_path, {"detector": "a"})
    with pytest.raises(FileNotFoundError, match="no add-on cache"):
        DiskSamples(tmp_path / "elsewhere")


def test_an_aborted_shard_leaves_nothing_that_looks_written(tmp_path):
    w = ShardWriter(tmp_path, "s0", "h")
    w.append(_rows(3, 0))
    w.abort()
    assert list(tmp_path.iterdir()) == []
    w = ShardWriter(tmp_path, "s0", "h")
    with pytest.raises(ValueError, match="2 rows of roi_features for 3 detections"):
        w.append({**_rows(3, 0), "roi_features": _rows(2, 0)["roi_features"]})


def test_shard_plan_slices_images_then_mirrors_in_fixed_shards():
    plan = shard_plan(5, {"photometric": [1], "mirror": [0, 2, 4]}, 2)
    assert plan == [("orig-00000", [0, 1], "image"), ("orig-00001", [2, 3], "image"),
                    ("orig-00002", [4], "image"), ("flip-00000", [0, 2], "mirror"),
                    ("flip-00001", [4], "mirror"), ("photo-00000", [1], "photometric")]


def _to_disk(samples: HeadSamples, directory: Path, shard_rows: int = 40) -> DiskSamples:
    key, names = {"test": 1}, []
    for k, start in enumerate(range(0, len(samples), shard_rows)):
        w = ShardWriter(directory, f"s{k}", key_hash(key))
        part = samples.subset(torch.arange(start, min(start + shard_rows, len(samples))))
        w.append({f: getattr(part, f).numpy() for f in
                  ("roi_features", "mask_probs", "labels", "cls_scores", "maskness",
                   "rel_areas", "targets", "image_ids", "views", "boxes")})
        w.close()
        names.append(f"s{k}")
    write_manifest(directory, key, names, {"roi_features": [8, 14, 14], "mask_probs": [28, 28]})
    return DiskSamples(directory, key)


@pytest.mark.threads
@pytest.mark.parametrize("workers", [0, 1])
def test_training_from_disk_equals_training_from_memory_bit_for_bit(tmp_path, workers):
    memory = random_samples(96)
    disk = _to_disk(memory, tmp_path)
    cfg = AddonConfig(epochs=2, batch_size=16)
    rows = torch.arange(5, 90)  # a subset, as the held-out split makes one
    # the same float16 rows in the same seeded batches, one process: the same computation
    heads = []
    for source in (memory, disk):
        torch.manual_seed(0)
        head = MaskIoUHead(8, 3, conv_channels=8, num_convs=2, fc_dim=32, score_inputs=2)
        log = train_head(head, source, cfg, rows, progress=False, workers=workers)
        assert len(log) == 2 and log[0]["samples_per_s"] > 0
        heads.append(head)
    for (name, a), b in zip(heads[0].state_dict().items(), heads[1].state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(predict_ious(heads[0], memory, rows), predict_ious(heads[1], disk, rows))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("cache_data")
    return generate_synthetic_coco(d / "addon", 10, 0, seed=1, progress=False)


@pytest.fixture(scope="module")
def collected(data):
    """The tiny detector's rows of the 10 images, then of the mirror images of 1 and 3, in
    memory, the detector run on two images a batch."""
    dataset = CocoInstanceDataset(data.train_json, data.train_images)
    model = tiny_model(len(dataset.class_names))
    memory = collect_samples(model, dataset, batch_size=2, progress=False)
    mirrored = collect_samples(model, dataset, [1, 3], view="mirror", batch_size=2,
                               progress=False)
    return model, dataset, HeadSamples.concat([memory, mirrored])


SHARDS = ["orig-00000", "orig-00001", "orig-00002", "flip-00000"]


@pytest.mark.threads
def test_collection_to_disk_equals_collection_in_memory_and_resumes(collected, tmp_path):
    # The detector's float sums depend on how many images a batch holds (and on how the work
    # is split between threads): both sides run it on the same batches, [0, 1], [2, 3], ... and
    # the mirror images [1, 3], in one process, so each row is the same computation: every
    # field, float ones included, is equal bit for bit. Other batches: the test below.
    model, dataset, both = collected
    key = {"test": "collect"}
    disk = collect_to_cache(model, dataset, tmp_path, key, {"mirror": [1, 3]}, batch_size=2,
                            shard_images=4, progress=False, log=lambda m: None)
    assert disk.shards == SHARDS
    got = disk.load()
    for f in (*FEATURES, *SCALARS):
        assert torch.equal(getattr(got, f), getattr(both, f)), f
    # an interrupted collection: the finished shards stay, the unfinished one is written again
    # (by the same batches: equal bit for bit)
    (tmp_path / "orig-00001.json").unlink()
    stamp = {n: (tmp_path / f"{n}.roi_features.bin").stat().st_mtime_ns for n in disk.shards}
    logs = []
    again = collect_to_cache(model, dataset, tmp_path, key, {"mirror": [1, 3]}, batch_size=2,
                             shard_images=4, progress=False, log=logs.append)
    assert logs and logs[0].startswith("collected 4 images")
    assert torch.equal(again.load().roi_features, got.roi_features)
    assert (tmp_path / "orig-00000.roi_features.bin").stat().st_mtime_ns == stamp["orig-00000"]
    with pytest.raises(ValueError, match="multiple of batch_size"):
        collect_to_cache(model, dataset, tmp_path, key, {}, batch_size=3, shard_images=4)


def assert_within_float16_rounding(got: torch.Tensor, want: torch.Tensor, name: str) -> None:
    """``got`` equals ``want`` (float16 rows) up to rounding, in a tolerance no real error fits.

    The same detector on other batches gives float32 sums that differ in their last bits, by a
    share of the largest value's size, and float16 rounding may add a step: measured, at most
    one float16 step of the largest value (0.0078 of the RoI features' 11.8, 1/1500 of it).
    The tolerance, 1/512 of the largest value, is three times that. A real error (the row of
    another detection, image, box or view) moves values by tenths of the scale: every row
    differs from the next by more than ten tolerances, checked here, so a row off by one
    cannot pass.
    """
    got, want = got.float(), want.float()
    atol = want.abs().max().item() / 512
    torch.testing.assert_close(got, want, rtol=0, atol=atol, msg=name)
    neighbour = (want - want.roll(1, 0)).abs().flatten(1).amax(1)
    assert (neighbour > 10 * atol).all(), f"{name}: two rows closer than the tolerance allows"


@pytest.mark.threads
def test_collection_in_other_batches_gives_the_same_rows_up_to_float16_rounding(collected,
                                                                                tmp_path):
    """Each image alone (batch_size=1) against two a batch: the same shards, detections, labels
    and ids exactly; the float features within rounding; the true MaskIoU within a pixel."""
    model, dataset, both = collected
    disk = collect_to_cache(model, dataset, tmp_path, {"test": "one"}, {"mirror": [1, 3]},
                            batch_size=1, shard_images=4, progress=False, log=lambda m: None)
    assert disk.shards == SHARDS
    got = disk.load()
    # exact: which detection, of which image and view; cls_scores too, as the tiny detector's
    # classifier has zero weights (its scores are the softmax of its biases, whatever the
    # features)
    for f in ("labels", "image_ids", "views", "cls_scores"):
        assert torch.equal(getattr(got, f), getattr(both, f)), f
    for f in FEATURES:
        assert_within_float16_rounding(getattr(got, f), getattr(both, f), f)
    # the true MaskIoU comes from the pasted mask binarized at 0.5: a pixel whose probability
    # lies within rounding of 0.5 may flip, which moves the IoU by 1 / union (under 0.005 here,
    # where every detection's union with a ground truth of its class is 204 pixels or more); a
    # wrong ground truth, box or view moves it by tenths
    assert got.targets.tolist() == pytest.approx(both.targets.tolist(), rel=0, abs=0.01)


def test_collection_needs_an_adapter_that_can_collect():
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from custom_adapter import TinySegmenter, TinySegmenterAdapter
    finally:
        sys.path.remove(str(ROOT / "examples"))
    class CannotCollect(TinySegmenterAdapter):
        capabilities = frozenset({"predict"})

    model = attach_maskiou_head(TinySegmenter(), adapter=TinySegmenterAdapter())
    import maskiou.addon.collect as collect

    original = collect.find_adapter
    collect.find_adapter = lambda m: CannotCollect()
    try:
        with pytest.raises(TypeError, match="does not declare the capability 'collect'"):
            collecting_adapter(model)
    finally:
        collect.find_adapter = original


def test_torchrun_collection_writes_the_shards_of_one_process(data, tmp_path):
    """maskiou-addon under torchrun with 2 gloo processes: each rank writes its shards, rank 0
    trains; the shards and the checkpoint's head equal those of one process."""
    names = CocoInstanceDataset(data.train_json, data.train_images).class_names
    detector = write_tiny_plain_checkpoint(tmp_path / "plain.pt", names)
    common = ["--detector", str(detector), "--train-json", str(data.train_json),
              "--train-images", str(data.train_images), "--no-progress", "--addon-epochs", "1",
              "--workers", "0"]
    # torchrun gives each process one thread; so does the single run: a convolution's sums
    # depend on how its work is split between threads, not on how the images are
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "maskiou.addon", *common, "--output-dir",
                          str(tmp_path / "one")], capture_output=True, text=True, timeout=600,
                         env=env)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", "-m", "maskiou.addon", *common, "--output-dir",
                          str(tmp_path / "two")], capture_output=True, text=True, timeout=600,
                         env=env)
    assert two.returncode == 0, two.stderr
    assert "on rank 0 of 2" in two.stdout  # each rank collected its share
    caches = [next((tmp_path / r / "cache").iterdir()) for r in ("one", "two")]
    files = sorted(p.name for p in caches[0].iterdir())
    assert files == sorted(p.name for p in caches[1].iterdir())
    manifest = json.loads((caches[0] / "manifest.json").read_text())
    # the 10 images, then their mirror images and both zoom views (automatic below 1,000
    # add-on images), 64 images a shard
    assert manifest["shards"] == ["orig-00000", "flip-00000", "zin-00000", "zout-00000"]
    for name in manifest["shards"]:
        for f in (*FEATURES, "rows"):
            suffix = "npz" if f == "rows" else "bin"
            a, b = (c / f"{name}.{f}.{suffix}" for c in caches)
            assert a.read_bytes() == b.read_bytes(), a.name
    ckpts = [load_checkpoint(tmp_path / r / "model_final.pt")["model"] for r in ("one", "two")]
    head = [k for k in ckpts[0] if ".maskiou_head." in k]
    assert head and all(torch.equal(ckpts[0][k], ckpts[1][k]) for k in head)


def test_the_held_out_check_needs_the_masks_and_skips_a_cache_written_without_them(tmp_path):
    from maskiou.addon.run import heldout_gain

    cache = _write_cache(tmp_path, [4, 4], {"k": 2})  # rows appended without their masks
    assert cache.rles(torch.tensor([5, 0])) == [None, None]
    assert heldout_gain(cache, torch.arange(8), torch.rand(8), None, dataset=None) is None
    assert heldout_gain(random_samples(8), torch.arange(8), torch.rand(8), None, None) is None
