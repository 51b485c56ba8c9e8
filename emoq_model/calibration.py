"""Confidence calibration: one temperature fitted on validation, stored in the bundle, applied wherever
probabilities leave the model (labeling output, evaluation).

Why: a classifier trained with cross-entropy on a few thousand segments is over- or under-confident, and users
threshold on ``confidence``. Temperature scaling (Guo et al., 2017) divides the log-probabilities by ``T``: the
argmax (the label) never changes, only how sure the output says it is. ``T`` is fitted by minimising the NLL of the
validation split (speakers disjoint from training, normalised as at labeling time), never on test data.
Expected calibration error (ECE, equal-width confidence bins) is reported before and after.
"""

from __future__ import annotations

import json
import os

import numpy as np

CALIBRATION_FILE = "calibration.json"
T_BOUNDS = (0.05, 20.0)


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(probs) / T)`` row-wise (``T = 1``: unchanged)."""
    p = np.asarray(probs, dtype=np.float64)
    if temperature == 1.0:
        return p
    logp = np.log(np.clip(p, 1e-30, None)) / float(temperature)
    logp -= logp.max(-1, keepdims=True)
    e = np.exp(logp)
    return e / e.sum(-1, keepdims=True)


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    p = np.asarray(probs, dtype=np.float64)[np.arange(len(y)), np.asarray(y, dtype=int)]
    return float(-np.log(np.clip(p, 1e-30, None)).mean())


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, n_bins: int = 10) -> float:
    """Sum over equal-width confidence bins of (bin share) x |accuracy - mean confidence|."""
    p = np.asarray(probs, dtype=np.float64)
    conf, pred = p.max(-1), p.argmax(-1)
    correct = pred == np.asarray(y, dtype=int)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    err = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            err += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(err)


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising the NLL of ``y`` under ``probs`` (bounded 1-D search over log T)."""
    from scipy.optimize import minimize_scalar

    if len(y) == 0:
        return 1.0
    res = minimize_scalar(
        lambda lt: nll(apply_temperature(probs, float(np.exp(lt))), y),
        bounds=tuple(np.log(T_BOUNDS)),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(np.exp(res.x))


def kept_temperature(probs: np.ndarray, y: np.ndarray) -> tuple[float, bool]:
    """The NLL-fitted temperature, or 1 (``True``: identity kept) when it would raise the ECE of the very rows it was
    fitted on."""
    t = fit_temperature(probs, y)
    worse = expected_calibration_error(apply_temperature(probs, t), y) > expected_calibration_error(probs, y)
    return (1.0, True) if worse else (t, False)


def calibration_report(probs: np.ndarray, y: np.ndarray, groups=None) -> dict:
    """Fit ``T`` on (``probs``, ``y``) and report NLL and ECE before / after; with ``groups`` (one per row, e.g. the
    recording) also the out-of-fold ECE (:func:`crossfit_ece`, ``ece_crossfit``): ``ece_after`` scores ``T`` on the
    rows it was fitted on and comes out near its minimum whatever the model; the out-of-fold number is what to expect
    on calls the temperature has not seen.

    ``T`` minimises the NLL; on a small validation split that can still raise the binned ECE (measured: 55 rows,
    ECE 0.081 -> 0.091 at T = 1.27). A temperature that makes calibration worse on the very data it was fitted on
    is not kept: ``T = 1`` then (``kept_identity``). The choice uses the validation split only."""
    t, kept_identity = kept_temperature(probs, y)
    cal = apply_temperature(probs, t)
    return {
        "temperature": t,
        "kept_identity": bool(kept_identity),
        "n": int(len(y)),
        "nll_before": nll(probs, y),
        "nll_after": nll(cal, y),
        "ece_before": expected_calibration_error(probs, y),
        "ece_after": expected_calibration_error(cal, y),
        "ece_crossfit": None if groups is None else crossfit_ece(probs, y, groups),
    }


def crossfit_ece(probs: np.ndarray, y: np.ndarray, groups, folds: int = 4) -> float | None:
    """Out-of-fold ECE of temperature scaling: the groups (e.g. recordings) are dealt into ``folds`` folds, each fold's
    rows get the temperature fitted on the other folds, and the ECE is taken over all rows so calibrated. The
    in-sample ``ece_after`` scores ``T`` on the rows it was fitted on; this scores it on rows it has not seen, as
    labeling will. None with fewer than two groups. Each fold's temperature is chosen as :func:`calibration_report`
    chooses it (:func:`kept_temperature`)."""
    g = np.asarray([str(x) for x in groups])
    names = sorted(set(g.tolist()))
    if len(names) < 2:
        return None
    fold_of = {n: i % min(folds, len(names)) for i, n in enumerate(names)}
    f = np.array([fold_of[x] for x in g])
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(y, dtype=int)
    out = np.empty_like(p)
    for k in np.unique(f):
        train, test = f != k, f == k
        t, _ = kept_temperature(p[train], y[train])
        out[test] = apply_temperature(p[test], t)
    return expected_calibration_error(out, y)


def save_calibration(bundle_dir: str | os.PathLike, report: dict) -> None:
    with open(os.path.join(os.fspath(bundle_dir), CALIBRATION_FILE), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)


def _read(bundle_dir: str | os.PathLike) -> dict:
    path = os.path.join(os.fspath(bundle_dir), CALIBRATION_FILE)
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_context(bundle_dir: str | os.PathLike):
    """The bundle's conversation context (:class:`emoq_model.context.ChannelContext`; off when none was fitted)."""
    from emoq_model.context import ChannelContext

    return ChannelContext.from_dict(_read(bundle_dir).get("context"))


def load_temperature(bundle_dir: str | os.PathLike) -> float:
    """The bundle's fitted temperature (1.0 for bundles without ``calibration.json``)."""
    return float(_read(bundle_dir).get("temperature", 1.0))
