"""The add-on at a COCO user's scale: a disk cache of full-width R-50-FPN RoI features, the head
trained on it by ``maskiou-addon``, its peak memory, disk size and speeds.

    python benchmarks/addon_scale.py                      # 20 GB cache (and a tenth of it)
    python benchmarks/addon_scale.py --gb 2 --tenth-gb 0.2 --out /tmp/scale   # a quick look
    python benchmarks/addon_scale.py --final-score        # the final score's fit at COCO size

``--final-score`` runs ``benchmarks/final_score_scale.py`` instead (the recalibration's weight
search and held-out check on 500, 1,000 and 5,000 generated COCO-shaped images; its other
options, ``--images`` among them, pass through).

Steps, each timed:

1. collection: a real R-50-FPN Mask R-CNN (random weights, GroupNorm, 800/1333 resizing: the
   arithmetic of a COCO model) runs the add-on's collection pass over ``--collect-images``
   generated images; its images/s is the collection speed on this machine.
2. cache: those real rows (256 x 14 x 14 RoI features, 28 x 28 masks, 100 a image) are written
   again, in the cache's own shards and for the cache key ``maskiou-addon`` computes, until the
   cache holds ``--gb`` GB (and, for the comparison, ``--tenth-gb``): a cache of a COCO user's
   size without hours of CPU detector time.
3. ``maskiou-addon`` (the CLI, in its own process) trains the head for one epoch on each cache,
   streaming from disk; peak resident memory of its process tree, wall time and training
   samples/s are read from it.
4. throughput of head training from the disk cache against the same rows in memory, measured in
   one process, one after the other, on the same batches.

Writes ``scale.json`` and ``scale.md`` to ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maskiou.addon.cache import (  # noqa: E402
    FEATURES,
    SCALARS,
    DiskSamples,
    ShardWriter,
    key_hash,
    write_manifest,
)
from maskiou.addon.collect import collect_to_cache, shard_plan  # noqa: E402
from maskiou.addon.fit import AddonConfig, train_head  # noqa: E402
from maskiou.addon.run import attach_to_detector, cache_key  # noqa: E402
from maskiou.data.coco import CocoInstanceDataset  # noqa: E402
from maskiou.data.synthetic import generate_synthetic_coco  # noqa: E402
from maskiou.models.checkpoint import save_atomic  # noqa: E402
from maskiou.models.config import resolve  # noqa: E402
from maskiou.models.load import build_model  # noqa: E402
from maskiou.records import file_sha1, image_fingerprints  # noqa: E402

DETECTIONS = 100  # per image, as torchvision's default
ROW_BYTES = (256 * 14 * 14 + 28 * 28) * 2


def r50_detector(path: Path, class_names: list[str]) -> Path:
    """A plain R-50-FPN Mask R-CNN checkpoint (random weights, GroupNorm, COCO resizing)."""
    if path.is_file():
        return path
    cfg = resolve("coco-r50-1x", {"weights_backbone": "none", "norm": "gn", "maskiou": False,
                                  "dataset": "synthetic"})
    torch.manual_seed(0)
    model = build_model(cfg, len(class_names))
    model.roi_heads.score_thresh = 0.0  # random weights: keep 100 detections an image
    save_atomic({"model": model.state_dict(), "config": cfg.to_dict(),
                 "class_names": class_names,
                 "label_to_cat_id": {i: i for i in range(1, len(class_names))},
                 "iteration": 0, "format": "maskiou-train-1"}, path)
    return path


def collect_real_rows(detector: Path, dataset: CocoInstanceDataset, images: int, out: Path
                      ) -> tuple[DiskSamples, float]:
    """The collection pass over ``images`` images; (its cache, images/s)."""
    model, _ = attach_to_detector(detector, AddonConfig())
    model.roi_heads.score_thresh = 0.0
    t0 = time.perf_counter()
    cache = collect_to_cache(model, Subset(dataset, images), out / "real", {"real": images}, {},
                             batch_size=1, shard_images=images, log=print)
    return cache, images / (time.perf_counter() - t0)


class Subset:
    """The first ``n`` images of a dataset, with its COCO ground truth (for collection)."""

    def __init__(self, dataset: CocoInstanceDataset, n: int) -> None:
        self.dataset, self.n = dataset, n
        self.coco, self.label_to_cat_id = dataset.coco, dataset.label_to_cat_id

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return self.dataset[i]


def write_cache(real: DiskSamples, dataset: CocoInstanceDataset, detector: Path,
                cache_root: Path, cfg: AddonConfig) -> tuple[Path, int]:
    """The cache ``maskiou-addon`` looks for (its key: this detector, these images, no mirror),
    each image's rows copied from a real image's. Returns (its folder, bytes of its shards)."""
    fingerprints = image_fingerprints(dataset)
    key = cache_key(file_sha1(detector), fingerprints, {}, cfg.max_detections)
    folder = cache_root / key_hash(key)[:16]
    if (folder / "manifest.json").is_file():
        return folder, sum(p.stat().st_size for p in folder.iterdir())
    pool = real.load()
    per_image = min(DETECTIONS, len(pool))
    h = key_hash(key)
    plan = shard_plan(len(dataset), {}, 64)
    t0 = time.perf_counter()
    for k, (name, indices, _) in enumerate(plan):
        writer = ShardWriter(folder, name, h)
        for i in indices:
            rows = torch.arange(per_image) + (i * per_image) % max(len(pool) - per_image, 1)
            part = pool.subset(rows % len(pool))
            writer.append({f: getattr(part, f).numpy() for f in (*FEATURES, *SCALARS)}
                          | {"image_ids": np.full(per_image, int(dataset.image_ids[i]))})
        writer.close()
        done = (k + 1) / len(plan)
        el = time.perf_counter() - t0
        print(f"\rwriting the cache: {done:.0%}, ETA {el / done - el:.0f} s", end="", flush=True)
    print()
    write_manifest(folder, key, [n for n, _, _ in plan],
                   {"roi_features": [256, 14, 14], "mask_probs": [28, 28]})
    return folder, sum(p.stat().st_size for p in folder.iterdir())


def tree_memory_bytes(pid: int) -> tuple[int, int]:
    """(PSS of a process and all its descendants, summed; largest RSS among them), bytes, from
    /proc. PSS shares each page among the processes that map it, so DataLoader workers forked
    from the CLI are not counted twice for the pages they share with it."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    tree, frontier = {pid}, {pid}
    while frontier:
        frontier = {c for c, parent in parents.items() if parent in frontier} - tree
        tree |= frontier
    pss = rss = 0
    for p in tree:
        try:
            lines = Path(f"/proc/{p}/smaps_rollup").read_text().splitlines()
        except OSError:
            continue
        kb = {line.split(":")[0]: int(line.split()[1]) for line in lines[1:] if "kB" in line}
        pss += kb.get("Pss", 0) * 1024
        rss = max(rss, kb.get("Rss", 0) * 1024)
    return pss, rss


def run_addon(detector: Path, data: tuple[Path, Path], out: Path, cache_root: Path,
              workers: int | None) -> dict[str, float]:
    """``maskiou-addon`` for one epoch in a child process: wall seconds, peak resident memory
    of its process tree (the CLI and its DataLoader workers: PSS summed, sampled every 0.2 s;
    and the largest single RSS),
    training samples/s (from its log)."""
    cmd = [sys.executable, "-m", "maskiou.addon", "--detector", str(detector),
           "--train-json", str(data[0]), "--train-images", str(data[1]),
           "--output-dir", str(out), "--cache-dir", str(cache_root), "--addon-epochs", "1",
           "--addon-flip", "false", "--addon-crossfit-folds", "0", "--no-progress",
           *(["--workers", str(workers)] if workers is not None else [])]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = peak_rss = 0
    while proc.poll() is None:
        pss, rss = tree_memory_bytes(proc.pid)
        peak, peak_rss = max(peak, pss), max(peak_rss, rss)
        time.sleep(0.2)
    output = proc.stdout.read()
    wall = time.perf_counter() - t0
    print(output, end="")
    if proc.returncode != 0:
        raise RuntimeError(f"maskiou-addon failed (exit {proc.returncode})")
    rate = [line for line in output.splitlines() if "samples/s" in line]
    samples_per_s = float(rate[-1].split(", ")[-1].split(" samples/s")[0]) if rate else 0.0
    return {"wall_s": round(wall, 1), "peak_pss_gb": round(peak / 2**30, 2),
            "peak_rss_one_process_gb": round(peak_rss / 2**30, 2),
            "train_samples_per_s": samples_per_s}


def memory_vs_disk(detector: Path, cache: DiskSamples, rows: int, batches: int
                   ) -> dict[str, float]:
    """Head training throughput on the same ``batches`` batches of 256, from the disk cache
    (read as maskiou-addon reads it on this device) and from memory (the rows loaded first),
    one after the other."""
    cfg = AddonConfig(epochs=1)
    g = torch.Generator().manual_seed(0)
    subset = torch.randperm(len(cache), generator=g)[:rows].sort().values
    memory = cache.load(subset)
    sel = torch.arange(min(rows, batches * cfg.batch_size))
    out = {}
    for name, source, idx in (("disk", cache, subset[sel]), ("memory", memory, sel)):
        model, _ = attach_to_detector(detector, cfg)
        head = model.roi_heads.maskiou_head
        log = train_head(head, source, cfg, idx, progress=False)
        out[f"{name}_samples_per_s"] = round(log[0]["samples_per_s"], 1)
    out["disk_over_memory"] = round(out["disk_samples_per_s"] / out["memory_samples_per_s"], 3)
    return out


def flop_bound(in_channels: int, num_classes: int = 8) -> dict[str, float]:
    """The add-on head's FLOPs per sample (forward; training counted as 3x) and the samples/s
    this machine's dense float32 throughput (a 2048^3 matmul, best of 5) would allow."""
    from maskiou import MaskIoUHead
    from maskiou.evaluation.cost import count_flops

    head = MaskIoUHead(in_channels, num_classes, **AddonConfig().head_kwargs())
    fwd = count_flops(head, torch.zeros(1, in_channels, 14, 14), torch.zeros(1, 28, 28),
                      torch.zeros(1, 2))
    a = torch.randn(2048, 2048)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t0)
    gflops = 2 * 2048**3 / best / 1e9
    return {"in_channels": in_channels, "forward_gflops_per_sample": round(fwd / 1e9, 4),
            "matmul_gflops": round(gflops, 1),
            "flop_bound_training_samples_per_s": round(gflops * 1e9 / (3 * fwd), 1)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--final-score" in argv:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import final_score_scale

        return final_score_scale.main([a for a in argv if a != "--final-score"])
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--final-score", action="store_true",
                   help="the final score's fit at COCO size instead (final_score_scale.py)")
    p.add_argument("--gb", type=float, default=20.0, help="size of the big cache")
    p.add_argument("--tenth-gb", type=float, default=2.0, help="size of the comparison cache")
    p.add_argument("--collect-images", type=int, default=8)
    p.add_argument("--compare-batches", type=int, default=40,
                   help="batches of 256 for the disk-against-memory throughput")
    p.add_argument("--workers", type=int, default=None,
                   help="maskiou-addon's --workers (default: its own)")
    p.add_argument("--out", default="results/addon_scale")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(os.cpu_count() or 1)
    sizes = {"tenth": args.tenth_gb, "full": args.gb}
    data = {}
    for name, gb in sizes.items():
        n = max(1, int(round(gb * 1e9 / (DETECTIONS * ROW_BYTES))))
        paths = generate_synthetic_coco(out / f"images_{n}", n, 0, seed=5, progress=True)
        data[name] = (paths.train_json, paths.train_images)
    first = CocoInstanceDataset(*data["tenth"])
    detector = r50_detector(out / "r50_plain.pt", first.class_names)
    real, collect_rate = collect_real_rows(detector, first, min(args.collect_images, len(first)),
                                           out)
    print(f"collection: {collect_rate:.2f} images/s ({len(real)} real rows)")
    result: dict[str, object] = {"collection_images_per_s": round(collect_rate, 3),
                                 "collection_images": args.collect_images,
                                 "row_bytes": ROW_BYTES, "threads": torch.get_num_threads()}
    cfg = AddonConfig(flip=False)
    for name in ("tenth", "full"):
        dataset = CocoInstanceDataset(*data[name])
        t0 = time.perf_counter()
        folder, nbytes = write_cache(real, dataset, detector, out / "cache", cfg)
        write_s = time.perf_counter() - t0
        run = run_addon(detector, data[name], out / f"run_{name}", out / "cache", args.workers)
        result[name] = {"images": len(dataset), "rows": len(dataset) * DETECTIONS,
                        "disk_gb": round(nbytes / 1e9, 2), "write_s": round(write_s, 1), **run}
        print(json.dumps(result[name]))
        if name == "tenth":
            result["memory_vs_disk"] = memory_vs_disk(detector, DiskSamples(folder),
                                                      len(dataset) * 50, args.compare_batches)
            print(json.dumps(result["memory_vs_disk"]))
    result["flop_bound"] = [flop_bound(64), flop_bound(256)]
    result["rss_full_over_tenth"] = round(result["full"]["peak_pss_gb"]
                                          / result["tenth"]["peak_pss_gb"], 3)
    result["self_maxrss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                                     2)
    (out / "scale.json").write_text(json.dumps(result, indent=2) + "\n")
    md = table(result)
    (out / "scale.md").write_text(md + "\n")
    print(md)
    return 0


def table(r: dict) -> str:
    rows = ["| cache | images | detections | disk | peak memory of maskiou-addon: PSS of its "
            "processes (largest RSS) | wall (1 epoch) | training samples/s |",
            "|---|---|---|---|---|---|---|"]
    for name in ("tenth", "full"):
        c = r[name]
        rows.append(f"| {name} | {c['images']} | {c['rows']} | {c['disk_gb']} GB | "
                    f"{c['peak_pss_gb']} GB ({c['peak_rss_one_process_gb']} GB) | "
                    f"{c['wall_s']} s | {c['train_samples_per_s']} |")
    m = r["memory_vs_disk"]
    rows.append("")
    rows.append(f"collection: {r['collection_images_per_s']} images/s (R-50-FPN, 800 px); "
                f"peak memory full / tenth: {r['rss_full_over_tenth']}x; head training from disk "
                f"{m['disk_samples_per_s']} samples/s, from memory {m['memory_samples_per_s']} "
                f"samples/s: {m['disk_over_memory']}x")
    for f in r.get("flop_bound", []):
        rows.append(f"- add-on head on {f['in_channels']}-channel RoI features: "
                    f"{f['forward_gflops_per_sample']} GFLOPs a sample forward; "
                    f"{f['matmul_gflops']} GFLOP/s (a float32 matmul here) would train "
                    f"{f['flop_bound_training_samples_per_s']} samples/s at 3x the forward")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
