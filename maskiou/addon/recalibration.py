"""Recalibration: fit the weights of the head's final score (:mod:`maskiou.calibration`) on
detections neither the detector nor the head trained on.

The final score is a logistic function of the logarithms of four signals, the classification
score, the head's output, the maskness and the box's share of the image: monotone in
``cls^a * quality^b * maskness^c * area^d``, it learns how much each signal should count. It is
fitted here with scikit-learn to the head's target as a soft label (each detection counts as a
positive with weight t and a negative with weight 1 - t), and what is kept is four weights and a
bias: they become tensors in the model (:meth:`Recalibration.install`), so ``model(images)``,
TorchScript and ONNX return the same final score that the benchmark measures.

It is fitted on a held-out share of the add-on images (or their out-of-fold predictions), never
on the evaluation split: it records the images it was fitted on (the SHA-1 of each file, with
its id) and :meth:`Recalibration.check_not_fitted_on` refuses a split that contains any of
them. (A gradient-boosted variant existed before the score moved into the model; it could not
run there as tensors and, measured, did not beat the logistic one: it is gone.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from maskiou.calibration import SIGNALS, ScoreCalibration, signal_logs

KINDS = ("logistic",)


class RecalibrationError(ValueError):
    """A recalibration model asked to score images it was fitted on."""


def signal_matrix(cls: np.ndarray, head: np.ndarray, maskness: np.ndarray,
                  rel_area: np.ndarray) -> np.ndarray:
    """Float64[N, 4]: the log of each signal, clipped as the model clips it
    (:func:`maskiou.calibration.signal_logs`)."""
    arrays = [torch.as_tensor(np.asarray(x, dtype=np.float64)) for x in
              (cls, head, maskness, rel_area)]
    return signal_logs(*arrays).numpy()


@dataclass
class Recalibration:
    """A fitted recalibration: the weights of :data:`maskiou.calibration.SIGNALS`, the bias, and
    the images it was fitted on."""

    kind: str
    weights: list[float]
    bias: float
    fitted_on: dict[str, int] = field(default_factory=dict)  # image SHA-1 -> image id

    @staticmethod
    def fit(kind: str, cls: np.ndarray, head: np.ndarray, maskness: np.ndarray,
            rel_area: np.ndarray, labels: np.ndarray, true_ious: np.ndarray,
            fitted_on: dict[str, int], seed: int = 0, target: str = "iou") -> Recalibration:
        """Fit ``kind`` to the ``target`` of N detections' true MaskIoU (arrays [N])."""
        from sklearn.linear_model import LogisticRegression

        from .fit import regression_target

        if kind not in KINDS:
            raise ValueError(f"recalibration must be one of {KINDS}, got {kind!r}")
        x = signal_matrix(cls, head, maskness, rel_area)
        y = regression_target(torch.as_tensor(np.asarray(true_ious, dtype=np.float32)),
                              target).double().clamp(0.0, 1.0).numpy()
        if len(y) < 10:
            raise ValueError(f"recalibration: {len(y)} detections are too few to fit on")
        model = LogisticRegression(C=1.0, max_iter=1000)
        model.fit(np.concatenate([x, x]), np.r_[np.ones(len(y)), np.zeros(len(y))],
                  sample_weight=np.r_[y, 1.0 - y] + 1e-6)
        return Recalibration(kind, [float(w) for w in model.coef_[0]],
                             float(model.intercept_[0]), dict(fitted_on))

    def module(self) -> ScoreCalibration:
        """A :class:`~maskiou.calibration.ScoreCalibration` with these weights (float64)."""
        m = ScoreCalibration().double()
        m.set(self.weights, self.bias)
        return m

    def predict(self, cls: np.ndarray, head: np.ndarray, maskness: np.ndarray,
                rel_area: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        """The final score of N detections, Float[N] in [0, 1]: the model's own computation
        (:class:`~maskiou.calibration.ScoreCalibration`), in float64."""
        if len(cls) == 0:
            return np.zeros(0)
        arrays = [torch.as_tensor(np.asarray(x, dtype=np.float64)) for x in
                  (cls, head, maskness, rel_area)]
        with torch.no_grad():
            return self.module()(*arrays).numpy()

    def install(self, head: nn.Module) -> None:
        """Put the weights into the head's calibration: the model's final score becomes this
        recalibration's."""
        head.calibration.set(self.weights, self.bias)

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
        return {"kind": self.kind, "signals": list(SIGNALS), "weights": list(self.weights),
                "bias": self.bias, "fitted_on": self.fitted_on}

    @staticmethod
    def from_state(state: dict[str, Any]) -> Recalibration:
        if "weights" not in state:
            raise ValueError("a recalibration state without weights (written by maskiou before "
                             "schema 2: convert its checkpoint with maskiou-convert)")
        return Recalibration(state["kind"], [float(w) for w in state["weights"]],
                             float(state["bias"]), dict(state["fitted_on"]))
