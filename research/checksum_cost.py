"""What the add-on cache's checksums cost on the main job: the time to hash the bytes of its
shards against the time to collect them, in one run.

    python research/checksum_cost.py        # writes docs/measurements/checksum_cost.json

Runs the main job's collection once, as ``python benchmarks/coco_eval.py`` does it (the shipped
plain detector over the 2,000 add-on images and the mirror views of the 1,600 the head trains
on), into a fresh cache folder; then, on the shards it wrote, times:

- the cache's checksum (xxHash XXH3-128) and BLAKE2b (``hashlib``) over every shard file's
  bytes, held in memory (the cost of hashing them as they are written);
- the check a later run makes when it first reads a shard (``file_checksum``: read from the page
  cache and hash);
- the NaN/infinity check of the float16 feature rows (``nonfinite_rows``).

The collection's own time includes the checksums computed as the shards are written, so the
ratios are upper bounds of what they add. Each time is taken as wall time and as this process's
CPU time (all its threads): on a shared machine the wall times move with the other load, the
CPU times much less, so the ratios are given for both.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from maskiou.addon.cache import (  # noqa: E402
    FEATURES,
    SHARD_FILES,
    checksum,
    file_checksum,
    nonfinite_rows,
)


def timed(fn, repeats: int = 3) -> tuple[float, float]:
    """(wall, CPU) seconds of the fastest of ``repeats`` calls."""
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        best = min(best, (time.perf_counter() - t0, time.process_time() - c0))
    return best


def main(argv: list[str] | None = None) -> int:
    from maskiou.addon.collect import collect_to_cache
    from maskiou.addon.fit import AddonConfig
    from maskiou.addon.run import addon_views, attach_to_detector, cache_key, holdout_images
    from maskiou.data.coco import CocoInstanceDataset
    from maskiou.evaluation.benchmark import ADDON_IMAGES, addon_split, default_detector
    from maskiou.records import file_sha1, image_fingerprints

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=str(ROOT / "docs" / "measurements" /
                                           "checksum_cost.json"))
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    detector = default_detector(progress=not args.no_progress)
    dataset = CocoInstanceDataset(*addon_split(ADDON_IMAGES, progress=not args.no_progress))
    cfg = AddonConfig()  # the main job's
    model, _ = attach_to_detector(detector, cfg)
    ids = [int(i) for i in dataset.image_ids]
    crossfit = cfg.folds_for(len(ids)) >= 2 and cfg.recalibration != "none"
    held = set() if crossfit else holdout_images(ids, cfg.recalibration_holdout, cfg.seed)
    views = addon_views(ids, held, cfg)
    key = cache_key(file_sha1(detector), image_fingerprints(dataset), views, cfg.max_detections)
    with tempfile.TemporaryDirectory(prefix="maskiou-checksum-cost-") as tmp:
        t0, c0 = time.perf_counter(), time.process_time()
        samples = collect_to_cache(model, dataset, Path(tmp), key, views,
                                   max_detections=cfg.max_detections,
                                   progress=not args.no_progress)
        collect = (time.perf_counter() - t0, time.process_time() - c0)
        files = [Path(tmp) / f"{name}.{suffix}" for name in samples.shards
                 for suffix in SHARD_FILES]
        blobs = [f.read_bytes() for f in files]
        features = [np.frombuffer(b, np.float16).reshape(-1, int(np.prod(samples.shapes[f])))
                    for f, b in zip((str(f).rsplit(".", 2)[-2] for f in files), blobs)
                    if f in FEATURES]

        def xxh() -> None:
            for b in blobs:
                h = checksum()
                h.update(b)
                h.hexdigest()

        def blake() -> None:
            for b in blobs:
                hashlib.blake2b(b).hexdigest()

        measured = {"xxh3_128": timed(xxh), "blake2b": timed(blake),
                    "verify_on_first_read": timed(lambda: [file_checksum(f) for f in files]),
                    "nonfinite_check": timed(lambda: [nonfinite_rows(a) for a in features])}
    nbytes = sum(len(b) for b in blobs)
    result: dict[str, object] = {
        "images_collected": len(ids) + sum(len(v) for v in views.values()),
        "detections": len(samples), "shards": len(samples.shards), "files": len(files),
        "shard_bytes": nbytes, "collect_seconds": round(collect[0], 2),
        "collect_cpu_seconds": round(collect[1], 2)}
    for name, (wall, cpu) in measured.items():
        result[f"{name}_seconds"] = round(wall, 4)
        result[f"{name}_cpu_seconds"] = round(cpu, 4)
        result[f"{name}_share_of_collection"] = round(wall / collect[0], 5)
        result[f"{name}_cpu_share_of_collection"] = round(cpu / collect[1], 5)
    for name in ("xxh3_128", "blake2b"):
        result[f"{name}_gb_per_s"] = round(nbytes / measured[name][0] / 1e9, 2)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print("share of the collection, wall / CPU time: " + ", ".join(
        f"{name} {100 * result[f'{name}_share_of_collection']:.2f}% / "
        f"{100 * result[f'{name}_cpu_share_of_collection']:.2f}%" for name in measured)
        + f"; wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
