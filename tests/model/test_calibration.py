"""Temperature calibration (emoq_model.calibration): fit, ECE, argmax invariance, bundle file."""

import numpy as np
import pytest

from emoq_model import calibration as C


def _overconfident(n=4000, k=4, true_t=2.5, seed=0):
    """Labels drawn from softmax(z); the model reports softmax(z * true_t): over-confident by ``true_t``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, k))
    p_true = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = np.array([rng.choice(k, p=row) for row in p_true])
    reported = np.exp(z * true_t) / np.exp(z * true_t).sum(1, keepdims=True)
    return reported, y


def test_fit_recovers_the_temperature_and_lowers_ece():
    probs, y = _overconfident()
    rep = C.calibration_report(probs, y)
    assert rep["temperature"] == pytest.approx(2.5, rel=0.1)
    assert rep["ece_before"] > 0.1 and rep["ece_after"] < 0.03 and rep["nll_after"] < rep["nll_before"]
    cal = C.apply_temperature(probs, rep["temperature"])
    assert np.array_equal(cal.argmax(1), probs.argmax(1)) and np.allclose(cal.sum(1), 1)
    assert np.array_equal(C.apply_temperature(probs, 1.0), probs)


def test_well_calibrated_stays_near_one():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 1.5, (4000, 3))
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in p])
    assert C.fit_temperature(p, y) == pytest.approx(1.0, abs=0.1)
    assert C.expected_calibration_error(p, y) < 0.03


def test_ece_by_hand():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    y = np.array([0, 1, 0, 0])  # bin 0.9: acc 0.5 (|0.5-0.9|=0.4), bin 0.6: acc 1 (|1-0.6|=0.4)
    assert C.expected_calibration_error(probs, y) == pytest.approx(0.4)


def test_bundle_file_round_trip(tmp_path):
    assert C.load_temperature(tmp_path) == 1.0  # bundles from before calibration
    C.save_calibration(tmp_path, {"temperature": 1.7, "n": 3})
    assert C.load_temperature(tmp_path) == 1.7


def test_out_of_fold_ece_scores_each_group_with_a_temperature_fitted_without_it():
    """``crossfit_ece``: two groups that need different temperatures. In sample one T fits both on average; out of
    fold each group gets the other's T, which is worse. By hand: fold A's rows calibrated with T fitted on B, and
    the other way round."""
    pa, ya = _overconfident(1500, true_t=3.0, seed=2)  # over-confident by 3
    pb, yb = _overconfident(1500, true_t=0.8, seed=3)  # slightly under-confident
    probs, y = np.concatenate([pa, pb]), np.concatenate([ya, yb])
    groups = ["a"] * len(ya) + ["b"] * len(yb)
    rep = C.calibration_report(probs, y, groups=groups)
    ta, tb = C.fit_temperature(pa, ya), C.fit_temperature(pb, yb)
    by_hand = C.expected_calibration_error(
        np.concatenate([C.apply_temperature(pa, tb), C.apply_temperature(pb, ta)]), y
    )
    assert rep["ece_crossfit"] == pytest.approx(by_hand)
    assert rep["ece_crossfit"] > rep["ece_after"] + 0.02
    assert C.calibration_report(probs, y)["ece_crossfit"] is None  # no groups: not computed
    assert C.crossfit_ece(probs, y, ["a"] * len(y)) is None  # one group: nothing to hold out
