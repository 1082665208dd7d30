"""Recalibration: a small scikit-learn model from a detection's signals to its mask quality.

Fitted on detections of labeled images that neither the detector nor the head trained on (a
held-out share of the add-on images), never on the evaluation split: the model records the
images it was fitted on (the SHA-1 of each file, with its id) and :meth:`check_not_fitted_on`
refuses a split that contains any of them.

Signals: the classification score, the head's predicted MaskIoU, the maskness and the box's
share of the image. Kinds:

- ``logistic``: logistic regression on the logarithms of the signals, fitted to the target as a
  soft label (each detection counts as a positive with weight t and a negative with weight
  1 - t). Its score is monotone in ``cls^a * iou^b * maskness^c * area^d``: it learns how much
  each signal should count.
- ``gbm``: gradient-boosted trees (scikit-learn's HistGradientBoostingRegressor) on the signals and
  the class, regressing the target.

The target is the head's (see :func:`maskiou.addon.fit.regression_target`): the true MaskIoU,
or the share of COCO's IoU thresholds it passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

KINDS = ("logistic", "gbm")
SIGNALS = ("cls", "head", "maskness", "rel_area")
_EPS = 1e-4


class RecalibrationError(ValueError):
    """A recalibration model asked to score images it was fitted on."""


def signal_matrix(cls: np.ndarray, head: np.ndarray, maskness: np.ndarray,
                  rel_area: np.ndarray) -> np.ndarray:
    """Float[N, 4]: log of each signal (clipped away from 0), the input of every kind."""
    cols = [np.clip(np.asarray(x, dtype=np.float64), _EPS, 1.0)
            for x in (cls, head, maskness, rel_area)]
    return np.log(np.stack(cols, axis=1))


@dataclass
class Recalibration:
    """A fitted recalibration model and the images it was fitted on."""

    kind: str
    model: Any
    fitted_on: dict[str, int] = field(default_factory=dict)  # image SHA-1 -> image id

    @staticmethod
    def fit(kind: str, cls: np.ndarray, head: np.ndarray, maskness: np.ndarray,
            rel_area: np.ndarray, labels: np.ndarray, true_ious: np.ndarray,
            fitted_on: dict[str, int], seed: int = 0, target: str = "iou") -> Recalibration:
        """Fit ``kind`` to the ``target`` of N detections' true MaskIoU (arrays [N])."""
        import torch

        from .fit import regression_target

        x = signal_matrix(cls, head, maskness, rel_area)
        y = regression_target(torch.as_tensor(np.asarray(true_ious, dtype=np.float32)),
                              target).double().clamp(0.0, 1.0).numpy()
        if len(y) < 10:
            raise ValueError(f"recalibration: {len(y)} detections are too few to fit on")
        if kind == "logistic":
            from sklearn.linear_model import LogisticRegression

            model = LogisticRegression(C=1.0, max_iter=1000)
            model.fit(np.concatenate([x, x]), np.r_[np.ones(len(y)), np.zeros(len(y))],
                      sample_weight=np.r_[y, 1.0 - y] + 1e-6)
        elif kind == "gbm":
            from sklearn.ensemble import HistGradientBoostingRegressor

            model = HistGradientBoostingRegressor(max_iter=200, learning_rate=0.05,
                                                  max_leaf_nodes=15, min_samples_leaf=40,
                                                  l2_regularization=1.0, random_state=seed)
            model.fit(np.c_[x, labels], y)
        else:
            raise ValueError(f"recalibration must be one of {KINDS}, got {kind!r}")
        return Recalibration(kind, model, dict(fitted_on))

    def predict(self, cls: np.ndarray, head: np.ndarray, maskness: np.ndarray,
                rel_area: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """The recalibrated score of N detections, Float[N] in [0, 1]."""
        if len(cls) == 0:
            return np.zeros(0)
        x = signal_matrix(cls, head, maskness, rel_area)
        if self.kind == "logistic":
            return self.model.predict_proba(x)[:, 1]
        return np.clip(self.model.predict(np.c_[x, labels]), 0.0, 1.0)

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
        """What the add-on checkpoint stores (a pickled scikit-learn model)."""
        return {"kind": self.kind, "model": self.model, "fitted_on": self.fitted_on}

    @staticmethod
    def from_state(state: dict[str, Any]) -> Recalibration:
        return Recalibration(state["kind"], state["model"], dict(state["fitted_on"]))
