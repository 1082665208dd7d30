"""The final score's fit at a COCO user's size: a COCO-shaped held-out set generated without a
detector, the AP of one scoring and the whole recalibration fit timed at 500, 1,000 and 5,000
images.

    python benchmarks/addon_scale.py --final-score        # the figures of docs/addon.md
    python benchmarks/final_score_scale.py --images 50 --out /tmp/fs.json   # a quick look
    python benchmarks/final_score_scale.py --against-loops 500 \
        --out docs/measurements/final_score_loops.json   # against the loops it replaced

The held-out set (:func:`generate`): 640 x 480 images, 80 categories of long-tailed frequency,
about 7.3 objects an image (COCO val2017: 36,781 instances on 5,000 images) of sizes from
8 to 320 pixels (log-uniform: small masks are the most common, as in COCO), star-shaped
polygons; a crowd region (an RLE, ``iscrowd`` 1) on one image in ten. 100 detections an image,
as torchvision keeps: each object gets a few copies of it, shifted, scaled and reshaped by a
random amount (from near-perfect masks to misses), most of its class and some of another; the
rest are masks at random places, of a class of the image or any class. Then the signals the
fit consumes (:func:`maskiou.addon.recalibration.detection_signals`), correlated with each
detection's true MaskIoU (the best of its class, 0 for a miss) as a detector's are: a class
score, the head's predicted IoU (about 0.8 Pearson), a maskness, the box's share of the image
and the uncontested signal computed from the boxes.

Each size runs in its own process (``--in-process``: in this one), which times:

- ``table_s``: :class:`~maskiou.addon.apsearch.MatchTable` built (every IoU, one pycocotools
  call an image);
- ``ap_s``: one AP evaluation of a score vector (the median of 5; ``ap_cpu_s`` its CPU time);
- ``fit_s``: the whole fit as the add-on runs it:
  :meth:`~maskiou.addon.recalibration.Recalibration.fit` (the table, the weight search on every
  image, the held-out check's searches on each half, the logistic scale; ``fit_search_s``) and
  the held-out check's AP of maskness, the rescoring and the out-of-sample recalibrated scores
  (:func:`maskiou.addon.run.heldout_gain`), with how many AP evaluations it made
  (``fit_cpu_s`` its CPU time);
- ``ap``: the AP of the rescoring (cls x head), the one timed; ``heldout_check``: the three
  APs of the held-out check;
- ``load_average``: the machine's 1-minute load average before and after (other processes
  sharing the cores slow every timing);
- ``peak_rss_gb``: the process's peak resident memory (``resource.getrusage`` ``ru_maxrss``;
  the process imported torch, numpy and pycocotools and generated the set too, so it bounds
  the fit's memory from above).

It writes the JSON (``--out``, default ``docs/measurements/final_score_scale.json``) and prints
the table; the growth from the smallest to the largest size is the ratio of CPU times (the
process's, ``time.process_time``: on cores other jobs share, wall time also counts the waits)
over the ratio of images (1.0: linear).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CATEGORIES = 80
DETECTIONS = 100  # per image
OBJECTS = 7.3  # per image, on average
WIDTH, HEIGHT = 640, 480
VERTICES = 12
DEFAULT_OUT = ROOT / "docs" / "measurements" / "final_score_scale.json"


@dataclass
class HeldOut:
    """A generated held-out set: the ground truth and N detections with their signals."""

    coco: Any  # pycocotools COCO
    image_ids: np.ndarray  # Int[N]
    category_ids: np.ndarray  # Int[N]
    rles: list[dict[str, Any]]  # N COCO RLEs (counts as str)
    x: np.ndarray  # Float[N, 5]: log of each signal, maskiou.calibration.SIGNALS order
    true_ious: np.ndarray  # Float[N]: IoU with the best object of its class, 0 for a miss


def polygons(cx: np.ndarray, cy: np.ndarray, r: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """Float[n, 2 * VERTICES]: star-shaped polygons (x, y interleaved) around centres ``cx``,
    ``cy`` (Float[n]) with radius ``r`` (Float[n]) times ``shape`` (Float[n, VERTICES], each
    vertex's relative radius), a little wider than high, clipped to the image."""
    angle = np.linspace(0, 2 * np.pi, VERTICES, endpoint=False)[None, :]
    radius = r[:, None] * shape
    xs = np.clip(cx[:, None] + radius * np.cos(angle), 0, WIDTH)
    ys = np.clip(cy[:, None] + radius * 0.8 * np.sin(angle), 0, HEIGHT)
    return np.stack([xs, ys], 2).reshape(len(r), -1)


def shapes(rng: np.random.Generator, n: int, wobble: float | np.ndarray,
           base: np.ndarray | None = None) -> np.ndarray:
    """Float[n, VERTICES]: relative vertex radii, ``base`` (default 1) varied by ``wobble``
    (scalar or Float[n])."""
    wob = np.asarray(wobble, np.float64).reshape(-1, 1)
    out = (1.0 if base is None else base) * (1 + wob * rng.standard_normal((n, VERTICES)))
    return np.clip(out, 0.3, 2.0)


def encode(polys: np.ndarray) -> list[dict[str, Any]]:
    """COCO RLEs (counts as str) of polygons Float[n, 2 * VERTICES]."""
    from pycocotools import mask as mask_utils

    if len(polys) == 0:
        return []
    out = mask_utils.frPyObjects([p.tolist() for p in polys], HEIGHT, WIDTH)
    for r in out:
        r["counts"] = r["counts"].decode()
    return out


def generate(images: int, seed: int = 0) -> HeldOut:
    """The COCO-shaped held-out set of ``images`` images (see the module docstring)."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    from maskiou.addon.recalibration import detection_signals

    rng = np.random.default_rng(seed)
    freq = 1.0 / np.arange(1, CATEGORIES + 1) ** 0.9  # long-tailed, as COCO's classes
    freq /= freq.sum()
    anns: list[dict[str, Any]] = []
    det_img, det_cat, det_poly, det_quality = [], [], [], []
    for img in range(1, images + 1):
        n = max(1, int(rng.poisson(OBJECTS)))
        cats = rng.choice(CATEGORIES, n, p=freq) + 1
        r = np.exp(rng.uniform(np.log(4), np.log(160), n))
        cx, cy = rng.uniform(0, WIDTH, n), rng.uniform(0, HEIGHT, n)
        form = shapes(rng, n, 0.15)
        gt = polygons(cx, cy, r, form)
        for k, (rle, cat) in enumerate(zip(encode(gt), cats)):
            anns.append({"id": len(anns) + 1, "image_id": img, "category_id": int(cat),
                         "segmentation": [gt[k].tolist()], "iscrowd": 0,
                         "area": float(mask_utils.area(rle)),
                         "bbox": [float(v) for v in mask_utils.toBbox(rle)]})
        if rng.random() < 0.1:  # a crowd region
            crowd = encode(polygons(rng.uniform(0, WIDTH, 1), rng.uniform(0, HEIGHT, 1),
                                    np.array([120.0]), shapes(rng, 1, 0.1)))[0]
            anns.append({"id": len(anns) + 1, "image_id": img,
                         "category_id": int(rng.choice(cats)), "segmentation": crowd,
                         "iscrowd": 1, "area": float(mask_utils.area(crowd)),
                         "bbox": [float(v) for v in mask_utils.toBbox(crowd)]})
        # copies of each object: quality from near-perfect to a miss
        copies = np.minimum(1 + rng.poisson(3, n), 8)
        obj = np.repeat(np.arange(n), copies)[:DETECTIONS]
        m = len(obj)
        quality = rng.beta(2, 1.5, m)  # 1: a perfect copy
        miss = 1 - quality
        shift = miss * 0.5 * r[obj]
        scale = np.exp(miss * 0.4 * rng.standard_normal(m))
        near = polygons(cx[obj] + shift * rng.standard_normal(m),
                        cy[obj] + shift * rng.standard_normal(m), r[obj] * scale,
                        shapes(rng, m, 0.3 * miss, form[obj]))
        wrong = rng.random(m) < 0.25  # another class: of the image, or any
        other = np.where(rng.random(m) < 0.5, rng.choice(cats, m),
                         rng.choice(CATEGORIES, m, p=freq) + 1)
        near_cat = np.where(wrong, other, cats[obj])
        rest = DETECTIONS - m
        fr = np.exp(rng.uniform(np.log(4), np.log(160), rest))
        far = polygons(rng.uniform(0, WIDTH, rest), rng.uniform(0, HEIGHT, rest), fr,
                       shapes(rng, rest, 0.2))
        far_cat = np.where(rng.random(rest) < 0.5, rng.choice(cats, rest),
                           rng.choice(CATEGORIES, rest, p=freq) + 1)
        det_img.append(np.full(DETECTIONS, img))
        det_cat.append(np.r_[near_cat, far_cat])
        det_poly.append(np.r_[near, far])
        det_quality.append(np.r_[quality * ~wrong, np.zeros(rest)])
    coco = COCO()
    coco.dataset = {"images": [{"id": i, "width": WIDTH, "height": HEIGHT}
                               for i in range(1, images + 1)],
                    "categories": [{"id": c, "name": f"class{c}"}
                                   for c in range(1, CATEGORIES + 1)],
                    "annotations": anns}
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    image_ids, category_ids = np.concatenate(det_img), np.concatenate(det_cat)
    polys = np.concatenate(det_poly)
    rles = encode(polys)
    true = true_ious(coco, image_ids, category_ids, rles)
    x = signals(rng, image_ids, category_ids, polys, true, np.concatenate(det_quality),
                detection_signals)
    return HeldOut(coco, image_ids, category_ids, rles, x, true)


def true_ious(coco: Any, image_ids: np.ndarray, category_ids: np.ndarray,
              rles: list[dict[str, Any]]) -> np.ndarray:
    """Float[N]: each detection's IoU with the best object (not a crowd region) of its image
    and class, 0 where there is none: the target the add-on's fit reads."""
    from pycocotools import mask as mask_utils

    out = np.zeros(len(rles))
    starts = np.flatnonzero(np.r_[True, image_ids[1:] != image_ids[:-1]])
    for lo, hi in zip(starts, np.r_[starts[1:], len(rles)]):
        anns = [a for a in coco.imgToAnns[int(image_ids[lo])] if not a["iscrowd"]]
        if not anns:
            continue
        iou = np.asarray(mask_utils.iou(rles[lo:hi], [coco.annToRLE(a) for a in anns],
                                        [0] * len(anns))).reshape(hi - lo, len(anns))
        same = category_ids[lo:hi, None] == np.array([a["category_id"] for a in anns])[None]
        out[lo:hi] = np.where(same, iou, 0).max(1)
    return out


def signals(rng: np.random.Generator, image_ids: np.ndarray, category_ids: np.ndarray,
            polys: np.ndarray, true: np.ndarray, quality: np.ndarray, detection_signals: Any
            ) -> np.ndarray:
    """Float[N, 5]: the fit's signals of N detections, correlated with their true IoU as a
    detector's are (see the module docstring)."""
    n = len(true)
    cls = 1 / (1 + np.exp(-(-2.5 + 2.0 * true + 1.5 * quality + 1.5 * rng.standard_normal(n))))
    shared = 0.2 * rng.standard_normal(n)  # what both the head and the maskness misjudge
    head = np.clip(true + shared + 0.15 * rng.standard_normal(n), 0.01, 1.0)
    maskness = np.clip(0.6 + 0.25 * (true + shared) + 0.08 * rng.standard_normal(n), 0.05, 1.0)
    xs, ys = polys[:, 0::2], polys[:, 1::2]
    boxes = np.c_[xs.min(1), ys.min(1), xs.max(1), ys.max(1)]
    rel_area = np.clip((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
                       / (WIDTH * HEIGHT), 1e-6, 1.0)
    return detection_signals(cls, head, maskness, rel_area, boxes, category_ids, image_ids)


def measure(images: int, seed: int = 0, repeats: int = 5) -> dict[str, Any]:
    """One size, in this process: the set generated, then the table, one AP evaluation and
    the whole fit timed (see the module docstring)."""
    import sklearn.linear_model  # noqa: F401  (imported before the clock, as in the add-on)

    import maskiou.addon.fit  # noqa: F401
    from maskiou.addon import apsearch
    from maskiou.addon.recalibration import SCALE_SIGNAL, MatchInputs, Recalibration

    load = [os.getloadavg()[0]]
    t0 = time.perf_counter()
    held = generate(images, seed)
    generate_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    table = apsearch.MatchTable(held.coco, list(range(1, images + 1)), held.image_ids,
                                held.category_ids, held.rles)
    table_s = time.perf_counter() - t0
    rescored = held.x[:, 0] + held.x[:, SCALE_SIGNAL]  # cls x head, the search's start
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        ap = table.ap(rescored)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    del table
    calls = [0]
    plain_ap = apsearch.MatchTable.ap

    def counted(self: Any, scores: np.ndarray) -> float:
        calls[0] += 1
        return plain_ap(self, scores)

    apsearch.MatchTable.ap = counted  # type: ignore[method-assign]
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        match = MatchInputs(held.coco, held.image_ids, held.category_ids, held.rles)
        recal = Recalibration.fit("search", held.x, held.true_ious, {}, match, seed=seed,
                                  target="coco")
        search_s = time.perf_counter() - t0
        # the add-on's held-out check (maskiou.addon.run.heldout_gain): three scorings' AP
        # on the same table, the recalibration's by its out-of-sample scores
        every = match.table(np.arange(len(held.rles)))
        check = {"maskness": every.ap(held.x[:, 0] + held.x[:, 2]), "rescored": every.ap(rescored),
                 "recalibrated": every.ap(recal.check_scores)}
        fit_s, fit_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    finally:
        apsearch.MatchTable.ap = plain_ap  # type: ignore[method-assign]
    return {
        "images": images, "detections": int(len(held.rles)),
        "objects": int(sum(not a["iscrowd"] for a in held.coco.dataset["annotations"])),
        "crowd_regions": int(sum(a["iscrowd"] for a in held.coco.dataset["annotations"])),
        "categories": CATEGORIES, "generate_s": round(generate_s, 2),
        "table_s": round(table_s, 2), "ap_s": round(float(np.median(times)), 4),
        "ap_cpu_s": round(float(np.median(cpu)), 4),
        "fit_s": round(fit_s, 2), "fit_cpu_s": round(fit_cpu_s, 2),
        "fit_search_s": round(search_s, 2),
        "fit_ap_evaluations": calls[0],
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "ap": ap, "heldout_check": check, "ap_searched_in_sample": every.ap(recal.predict(held.x)),
        "weights": [round(w, 4) for w in recal.weights],
        "load_average": [round(v, 2) for v in (*load, os.getloadavg()[0])],
    }


def against_loops(images: int, seed: int = 0) -> dict[str, Any]:
    """The table and search against the Python loops they replaced (``tests/reference.py``),
    one after the other in this process on the same set of ``images`` images: the table's
    construction, one AP evaluation and the whole fit (:meth:`Recalibration.fit` and the
    held-out check's three APs), and whether both fits gave the same weights."""
    import sklearn.linear_model  # noqa: F401

    import maskiou.addon.fit  # noqa: F401
    from maskiou.addon import apsearch
    from maskiou.addon.recalibration import MatchInputs, Recalibration

    sys.path.insert(0, str(ROOT / "tests"))
    from reference import LoopMatchTable, loop_search_weights

    held = generate(images, seed)
    rescored = held.x[:, 0] + held.x[:, 1]
    ids = list(range(1, images + 1))
    out: dict[str, Any] = {"images": images, "detections": int(len(held.rles))}
    plain_table, plain_search = MatchInputs.table, apsearch.search_weights

    def loop_table(self: Any, rows: np.ndarray) -> Any:
        rows = np.asarray(rows)
        sub = self.image_ids[rows]
        return LoopMatchTable(self.coco, sorted({int(i) for i in sub}), sub,
                              self.category_ids[rows], [self.rles[i] for i in rows])

    for name, kind in (("loops", LoopMatchTable), ("table", apsearch.MatchTable)):
        t0 = time.perf_counter()
        table = kind(held.coco, ids, held.image_ids, held.category_ids, held.rles)
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        ap = table.ap(rescored)
        one = time.perf_counter() - t0
        if name == "loops":
            MatchInputs.table = loop_table  # type: ignore[method-assign]
            apsearch.search_weights = loop_search_weights
        try:
            t0 = time.perf_counter()
            match = MatchInputs(held.coco, held.image_ids, held.category_ids, held.rles)
            recal = Recalibration.fit("search", held.x, held.true_ious, {}, match, seed=seed,
                                      target="coco")
            every = match.table(np.arange(len(held.rles)))
            for s in (held.x[:, 0] + held.x[:, 2], rescored, recal.check_scores):
                every.ap(s)
            fit = time.perf_counter() - t0
        finally:
            MatchInputs.table, apsearch.search_weights = plain_table, plain_search
        out[name] = {"table_s": round(build, 2), "ap_s": round(one, 4), "fit_s": round(fit, 2),
                     "ap": ap, "weights": recal.weights}
    out["same_weights"] = bool(np.allclose(out["loops"]["weights"], out["table"]["weights"],
                                           rtol=0, atol=1e-9))
    out["ap_difference"] = abs(out["loops"]["ap"] - out["table"]["ap"])
    out["load_average"] = round(os.getloadavg()[0], 2)
    return out


def growth_of(sizes: list[dict[str, Any]]) -> dict[str, Any]:
    """From the smallest size to the largest: the ratio of images, and of CPU times (whole fit,
    one AP, the fit per AP evaluation: the search may take more steps on more data) and of
    wall times; ``*_per_image``: a ratio over the ratio of images (1.0: linear)."""
    first, last = sizes[0], sizes[-1]
    ratio = last["images"] / first["images"]
    per_eval = [s["fit_cpu_s"] / s["fit_ap_evaluations"] for s in (first, last)]
    growth = {"from": first["images"], "to": last["images"], "images": ratio,
              "fit": round(last["fit_cpu_s"] / first["fit_cpu_s"], 3),
              "ap": round(last["ap_cpu_s"] / first["ap_cpu_s"], 3),
              "fit_per_evaluation": round(per_eval[1] / per_eval[0], 3),
              "fit_wall": round(last["fit_s"] / first["fit_s"], 3),
              "ap_wall": round(last["ap_s"] / first["ap_s"], 3)}
    for k in ("fit", "ap", "fit_per_evaluation"):
        growth[f"{k}_per_image"] = round(growth[k] / ratio, 3)
    return growth


def run_size(images: int, seed: int, in_process: bool) -> dict[str, Any]:
    """:func:`measure` in a child process (its own peak memory), or in this one."""
    if in_process:
        return measure(images, seed)
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--one",
                          str(images), "--seed", str(seed)], check=True, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(result: dict[str, Any]) -> str:
    """The Markdown table of a result (what docs/addon.md shows)."""
    rows = ["| images | detections | objects (crowd regions) | one AP: wall (CPU) | the table's "
            "IoUs | whole fit: wall (CPU) | AP evaluations | peak RSS |",
            "|---|---|---|---|---|---|---|---|"]
    for s in result["sizes"]:
        rows.append(f"| {s['images']:,} | {s['detections']:,} | {s['objects']:,} "
                    f"({s['crowd_regions']}) | {s['ap_s']:.3f} s ({s['ap_cpu_s']:.3f} s) | "
                    f"{s['table_s']:.1f} s | {s['fit_s']:.1f} s ({s['fit_cpu_s']:.1f} s) | "
                    f"{s['fit_ap_evaluations']} | {s['peak_rss_gb']:.2f} GB |")
    g = result["growth"]
    rows.append("")
    rows.append(f"growth from {g['from']:,} to {g['to']:,} images ({g['images']:.0f}x), in CPU "
                f"time: whole fit {g['fit']:.2f}x, the fit per AP evaluation "
                f"{g['fit_per_evaluation']:.2f}x, one AP {g['ap']:.2f}x; per image (1.0: linear) "
                f"{g['fit_per_image']:.2f}, {g['fit_per_evaluation_per_image']:.2f} and "
                f"{g['ap_per_image']:.2f}; in wall time {g['fit_wall']:.2f}x and "
                f"{g['ap_wall']:.2f}x")
    return "\n".join(rows)


def loops_line(pair: dict[str, Any]) -> str:
    """The sentence of docs/addon.md that reports :func:`against_loops`."""
    a, b = pair["loops"], pair["table"]
    return (f"on {pair['images']:,} images ({pair['detections']:,} detections) the loops took "
            f"{a['table_s']:.1f} s to build, {a['ap_s']:.3f} s an AP and {a['fit_s']:.1f} s "
            f"for the whole fit; the table {b['table_s']:.1f} s, {b['ap_s']:.4f} s and "
            f"{b['fit_s']:.1f} s ({a['fit_s'] / b['fit_s']:.0f}x), the same weights "
            f"({'to 1e-9' if pair['same_weights'] else 'NOT the same'}) and the same AP "
            f"(difference {pair['ap_difference']:.0e})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, nargs="+", default=[500, 1000, 5000],
                   help="held-out images of each size measured")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(DEFAULT_OUT), help="the JSON written")
    p.add_argument("--in-process", action="store_true",
                   help="every size in this process (peak memory then covers them all)")
    p.add_argument("--note", default="", help="recorded with the figures (e.g. the load)")
    p.add_argument("--against-loops", type=int, metavar="IMAGES",
                   help="instead: the table and search against the loops they replaced, on "
                        "this many images, one after the other (writes --out)")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child: one size, JSON out
    args = p.parse_args(argv)
    if args.one is not None:
        print(json.dumps(measure(args.one, args.seed)))
        return 0
    if args.against_loops is not None:
        pair = against_loops(args.against_loops, args.seed)
        pair["note"] = args.note
        Path(args.out).write_text(json.dumps(pair, indent=2) + "\n")
        print(json.dumps(pair))
        return 0
    sizes = [run_size(n, args.seed, args.in_process) for n in sorted(args.images)]
    for s in sizes:
        print(json.dumps(s))
    growth = growth_of(sizes)
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "threads": os.environ.get("OMP_NUM_THREADS", "unset"),
              "memory": "ru_maxrss of the process that measured the size (generation and "
                        "imports included)" + (" and every size before it" if args.in_process
                                               else ""),
              "device": "CPU (numpy and pycocotools: the fit has no GPU part)",
              "note": args.note, "sizes": sizes, "growth": growth}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
