"""Recalibration: fit the weights of the head's final score (:mod:`maskiou.calibration`) on
detections neither the detector nor the head trained on.

The final score is a logistic function of the logarithms of five signals, the classification
score, the head's output, the maskness, the box's share of the image and how uncontested the
detection is in its image: monotone in ``cls^a * quality^b * maskness^c * area^d * free^e``.
Two fits (``kind``):

- ``"search"`` (the default): the exponents that maximize COCO mask AP on these detections,
  found by :func:`maskiou.addon.apsearch.search_weights` from the head's rescoring
  (``cls x quality``), then one scale and a bias fitted (logistic, the head's target as a soft
  label) so that the score estimates the target. AP depends only on the order of the detections
  of a class, and this is the order it was chosen for. It needs each detection's mask and the
  ground truth (a disk cache keeps them); without them the fit is the logistic one.
- ``"logistic"``: all five weights fitted to the head's target as a soft label (each detection a
  positive with weight t and a negative with weight 1 - t). It minimizes a log loss that the
  many low-scored false positives dominate: on YOLO-seg it ranked held-out detections 2.2 AP
  below the rescoring it contains (docs/levers.md).

With the search, :meth:`Recalibration.fit` also scores each detection out of sample (the images
split in two halves, each scored by the weights searched on the other): the add-on keeps the
recalibration only where those scores beat the rescoring on AP (:func:`maskiou.addon.run.
recalibration_kept`), since the search's own AP on the detections it saw is optimistic.

What is kept is five weights and a bias: they become tensors in the model
(:meth:`Recalibration.install`), so ``model(images)``, TorchScript and ONNX return the same final
score that the benchmark measures. It is fitted on a held-out share of the add-on images (or
their out-of-fold predictions), never on the evaluation split: it records the images it was
fitted on (the SHA-1 of each file, with its id) and :meth:`Recalibration.check_not_fitted_on`
refuses a split that contains any of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from maskiou.calibration import CURVE_KNOTS, CURVE_MIX, SIGNALS, signal_logs
from maskiou.signals import uncontested

KINDS = ("search", "logistic")
START = (1.0, 1.0, 0.0, 0.0, 0.0)  # the search starts from the rescoring, cls x quality
SCALE_SIGNAL = SIGNALS.index("head")  # the search keeps its weight: AP depends on order only


class RecalibrationError(ValueError):
    """A recalibration model asked to score images it was fitted on."""


def detection_groups(image_ids: np.ndarray, views: np.ndarray | None = None
                     ) -> list[np.ndarray]:
    """The detections of each image as the detector saw it: for N detections, one Int array of
    indices per distinct (image id, view) pair, the groups ordered by image then view, each
    group's indices in the detections' own order. ``image_ids`` Int[N]; ``views`` Int[N], each
    detection's view of its image (:data:`maskiou.addon.views.VIEWS`' codes; None: one view)."""
    ids = np.asarray(image_ids).astype(np.int64).reshape(-1)
    v = np.zeros_like(ids) if views is None else np.asarray(views).astype(np.int64).reshape(-1)
    if len(v) != len(ids):
        raise ValueError(f"detection_groups: {len(ids)} image ids but {len(v)} views")
    order = np.lexsort((v, ids))  # stable: by image, then view, then detection order
    key = np.c_[ids[order], v[order]]
    cuts = np.flatnonzero((np.diff(key, axis=0) != 0).any(1)) + 1
    return np.split(order, cuts) if len(order) else []


def detection_signals(cls: np.ndarray, head: np.ndarray, maskness: np.ndarray,
                      rel_area: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
                      image_ids: np.ndarray, views: np.ndarray | None = None) -> np.ndarray:
    """Float64[N, 5]: the log of each signal of N detections, as the model computes them
    (:func:`maskiou.calibration.signal_logs`); ``boxes`` Float[N, 4] (x1, y1, x2, y2),
    ``image_ids`` Int[N] and ``views`` Int[N] (None: one view) give each detection's
    ``uncontested`` among the detections of its image as the detector saw it
    (:func:`detection_groups`)."""
    t = {k: torch.as_tensor(np.asarray(v, dtype=np.float64)) for k, v in
         (("cls", cls), ("head", head), ("maskness", maskness), ("rel_area", rel_area))}
    box = torch.as_tensor(np.asarray(boxes, dtype=np.float64)).reshape(-1, 4)
    lab = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    free = torch.ones(len(lab), dtype=torch.float64)
    for idx in detection_groups(image_ids, views):
        i = torch.as_tensor(idx)
        free[i] = uncontested(t["cls"][i], box[i], lab[i])
    return signal_logs(t["cls"], t["head"], t["maskness"], t["rel_area"], free).numpy()


def soft_logistic(x: np.ndarray, y: np.ndarray, standardize: bool = False
                  ) -> tuple[np.ndarray, float]:
    """Weights Float64[k] and bias of a logistic model of soft labels ``y`` (Float[N] in
    [0, 1]) on ``x`` Float[N, k]: each row a positive with weight y and a negative with weight
    1 - y, scikit-learn's L2-penalized fit (C = 1). ``standardize``: the penalty weighs every
    column alike (each centred and scaled to unit variance for the fit by scikit-learn's
    ``StandardScaler``; a constant column is left unscaled); the weights and bias are those of
    ``x`` as given either way: sigmoid(x @ weights + bias)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(x, np.float64)
    mean, scale, z = np.zeros(x.shape[1]), np.ones(x.shape[1]), x
    if standardize:
        scaler = StandardScaler().fit(x)
        mean, scale, z = scaler.mean_, scaler.scale_, scaler.transform(x)
    model = LogisticRegression(C=1.0, max_iter=1000)
    model.fit(np.concatenate([z, z]), np.r_[np.ones(len(y)), np.zeros(len(y))],
              sample_weight=np.r_[y, 1.0 - y] + 1e-6)
    w = model.coef_[0].astype(np.float64) / scale
    return w, float(model.intercept_[0] - w @ mean)


@dataclass
class MatchInputs:
    """What the search needs to measure AP: the ground truth (a pycocotools ``COCO``) and each
    detection's image id, category id and mask (COCO RLE)."""

    coco: Any
    image_ids: np.ndarray
    category_ids: np.ndarray
    rles: list[dict[str, Any]]
    _every: Any = field(default=None, init=False, repr=False, compare=False)

    def table(self, rows: np.ndarray) -> Any:
        """The :class:`~maskiou.addon.apsearch.MatchTable` of the detections ``rows`` (Int[R],
        distinct) on their images; the IoUs are computed once, for every detection, on the
        first call (the fit's three searches share them)."""
        from .apsearch import MatchTable

        if self._every is None:
            ids = np.asarray(self.image_ids)
            self._every = MatchTable(self.coco, sorted({int(i) for i in ids}), ids,
                                     np.asarray(self.category_ids), self.rles)
        return self._every.subset(np.asarray(rows))


def search_exponents(x: np.ndarray, match: MatchInputs, rows: np.ndarray) -> np.ndarray:
    """The weights Float[k] that :func:`maskiou.addon.apsearch.search_weights` finds for AP on
    ``rows`` (Int[R]) of ``x`` Float[N, k] (the signals' logs in :data:`SIGNALS`' order, any
    column beyond them a further signal): from the rescoring (:data:`START`; a further column
    from 0), the head's weight fixed at 1 (it sets the scale: AP depends on order only)."""
    from .apsearch import search_weights

    start = np.zeros(x.shape[1])
    start[:min(len(START), len(start))] = START[:len(start)]
    return search_weights(x[rows], match.table(rows), start, SCALE_SIGNAL)[0]


def searched(x: np.ndarray, y: np.ndarray, match: MatchInputs, rows: np.ndarray
             ) -> tuple[list[float], float]:
    """The searched weights on ``rows`` (Int[R]) of ``x`` Float[N, 5], scaled with a bias so
    that sigmoid(bias + x @ weights) estimates ``y``."""
    w = search_exponents(x, match, rows)
    (scale,), bias = soft_logistic((x[rows] @ w)[:, None], y[rows])
    return [float(v) for v in scale * w], bias


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


CLASS_PRIOR = 10.0
"""How many detections' worth of the curve of all classes a class's curve is blended with."""


def isotonic_curve(scores: np.ndarray, target: np.ndarray, knots: int = CURVE_KNOTS
                   ) -> np.ndarray:
    """The isotonic (nondecreasing) regression of ``target`` on ``scores`` (Float[n] each),
    read at ``knots`` equal steps of [0, 1]: Float[knots] in [0, 1]; the identity for n = 0."""
    from sklearn.isotonic import IsotonicRegression

    at = np.linspace(0.0, 1.0, knots)
    if len(scores) == 0:
        return at
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
    return iso.fit(np.asarray(scores, np.float64), np.asarray(target, np.float64)).predict(at)


def fit_class_curves(scores: np.ndarray, labels: np.ndarray, target: np.ndarray,
                     num_classes: int, prior: float = CLASS_PRIOR) -> list[list[float]]:
    """The map per class of the final score (see :class:`maskiou.calibration.
    ScoreCalibration`): per class, :func:`isotonic_curve` of its detections blended with the
    curve of all detections as if that were ``prior`` more detections of the class
    (``(n_c curve_c + prior curve_all) / (n_c + prior)``, nondecreasing as both are); a class
    without detections gets the curve of all.

    Args:
        scores: Float[n] in [0, 1], each detection's score before the map.
        labels: Int[n] in [0, num_classes), each detection's label.
        target: Float[n], what the score should estimate: the IoU of the GT that COCO's greedy
            matching gives the detection (0 for a false positive), whose mean in a bin of the
            score is precision x mean IoU.
        num_classes: the head's label count.

    Returns:
        ``num_classes`` curves of ``CURVE_KNOTS`` values.
    """
    labels = np.asarray(labels)
    scores, target = np.asarray(scores, np.float64), np.asarray(target, np.float64)
    common = isotonic_curve(scores, target)
    curves = [common.copy() for _ in range(num_classes)]
    for c in np.unique(labels):
        sel = labels == c
        n = int(sel.sum())
        curves[int(c)] = (n * isotonic_curve(scores[sel], target[sel]) + prior * common) \
            / (n + prior)
    return [np.clip(np.maximum.accumulate(c), 0.0, 1.0).tolist() for c in curves]


def apply_class_curves(scores: np.ndarray, labels: np.ndarray, curves: list[list[float]]
                       ) -> np.ndarray:
    """What the model's map per class makes of ``scores`` (Float[n]) of ``labels`` (Int[n]),
    in float64: :func:`maskiou.calibration.class_curve` mixed with the score itself."""
    c = np.asarray(curves, np.float64)
    at = np.linspace(0.0, 1.0, c.shape[1])
    s = np.clip(np.asarray(scores, np.float64), 0.0, 1.0)
    out = np.array([np.interp(v, at, c[int(k)]) for v, k in zip(s, np.asarray(labels))])
    return (1.0 - CURVE_MIX) * out.reshape(len(s)) + CURVE_MIX * s


@dataclass
class Recalibration:
    """A fitted recalibration: the weights of :data:`maskiou.calibration.SIGNALS`, the bias, and
    the images it was fitted on; ``check_scores`` (not saved): each fitted detection's score out
    of sample, where the fit made them."""

    kind: str
    weights: list[float]
    bias: float
    fitted_on: dict[str, int] = field(default_factory=dict)  # image SHA-1 -> image id
    check_scores: np.ndarray | None = field(default=None, repr=False, compare=False)
    class_curves: list[list[float]] | None = None  # the map per class (None: no map)
    class_thresholds: list[float] | None = None  # per label: keep scores >= it

    @staticmethod
    def fit(kind: str, x: np.ndarray, true_ious: np.ndarray, fitted_on: dict[str, int],
            match: MatchInputs | None = None, seed: int = 0, target: str = "iou"
            ) -> Recalibration:
        """Fit ``kind`` on N detections: their signals ``x`` (Float[N, 5],
        :func:`detection_signals`) and true MaskIoU; ``match`` for the search (without it,
        the logistic fit)."""
        from .fit import regression_target

        if kind not in KINDS:
            raise ValueError(f"recalibration must be one of {KINDS}, got {kind!r}")
        y = regression_target(torch.as_tensor(np.asarray(true_ious, dtype=np.float32)),
                              target).double().clamp(0.0, 1.0).numpy()
        if len(y) < 10:
            raise ValueError(f"recalibration: {len(y)} detections are too few to fit on")
        if kind == "logistic" or match is None:
            w, b = soft_logistic(x, y)
            return Recalibration("logistic", [float(v) for v in w], b, dict(fitted_on))
        every = np.arange(len(y))
        weights, bias = searched(x, y, match, every)
        images = np.unique(match.image_ids)
        half = set(np.random.default_rng(seed).permutation(images)[:len(images) // 2].tolist())
        first = np.array([int(i) in half for i in match.image_ids])
        check = np.zeros(len(y))
        if first.any() and (~first).any():
            for fit_on, score in ((first, ~first), (~first, first)):
                w, b = searched(x, y, match, every[fit_on])
                check[score] = sigmoid(x[score] @ np.array(w) + b)
        else:
            check = None
        return Recalibration(kind, weights, bias, dict(fitted_on), check)

    def predict(self, x: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        """The final score of N detections from their signals ``x`` (Float[N, 5],
        :func:`detection_signals`), Float[N] in [0, 1]: what the model's
        :class:`~maskiou.calibration.ScoreCalibration` computes, in float64; with their
        ``labels`` (Int[N]) and a fitted map per class, after that map."""
        if len(x) == 0:
            return np.zeros(0)
        s = sigmoid(np.asarray(x, np.float64) @ np.array(self.weights) + self.bias)
        if labels is not None and self.class_curves is not None:
            s = apply_class_curves(s, labels, self.class_curves)
        return s

    def install(self, head: nn.Module) -> None:
        """Put the weights (and the map per class, when fitted) into the head's calibration:
        the model's final score becomes this recalibration's."""
        head.calibration.set(self.weights, self.bias)
        if self.class_curves is not None:
            head.calibration.set_class_curves(self.class_curves)
        if self.class_thresholds is not None:
            head.calibration.set_class_thresholds(self.class_thresholds)

    def check_not_fitted_on(self, fingerprints: dict[str, int], where: str) -> None:
        """Raise :class:`RecalibrationError` if any image of ``fingerprints`` (SHA-1 -> id, see
        :func:`maskiou.records.image_fingerprints`) is one it was fitted on."""
        seen = sorted(fingerprints[h] for h in fingerprints.keys() & self.fitted_on.keys())
        if seen:
            shown = ", ".join(str(i) for i in seen[:5]) + (" ..." if len(seen) > 5 else "")
            raise RecalibrationError(
                f"{where}: {len(seen)} of its images (ids {shown}) are images the "
                "recalibration was fitted on; evaluate it on images it has not seen")

    def state(self) -> dict[str, Any]:
        """What the add-on checkpoint records (plain values; the weights are also in the
        model's state dict, where the model reads them)."""
        state = {"kind": self.kind, "signals": list(SIGNALS), "weights": list(self.weights),
                 "bias": self.bias, "fitted_on": self.fitted_on}
        if self.class_curves is not None:
            state["class_curves"] = [list(c) for c in self.class_curves]
        if self.class_thresholds is not None:
            state["class_thresholds"] = list(self.class_thresholds)
        return state

    @staticmethod
    def from_state(state: dict[str, Any]) -> Recalibration:
        if "weights" not in state:
            raise ValueError("a recalibration state without weights (written by maskiou before "
                             "schema 2: convert its checkpoint with maskiou-convert)")
        weights = [float(w) for w in state["weights"]]
        # a recalibration of fewer signals (maskiou before "uncontested"): the others weigh 0
        weights += [0.0] * (len(SIGNALS) - len(weights))
        return Recalibration(state["kind"], weights, float(state["bias"]),
                             dict(state["fitted_on"]), class_curves=state.get("class_curves"),
                             class_thresholds=state.get("class_thresholds"))
