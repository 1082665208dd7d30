"""The recalibration's levers, each a row: which signals the final score should combine.

    python research/recalibration_levers.py --checkpoint ADDON.pt \\
        --calib-json c.json --calib-images c/ --val-json v.json --val-images v/ \\
        --output-dir results/levers-shapes
    python research/recalibration_levers.py --table NAME=levers.json ...   # runs side by side

A trained add-on (detector + head) runs once over held-out labeled images neither the detector
nor its head saw (the calibration images) and once over the validation split. Every row fits the
recalibration's logistic model (:func:`maskiou.addon.recalibration.soft_logistic`, the
soft-label fit, its signals standardized) on a different set of signals of the calibration
detections and measures mask AP on the validation split. Each row is fitted on all calibration
images and on each of three disjoint thirds of them (their mean and spread show what a third of
the labels gives). Reference rows: the class score, maskness, the head's rescoring, the oracle
(:func:`maskiou.evaluation.metrics.scorings`); the AP search's rows use the add-on's own search
(:func:`maskiou.addon.recalibration.search_exponents`); a monotone gradient-boosting row
(scikit-learn, every signal constrained in the direction the logistic fit gives it) and, where
netcal is installed, its ``LogisticCalibration(detection=True)`` on the same signals.
Writes levers.json and levers.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runs_table import print_columns, side_by_side  # noqa: E402

from maskiou.addon.collect import collect_samples  # noqa: E402
from maskiou.addon.fit import predict_ious, regression_target  # noqa: E402
from maskiou.addon.recalibration import (  # noqa: E402
    MatchInputs,
    detection_groups,
    search_exponents,
    sigmoid,
    soft_logistic,
)
from maskiou.attach import find_maskiou_head  # noqa: E402
from maskiou.calibration import signal_logs  # noqa: E402
from maskiou.data.coco import CocoInstanceDataset  # noqa: E402
from maskiou.evaluation.metrics import scorings  # noqa: E402
from maskiou.models.load import load_trained_model  # noqa: E402
from maskiou.records import Detections, coco_ap, coco_results  # noqa: E402
from maskiou.signals import CONTEXT, SHAPE, image_context, mask_shape  # noqa: E402

BASE = ["cls", "head", "maskness", "rel_area"]
SMALL_PX = 32 * 32  # COCO's "small" objects: box area below 32^2 pixels
# every row's reference: the logistic fit of the four signals the add-on shipped with before
# the AP search (what ships now is the row "AP search, + contested ...")
BASE_ROW = "base (logistic fit: cls, head, maskness, box share)"

# row -> signals (beyond BASE)
ROWS: dict[str, list[str]] = {
    BASE_ROW: [],
    "+ gap": ["gap"],
    "+ rank": ["rank"],
    "+ overlap same class": ["overlap_same"],
    "+ overlap any class": ["overlap_any"],
    "+ context (gap, rank, overlaps)": list(CONTEXT),
    "+ fill": ["fill"],
    "+ edge sharpness": ["edge_sharpness"],
    "+ parts": ["parts"],
    "+ shape (fill, edge sharpness)": list(SHAPE),
    "+ size-conditional (small x each signal)": ["small", "small_x"],
    "+ context + shape": list(CONTEXT) + list(SHAPE),
}


def parts_count(mask_probs: np.ndarray) -> np.ndarray:
    """log of the number of connected parts (8-connected) of each M x M mask above 0.5 (at least
    one): Float64[n]."""
    from scipy import ndimage

    out = np.ones(len(mask_probs))
    for i, p in enumerate(mask_probs):
        out[i] = max(ndimage.label(p > 0.5, structure=np.ones((3, 3)))[1], 1)
    return np.log(out)


def signal_table(samples: Any, dets: Any, quality: np.ndarray) -> dict[str, np.ndarray]:
    """Every signal of every detection (float64 arrays [N]), computed by the functions the model
    runs (:mod:`maskiou.signals`), image by image."""
    cls = samples.cls_scores.double()
    logs = signal_logs(cls, torch.as_tensor(quality).double(), samples.maskness.double(),
                       samples.rel_areas.double(), torch.ones_like(cls)).numpy()
    table = {name: logs[:, i] for i, name in enumerate(BASE)}
    boxes = torch.as_tensor(dets.boxes_xywh, dtype=torch.float64).clone()
    boxes[:, 2:] += boxes[:, :2]
    context = np.zeros((len(cls), len(CONTEXT)))
    for idx in detection_groups(samples.image_ids.numpy(), samples.views.numpy()):
        context[idx] = image_context(cls[idx], boxes[idx], samples.labels[idx]).numpy()
    table.update({name: context[:, i] for i, name in enumerate(CONTEXT)})
    shape = mask_shape(samples.mask_probs.double()).numpy()
    table.update({name: shape[:, i] for i, name in enumerate(SHAPE)})
    table["parts"] = parts_count(samples.mask_probs.float().numpy())
    area = dets.boxes_xywh[:, 2] * dets.boxes_xywh[:, 3]
    table["small"] = (area < SMALL_PX).astype(np.float64)
    return with_derived(table)


def with_derived(table: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Add the signals computed from others (the log of 1 - each overlap)."""
    table["contested"] = np.log(np.clip(1 - table["overlap_same"], 1e-4, 1))
    table["uncontested_any"] = np.log(np.clip(1 - table["overlap_any"], 1e-4, 1))
    return table


def design(table: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    """Float64[N, k]: BASE then ``names``; "small_x" expands to each BASE signal x small."""
    cols = [table[n] for n in BASE]
    for n in names:
        if n == "small_x":
            cols += [table[b] * table["small"] for b in BASE]
        else:
            cols.append(table[n])
    return np.stack(cols, 1)


class Logistic:
    """The recalibration's logistic fit of soft labels ``y`` (Float[N]) on ``x`` Float[N, k]
    (:func:`maskiou.addon.recalibration.soft_logistic`, the signals standardized so that its
    penalty weighs each alike), as a fitted model."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.weights, self.bias = soft_logistic(x, y, standardize=True)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Float64[N, 2]: (1 - score, score) of each row of ``x``, as scikit-learn's."""
        p = sigmoid(x @ self.weights + self.bias)
        return np.c_[1.0 - p, p]


class RankedLogistic:
    """sigmoid(a * (w . x) + b): ``w`` learned from pairs of detections of one class (which of
    the two has the higher target), ``a`` and ``b`` then fitted to the soft target on ``w . x``
    alone. Monotone in each signal as the logistic fit is, but fitted to the order that AP
    rewards (within a class, across images) rather than to the mean log loss."""

    def __init__(self, pairs: int = 200_000, seed: int = 0) -> None:
        self.pairs, self.seed = pairs, seed

    def fit(self, x: np.ndarray, y: np.ndarray, labels: np.ndarray) -> RankedLogistic:
        from sklearn.linear_model import LogisticRegression

        rng = np.random.default_rng(self.seed)
        self.mean, self.std = x.mean(0), x.std(0) + 1e-9
        z = (x - self.mean) / self.std
        i = rng.integers(0, len(y), self.pairs)
        # a partner of the same class for each: sort by label, draw within its block
        order = np.argsort(labels, kind="stable")
        lab = labels[order]
        lo = np.searchsorted(lab, labels[i], "left")
        hi = np.searchsorted(lab, labels[i], "right")
        j = order[lo + (rng.random(self.pairs) * (hi - lo)).astype(np.int64)]
        diff = y[i] - y[j]
        keep = np.abs(diff) > 1e-6
        d, sign = z[i[keep]] - z[j[keep]], (diff[keep] > 0).astype(np.int64)
        rank = LogisticRegression(C=1.0, max_iter=2000, fit_intercept=False)
        rank.fit(np.concatenate([d, -d]), np.r_[sign, 1 - sign],
                 sample_weight=np.r_[np.abs(diff[keep]), np.abs(diff[keep])])
        self.w = rank.coef_[0]
        self.platt = Logistic((z @ self.w)[:, None], y)
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        z = (x - self.mean) / self.std
        return self.platt.predict_proba((z @ self.w)[:, None])


def fit_boosting(x: np.ndarray, y: np.ndarray, signs: np.ndarray) -> Any:
    """Gradient boosting of the target with every signal monotone in ``signs`` (+1/-1)."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    model = HistGradientBoostingRegressor(max_iter=200, learning_rate=0.05, max_leaf_nodes=15,
                                          monotonic_cst=[int(s) for s in signs], random_state=0)
    return model.fit(x, y)


def search_fit(ct: dict[str, np.ndarray], rows: np.ndarray, match: MatchInputs,
               names: list[str]) -> np.ndarray:
    """The AP-searched weights on calibration ``rows`` (Bool[N]) of the signals BASE +
    ``names``: the add-on's own search (:func:`maskiou.addon.recalibration.search_exponents`)
    on ``match``, the calibration detections' masks and ground truth."""
    return search_exponents(design(ct, names), match, np.flatnonzero(rows))


def measure_search(ct: dict[str, np.ndarray], vt: dict[str, np.ndarray], match: MatchInputs,
                   names: list[str], draws: list[np.ndarray], coco: Any, vd: Any,
                   per_class: bool = False) -> dict[str, Any]:
    """The AP search's validation AP, fitted on all calibration detections and on each third.
    ``per_class``: each class's weights searched on its own detections (COCO's AP is the mean
    of the classes' APs, each set by the order of its own detections alone); a class without
    calibration detections gets the weights searched on all."""
    res: dict[str, Any] = {"thirds": [], "weights": []}
    xv = design(vt, names)
    for rows in [np.ones(len(ct["category_ids"]), bool)] + draws:
        w = search_fit(ct, rows, match, names)
        weights = np.repeat(w[None], len(xv), 0)
        for c in np.unique(ct["category_ids"][rows]) if per_class else []:
            own = rows & (ct["category_ids"] == c)
            weights[vt["category_ids"] == c] = search_fit(ct, own, match, names)
        res["weights"].append(w.round(3).tolist())
        res["thirds"].append(ap(coco, vd, (xv * weights).sum(1)))
    res["all"] = res["thirds"].pop(0)
    res["thirds_mean"] = float(np.mean(res["thirds"]))
    res["thirds_std"] = float(np.std(res["thirds"]))
    return res


def netcal_scores(x_fit: np.ndarray, y_fit: np.ndarray, x_val: np.ndarray) -> np.ndarray | None:
    """netcal's ``LogisticCalibration(detection=True)`` on the same signals (its first column the
    confidence in [0, 1], the rest as its detection features); None without netcal."""
    try:
        from netcal.scaling import LogisticCalibration
    except ImportError:
        return None
    cal = LogisticCalibration(detection=True, use_cuda=False)
    # netcal takes the confidence then features, all in [0, 1], and binary labels: a detection
    # is correct where its target reaches 0.5 (its detection examples use IoU >= 0.5)
    cal.fit(x_fit, (y_fit >= 0.5).astype(np.int64))
    return np.asarray(cal.transform(x_val), dtype=np.float64).reshape(-1)


def predicted(model: Any, x: np.ndarray) -> np.ndarray:
    """A fitted model's score of each row of ``x``, in [0, 1]."""
    if hasattr(model, "predict_proba"):
        return model.predict_proba(x)[:, 1]
    return np.clip(model.predict(x), 0.0, 1.0)


def ap(coco: Any, dets: Any, scores: np.ndarray) -> float:
    return coco_ap(coco, coco_results(dets, scores, "segm"), "segm")["AP"]


def collect_split(model: Any, json_file: str, images: str, max_detections: int
                  ) -> dict[str, Any]:
    """Run the add-on model over a split: every detection's signals (:func:`signal_table`), true
    MaskIoU, image id, label, category id and mask (COCO RLE)."""
    head = find_maskiou_head(model)
    data = CocoInstanceDataset(json_file, images)
    samples, dets = collect_samples(model, data, return_detections=True,
                                    max_detections=max_detections)
    quality = predict_ious(head, samples).numpy()
    arrays = signal_table(samples, dets, quality)
    arrays.update(true_iou=samples.targets.numpy().astype(np.float64),
                  image_ids=dets.image_ids, category_ids=dets.category_ids,
                  labels=dets.labels, cls_score=samples.cls_scores.numpy().astype(np.float64),
                  maskness_score=samples.maskness.numpy().astype(np.float64),
                  quality=quality.astype(np.float64))
    return {"arrays": arrays, "rles": dets.rles, "images": len(data)}


def load_or_collect(model: Any, split: str, json_file: str, images: str, out: Path,
                    max_detections: int) -> dict[str, Any]:
    """:func:`collect_split`, kept in ``out`` (signals_<split>.npz and .json) and read back on
    the next run for the same files."""
    npz, meta = out / f"signals_{split}.npz", out / f"signals_{split}.json"
    key = [str(Path(json_file).resolve()), str(Path(images).resolve()), max_detections]
    if npz.is_file() and meta.is_file():
        info = json.loads(meta.read_text())
        if info["key"] == key:
            with np.load(npz) as f:
                arrays = with_derived(dict(f))
            return {"arrays": arrays, "rles": info["rles"], "images": info["images"]}
    got = collect_split(model(), json_file, images, max_detections)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(npz, **got["arrays"])
    meta.write_text(json.dumps({"key": key, "rles": got["rles"], "images": got["images"]}))
    return got


def detections(split: dict[str, Any]) -> Detections:
    a = split["arrays"]
    return Detections(image_ids=a["image_ids"], category_ids=a["category_ids"],
                      boxes_xywh=np.zeros((len(a["image_ids"]), 4)), rles=split["rles"],
                      cls_scores=a["cls_score"], pred_ious=a["quality"],
                      maskness=a["maskness_score"], labels=a["labels"],
                      rel_areas=np.exp(a["rel_area"]), scores=a["cls_score"])


def run(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    loaded: list[Any] = []

    def model() -> Any:
        if not loaded:
            loaded.append(load_trained_model(args.checkpoint, "cpu")[0])
        return loaded[0]

    calib = load_or_collect(model, "calib", args.calib_json, args.calib_images, args.output_dir,
                            args.max_detections)
    val = load_or_collect(model, "val", args.val_json, args.val_images, args.output_dir,
                          args.max_detections)
    print(f"signals of {len(calib['rles'])} + {len(val['rles'])} detections "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    ct, vt = calib["arrays"], val["arrays"]
    vd = detections(val)
    coco = CocoInstanceDataset(args.val_json, args.val_images).coco
    y = regression_target(torch.as_tensor(ct["true_iou"]), args.target).double().clamp(0, 1
                                                                                      ).numpy()
    cls, mk = vt["cls_score"], vt["maskness_score"]
    out: dict[str, Any] = {"checkpoint": str(args.checkpoint), "target": args.target,
                           "calib_images": calib["images"], "val_images": val["images"],
                           "calib_detections": len(y), "val_detections": len(cls),
                           "reference": {}, "rows": {}}
    out["reference"] = {k: ap(coco, vd, s) for k, s in
                        scorings(cls, vt["quality"], mk, vt["true_iou"]).items()}
    print(json.dumps(out["reference"]), flush=True)
    rng = np.random.default_rng(0)
    images = np.unique(ct["image_ids"])
    thirds = np.array_split(rng.permutation(images), 3)
    draws = [np.isin(ct["image_ids"], t) for t in thirds]

    def measure(fit: Any, names: list[str]) -> dict[str, Any]:
        xc, xv = design(ct, names), design(vt, names)
        full = ap(coco, vd, predicted(fit(xc, y, ct["labels"]), xv))
        parts = [ap(coco, vd, predicted(fit(xc[d], y[d], ct["labels"][d]), xv)) for d in draws]
        return {"all": full, "thirds": parts, "thirds_mean": float(np.mean(parts)),
                "thirds_std": float(np.std(parts))}

    for row, names in ({} if args.only_search else ROWS).items():
        out["rows"][row] = measure(lambda x, t, lab: Logistic(x, t), names)
        print(f"{row}: {out['rows'][row]}", flush=True)
    every = list(CONTEXT) + list(SHAPE)
    if not args.only_search:
        signs = np.sign(Logistic(design(ct, every), y).weights)
        out["rows"]["monotone gradient boosting, context + shape"] = measure(
            lambda x, t, lab: fit_boosting(x, t, signs), every)
        for row, names in (("base", []), ("+ context", list(CONTEXT)), ("+ shape", list(SHAPE)),
                           ("+ context + shape", every)):
            out["rows"][f"ranked logistic, {row}"] = measure(
                lambda x, t, lab: RankedLogistic().fit(x, t, lab), names)
            print(f"ranked {row}: {out['rows'][f'ranked logistic, {row}']}", flush=True)

    match = MatchInputs(CocoInstanceDataset(args.calib_json, args.calib_images).coco,
                        ct["image_ids"], ct["category_ids"], calib["rles"])
    for row, names in (("base", []), ("+ contested (1 - overlap same class)", ["contested"]),
                       ("+ contested + overlap any", ["contested", "uncontested_any"])):
        out["rows"][f"AP search, {row}"] = measure_search(ct, vt, match, names, draws, coco,
                                                          vd)
        print(f"search {row}: {out['rows'][f'AP search, {row}']}", flush=True)
    contested = ["contested"]
    out["rows"]["AP search per class, + contested"] = measure_search(
        ct, vt, match, contested, draws, coco, vd, per_class=True)
    print(f"search per class: {out['rows']['AP search per class, + contested']}", flush=True)

    def unit(a: dict[str, np.ndarray]) -> np.ndarray:  # the base signals as they are, in [0, 1]
        return np.c_[a["cls_score"], a["quality"], a["maskness_score"], np.exp(a["rel_area"])]

    nc = None if args.only_search else netcal_scores(unit(ct), y, unit(vt))
    if nc is not None:
        out["rows"]["netcal LogisticCalibration(detection=True), base"] = {
            "all": ap(coco, vd, nc)}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def markdown(res: dict[str, Any]) -> str:
    ref = res["reference"]
    lines = [f"calibration: {res['calib_images']} images ({res['calib_detections']} detections);"
             f" validation: {res['val_images']} images ({res['val_detections']} detections)", "",
             "| scoring | mask AP (all) | mean of thirds (min-max) |", "|---|---|---|"]
    for k in ("cls", "maskness", "rescored", "oracle"):
        lines.append(f"| {k} | {ref[k]:.2f} | |")
    for row, r in res["rows"].items():
        th = (f"{r['thirds_mean']:.2f} ({min(r['thirds']):.2f}-{max(r['thirds']):.2f})"
              if "thirds" in r else "")
        lines.append(f"| {row} | {r['all']:.2f} | {th} |")
    return "\n".join(lines) + "\n"


def cell(r: dict[str, Any] | None, ref: float) -> str:
    """One row's figure: its AP fitted on every calibration image, its difference from the
    reference, and the range of the three thirds where measured."""
    if r is None:
        return "-"
    out = f"{r['all']:.2f} ({r['all'] - ref:+.2f})"
    if len(r.get("thirds", [])) >= 2:
        out += f" [{min(r['thirds']):.2f}-{max(r['thirds']):.2f}]"
    return out


def levers_table(results: dict[str, dict[str, Any]]) -> str:
    """The levers of several runs (column name -> levers.json) as one Markdown table
    (:func:`runs_table.side_by_side`): each row against the logistic fit of the four signals
    (:data:`BASE_ROW`) of its column."""
    rows: list[str] = []
    for res in results.values():
        rows += [r for r in res["rows"] if r not in rows]
    lines = [(f"({k})", [f"{r['reference'][k]:.2f}" for r in results.values()])
             for k in ("cls", "maskness", "rescored", "oracle")]
    lines += [(row, [cell(res["rows"].get(row), res["rows"][BASE_ROW]["all"])
                     for res in results.values()]) for row in rows]
    return side_by_side("lever", list(results), lines)


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if print_columns(argv, "--table", levers_table):  # NAME=levers.json ...
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    for split in ("calib", "val"):
        p.add_argument(f"--{split}-json", required=True)
        p.add_argument(f"--{split}-images", required=True)
    p.add_argument("--target", default="coco", choices=("iou", "coco"))
    p.add_argument("--max-detections", type=int, default=100)
    p.add_argument("--output-dir", type=Path, required=True)
    p.add_argument("--only-search", action="store_true", help="only the AP-search rows")
    args = p.parse_args(argv)
    res = run(args)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    earlier = args.output_dir / "levers.json"
    if earlier.is_file():  # rows measured by an earlier run of the same model and splits
        old = json.loads(earlier.read_text())
        if {k: old.get(k) for k in ("checkpoint", "target", "calib_detections")} == \
                {k: res[k] for k in ("checkpoint", "target", "calib_detections")}:
            res["rows"] = {**old["rows"], **res["rows"]}
    (args.output_dir / "levers.json").write_text(json.dumps(res, indent=1))
    (args.output_dir / "levers.md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
