"""How to choose the masks worth keeping: each rule for the stored thresholds, a row.

    python research/threshold_rules.py --output-dir results/thresholds-tv
    python research/threshold_rules.py --output-dir results/thresholds-d2 \\
        -- --detector-framework detectron2
    python research/threshold_rules.py --table tv=results/thresholds-tv/threshold_rules.json ...

Runs the main job (``benchmarks/coco_eval.py``, its arguments after ``--``) and keeps, without
changing it, what the add-on's threshold fit reads (its held-out detections' mapped final
scores, labels, matched mask IoUs at 0.5 and GT counts) and what the evaluation's
``keep`` measures read on the validation images. Each rule turns the held-out detections into
one threshold per class; its row is the validation mLRP (TP at mask IoU 0.5, mean over the
classes with GT; lower is better) of the masks those thresholds keep, beside the thresholds
best on the validation images themselves (the in-sample bound the issue compares with):

- ``per-class``: each class's LRP-optimal threshold (:func:`maskiou.quality.lrp.molrp`, the
  add-on's first rule): the lowest kept score;
- ``per-class, midpoint``: the same cut, the threshold halfway to the next lower score of the
  class (the widest margin on both sides of the cut);
- ``one threshold``: one threshold for every class, the one whose held-out mLRP is lowest (a
  grid of 1,001 values over [0, 1]); the add-on's rule since these rows were measured
  (before, ``per-class``);
- ``0.5``: the final score at 0.5 (nothing fitted).

Writes threshold_rules.json and threshold_rules.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runs_table import print_columns, side_by_side  # noqa: E402

import maskiou.quality.lrp as lrp_module  # noqa: E402
from maskiou.evaluation import benchmark  # noqa: E402
from maskiou.quality.lrp import common_threshold, mlrp_at, molrp  # noqa: E402

Split = dict[str, Any]  # scores, labels, matched Float/Int/Float[N]; num_gt {class: count}


def per_class(held: Split) -> dict[int, float]:
    """Each class's LRP-optimal threshold on the held-out detections (the add-on's rule)."""
    _, rows = molrp(held["scores"], held["labels"], held["matched"], held["num_gt"])
    return {c: r.threshold for c, r in rows.items()}


def per_class_midpoint(held: Split) -> dict[int, float]:
    """:func:`per_class`'s cut, the threshold halfway between the lowest kept score and the
    class's next lower score (the same where nothing lies below)."""
    out = {}
    for c, t in per_class(held).items():
        s = held["scores"][held["labels"] == c]
        below = s[s < t]
        out[c] = float((t + below.max()) / 2) if np.isfinite(t) and len(below) else t
    return out


def one_threshold(held: Split) -> dict[int, float]:
    """One threshold for every class (:func:`maskiou.quality.lrp.common_threshold`, what the
    add-on stores): the grid value with the lowest held-out mLRP (the highest among equals)."""
    t, _ = common_threshold(held["scores"], held["labels"], held["matched"], held["num_gt"])
    return dict.fromkeys(held["num_gt"], t)


def half(held: Split) -> dict[int, float]:
    return dict.fromkeys(held["num_gt"], 0.5)


RULES: dict[str, Callable[[Split], dict[int, float]]] = {
    "per-class": per_class, "per-class, midpoint": per_class_midpoint,
    "one threshold": one_threshold, "0.5": half}


def capture(coco_eval_args: list[str]) -> tuple[Split, Split, dict[int, int]]:
    """Run the main job; return the held-out split the threshold fit read (label space), the
    validation split the keep measures read (category ids) and the validation
    ``label -> category id``."""
    seen: dict[str, Any] = {}
    fit, measures = lrp_module.common_threshold, benchmark.keep_measures

    def fit_spy(scores, labels, matched, num_gt, *args, **kwargs):  # noqa: ANN001, ANN002
        seen["held"] = {"scores": np.asarray(scores, np.float64),
                        "labels": np.asarray(labels), "matched": np.asarray(matched),
                        "num_gt": dict(num_gt)}
        return fit(scores, labels, matched, num_gt, *args, **kwargs)

    def measures_spy(dets, scores, model_scoring, groups, dataset, thresholds):  # noqa: ANN001
        from maskiou.evaluation.cocoeval import gt_counts
        from maskiou.quality.matching import match_all

        final = scores[model_scoring]
        seen["val"] = {"scores": np.asarray(final, np.float64), "labels": dets.category_ids,
                       "matched": match_all(final, groups, 0.5),
                       "num_gt": gt_counts(dataset.coco)}
        seen["cats"] = dict(dataset.label_to_cat_id)
        return measures(dets, scores, model_scoring, groups, dataset, thresholds)

    lrp_module.common_threshold, benchmark.keep_measures = fit_spy, measures_spy
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
        import coco_eval

        code = coco_eval.main(coco_eval_args)
    finally:
        lrp_module.common_threshold, benchmark.keep_measures = fit, measures
    if code != 0 or "held" not in seen or "val" not in seen:
        raise SystemExit(f"threshold_rules: the main job ended with {code} or fitted no "
                         "thresholds (an add-on with its map is needed)")
    return seen["held"], seen["val"], seen["cats"]


def rows(held: Split, val: Split, cats: dict[int, int]) -> dict[str, Any]:
    """Each rule's validation mLRP, its thresholds by category id, and the in-sample bound."""
    out: dict[str, Any] = {"optimal on the validation images": {
        "mLRP": molrp(val["scores"], val["labels"], val["matched"], val["num_gt"])[0]}}
    for name, rule in RULES.items():
        by_cat = {int(cats[c]): t for c, t in rule(held).items() if c in cats}
        out[name] = {"mLRP": mlrp_at(val["scores"], val["labels"], val["matched"],
                                     val["num_gt"], by_cat),
                     "thresholds": {str(c): t for c, t in sorted(by_cat.items())}}
    return out


def table_of(runs: dict[str, Any]) -> str:
    """The runs side by side: each rule's validation mLRP (three decimals)."""
    names = list(next(iter(runs.values())))
    return side_by_side("rule (validation mLRP, lower is better)", list(runs), [
        (name, [f"{run[name]['mLRP']:.3f}" if name in run else "" for run in runs.values()])
        for name in names if name != "held-out detections"])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if print_columns(argv, "--table", table_of):
        return 0
    passed = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", default="results/threshold-rules")
    args = p.parse_args(own)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    held, val, cats = capture([*passed, "--output-dir", str(out / "main_job")])
    table = rows(held, val, cats)
    table["held-out detections"] = {"mLRP": float(len(held["scores"]))}
    (out / "threshold_rules.json").write_text(json.dumps(table, indent=2) + "\n")
    text = table_of({"validation mLRP": table})
    (out / "threshold_rules.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
