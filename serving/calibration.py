"""Post-hoc calibration of ranker logits into click probabilities, and the metrics that judge it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

# scikit-learn is imported where it fits or scores, not here: serving only interpolates, and every python stub
# imports this module through the graph (sklearn costs a second of each stub's start, i.e. of every reload).

CALIBRATOR_FILE = "calibrator.npz"


@dataclasses.dataclass(frozen=True)
class IsotonicCalibrator:
    """Monotone piecewise-linear map logit -> probability; serving is one np.interp."""

    x: np.ndarray  # float64, increasing logits
    y: np.ndarray  # float64, non-decreasing probabilities

    @classmethod
    def fit(cls, logits: np.ndarray, labels: np.ndarray) -> "IsotonicCalibrator":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(out_of_bounds="clip", y_min=1e-4, y_max=1 - 1e-4)
        iso.fit(logits.astype(np.float64), labels.astype(np.float64))
        return cls(x=iso.X_thresholds_.astype(np.float64), y=iso.y_thresholds_.astype(np.float64))

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        return np.interp(np.asarray(logits, np.float64), self.x, self.y).astype(np.float32)

    def save(self, path: Path) -> None:
        np.savez(path, x=self.x, y=self.y)

    @classmethod
    def load(cls, path: Path) -> "IsotonicCalibrator":
        z = np.load(path)
        return cls(x=z["x"], y=z["y"])


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE with equal-width bins: sum over bins of |mean(p) - mean(y)| weighted by the bin's share."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels, np.float64)
    idx = np.minimum((probs * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            ece += sel.mean() * abs(probs[sel].mean() - labels[sel].mean())
    return float(ece)


def ctr_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import log_loss, roc_auc_score

    p = np.clip(np.asarray(probs, np.float64), 1e-7, 1 - 1e-7)
    return {"auc": float(roc_auc_score(labels, p)), "log_loss": float(log_loss(labels, p)),
            "ece_15": expected_calibration_error(p, labels)}


@dataclasses.dataclass(frozen=True)
class PlattCalibrator:
    """p = sigmoid(a * logit + b): two parameters, so it stays sane where held-out logs are thin."""

    a: float
    b: float

    @classmethod
    def fit(cls, logits: np.ndarray, labels: np.ndarray) -> "PlattCalibrator":
        from sklearn.linear_model import LogisticRegression

        x = np.asarray(logits, np.float64).reshape(-1, 1)
        y = np.asarray(labels, np.int64).reshape(-1)
        if len(np.unique(y)) < 2:
            raise ValueError(f"labels: Platt scaling needs both classes, got only {np.unique(y).tolist()}")
        # Almost no regularisation: the two parameters are the whole model.
        lr = LogisticRegression(C=1e6, max_iter=1000).fit(x, y)
        return cls(a=float(lr.coef_[0, 0]), b=float(lr.intercept_[0]))

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        z = self.a * np.asarray(logits, np.float64) + self.b
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)
