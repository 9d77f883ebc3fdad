"""Unit tests of isotonic calibration and the calibration metrics."""

from __future__ import annotations

import numpy as np
import pytest

from serving.calibration import IsotonicCalibrator, ctr_metrics, expected_calibration_error


def _miscalibrated(n: int, seed: int):
    """Labels drawn from true p = sigmoid(z); the model's logit is a distorted, shifted version of z."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-1.5, 1.2, size=n)
    p = 1.0 / (1.0 + np.exp(-z))
    labels = (rng.random(n) < p).astype(np.int64)
    logits = 2.5 * z + 1.0  # overconfident and biased upwards, but rank-preserving
    return logits.astype(np.float32), labels, p


@pytest.fixture(scope="module")
def fitted():
    logits, labels, _ = _miscalibrated(20_000, seed=0)
    return IsotonicCalibrator.fit(logits, labels)


def test_fit_is_monotone_and_bounded(fitted):
    assert fitted.x.dtype == fitted.y.dtype == np.float64
    assert np.all(np.diff(fitted.x) >= 0)
    assert np.all(np.diff(fitted.y) >= 0)
    grid = np.linspace(-30, 30, 2001, dtype=np.float32)  # far beyond the fitted range too
    out = fitted(grid)
    assert out.dtype == np.float32 and out.shape == grid.shape
    assert np.all(np.diff(out) >= 0)
    assert np.all((out >= 0) & (out <= 1))
    assert out[0] == pytest.approx(fitted.y[0]) and out[-1] == pytest.approx(fitted.y[-1])  # clipped ends
    assert out[-1] > out[0]


def test_fit_on_small_hand_made_data():
    cal = IsotonicCalibrator.fit(np.array([-2.0, -1.0, 0.0, 1.0, 2.0, 3.0]), np.array([0, 0, 1, 0, 1, 1]))
    out = cal(np.array([-5.0, -2.0, 0.5, 10.0]))
    assert np.all(np.diff(out) >= 0)
    assert out[0] == pytest.approx(1e-4)  # y_min keeps log loss finite
    assert out[-1] == pytest.approx(1 - 1e-4)
    # The violating pair (0 -> 1, 1 -> 0) is pooled to its mean.
    assert cal(np.array([0.5]))[0] == pytest.approx(0.5)


def test_save_load_round_trip(fitted, tmp_path):
    path = tmp_path / "calibrator.npz"
    fitted.save(path)
    loaded = IsotonicCalibrator.load(path)
    np.testing.assert_array_equal(loaded.x, fitted.x)
    np.testing.assert_array_equal(loaded.y, fitted.y)
    probe = np.random.default_rng(1).normal(0, 5, size=500)
    np.testing.assert_array_equal(loaded(probe), fitted(probe))


def test_ece_is_zero_for_perfectly_calibrated_bins():
    # In each bin every prediction equals the bin's empirical click rate.
    probs, labels = [], []
    for p, n in ((0.1, 10), (0.3, 20), (0.5, 4), (0.8, 5)):
        k = int(round(p * n))
        probs += [p] * n
        labels += [1] * k + [0] * (n - k)
    assert expected_calibration_error(np.array(probs), np.array(labels)) == pytest.approx(0.0, abs=1e-12)
    # p = 1.0 falls in the last bin, not out of range.
    assert expected_calibration_error(np.array([1.0, 1.0]), np.array([1, 1])) == pytest.approx(0.0)


def test_ece_is_large_when_miscalibrated():
    labels = np.array([0] * 90 + [1] * 10)
    assert expected_calibration_error(np.full(100, 0.9), labels) == pytest.approx(0.8)
    assert expected_calibration_error(np.full(100, 0.1), labels) == pytest.approx(0.0, abs=1e-12)
    # Hand-computed two-bin case: weights 0.5/0.5, gaps |0.05-0.5| and |0.95-0.5|.
    probs = np.array([0.05, 0.05, 0.95, 0.95])
    assert expected_calibration_error(probs, np.array([0, 1, 1, 0])) == pytest.approx(0.45)


def test_fitting_reduces_ece_and_keeps_ranking(fitted):
    logits, labels, true_p = _miscalibrated(20_000, seed=1)  # held-out data
    raw = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    before = ctr_metrics(raw, labels)
    after = ctr_metrics(fitted(logits), labels)
    assert before["ece_15"] > 0.1
    assert after["ece_15"] < 0.03
    assert after["ece_15"] < before["ece_15"] / 4
    assert after["log_loss"] < before["log_loss"]
    # Monotone map: AUC essentially unchanged (ties from plateaus may cost a little).
    assert after["auc"] == pytest.approx(before["auc"], abs=0.01)
    # And the calibrated probabilities track the true ones.
    assert np.abs(fitted(logits) - true_p).mean() < 0.03
    for key in ("auc", "log_loss", "ece_15"):
        assert isinstance(after[key], float)
