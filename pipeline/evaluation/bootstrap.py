"""Confidence intervals of archive scores by resampling whole recordings (a cluster bootstrap).

Segments of one call share a speaker, a script and a line, so they are not independent draws: an interval over
segments would be far too narrow (one all-call angry customer can hold most of an archive's angry segments). The
unit resampled here is the recording. Each recording is reduced once to its confusion counts and its calibration
bin sums, so a resample's scores are sums of small arrays; ``scipy.stats.bootstrap`` draws the resamples
(percentile intervals: they stay defined when a resample is degenerate, e.g. every recording labelled perfectly).
"""

from __future__ import annotations

import numpy as np

N_BINS = 10  # as emoq_model.calibration.expected_calibration_error


def recording_tables(
    recording: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, k: int, order: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-recording confusion counts ``[R, k, k + 1]`` (true x predicted; column ``k`` = a prediction outside the
    labels, always wrong) and each row's recording code; ``order``: the recordings (sorted strings) and their order,
    rows of others left out (default: every recording in ``recording``)."""
    rec = np.asarray(recording).astype(str)
    order = np.unique(rec) if order is None else order
    keep = np.isin(rec, order)
    codes = np.searchsorted(order, rec[keep])
    conf = np.zeros((len(order), k, k + 1), np.int64)
    np.add.at(conf, (codes, np.asarray(y_true, np.int64)[keep], np.asarray(y_pred, np.int64)[keep]), 1)
    return conf, codes


def calibration_bins(codes: np.ndarray, n_recordings: int, probs: np.ndarray, y_true: np.ndarray) -> np.ndarray:
    """Per-recording sums of the ECE's equal-width confidence bins ``[R, N_BINS, 3]``: count, confidence,
    correct."""
    p = np.asarray(probs, np.float64)
    conf, correct = p.max(-1), p.argmax(-1) == np.asarray(y_true, np.int64)
    b = np.minimum((conf * N_BINS).astype(int), N_BINS - 1)
    out = np.zeros((n_recordings, N_BINS, 3))
    for j, v in enumerate((np.ones_like(conf), conf, correct.astype(np.float64))):
        np.add.at(out[..., j], (codes, b), v)
    return out


def scores_from_confusion(conf: np.ndarray) -> dict[str, np.ndarray]:
    """UA, accuracy and macro-F1 from confusion counts ``[..., k, k + 1]``, with ``classification_report``'s
    conventions: UA over the classes present in the truth, F1 over the classes present in truth or prediction."""
    k = conf.shape[-2]
    tp = np.diagonal(conf[..., :k], axis1=-2, axis2=-1).astype(np.float64)
    support = conf.sum(-1).astype(np.float64)
    predicted = conf[..., :k].sum(-2).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, tp / support, np.nan)
        f1 = np.where(support + predicted > 0, 2 * tp / (support + predicted), np.nan)
        return {
            "ua": np.nanmean(recall, -1),
            "accuracy": tp.sum(-1) / support.sum(-1),
            "macro_f1": np.nanmean(f1, -1),
        }


def ece_from_bins(bins: np.ndarray) -> np.ndarray:
    """ECE from summed bins ``[..., N_BINS, 3]``: sum over bins of |correct - confidence| / n."""
    return np.abs(bins[..., 2] - bins[..., 1]).sum(-1) / bins[..., 0].sum(-1)


def format_intervals(ci: dict, unit: str = "recording") -> str:
    """One line: each score's interval and what was resampled (``unit``: recording, speaker)."""
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    names = (("ua", "UA"), ("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("ece", "ECE"))
    return f"{ci['level']:.0%} intervals over {ci['n_recordings']} {unit}s (bootstrap of whole {unit}s): " + ", ".join(
        f"{name} {f(ci[key][0])}-{f(ci[key][1])}" for key, name in names if key in ci
    )


def _percentile(stat, n_rec: int, k: int, n_resamples: int, level: float, seed: int):
    """``scipy.stats.bootstrap`` over the recording indices ``0..n_rec-1``, vectorised in batches of bounded size."""
    from scipy.stats import bootstrap

    return bootstrap(
        (np.arange(n_rec),),
        stat,
        n_resamples=n_resamples,
        batch=max(1, min(n_resamples, 2_000_000 // (n_rec * (k + 1) * k))),
        vectorized=True,
        confidence_level=level,
        method="percentile",
        rng=np.random.default_rng(seed),
    )


def recording_bootstrap(
    recording,
    y_true,
    y_pred,
    k: int,
    probs=None,
    prob_mask=None,
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict | None:
    """Percentile intervals of segment UA, accuracy, macro-F1 (and ECE with ``probs``, the rows of ``prob_mask``)
    over ``n_resamples`` resamples of the recordings; None with fewer than 2 recordings. ``y_pred`` == ``k``: a
    prediction outside the labels."""
    conf, codes = recording_tables(np.asarray(recording), y_true, y_pred, k)
    n_rec = conf.shape[0]
    if n_rec < 2 or n_resamples <= 0:
        return None
    tables = {"conf": conf}
    if probs is not None and len(probs):
        mask = np.ones(len(codes), bool) if prob_mask is None else np.asarray(prob_mask, bool)
        tables["bins"] = calibration_bins(codes[mask], n_rec, probs, np.asarray(y_true)[mask])

    def stat(name):
        def f(idx, axis=-1):
            idx = np.asarray(idx, np.int64)
            if name == "ece":
                return ece_from_bins(tables["bins"][idx].sum(-3))
            return scores_from_confusion(tables["conf"][idx].sum(-3))[name]

        return f

    out: dict = {"level": level, "n_recordings": n_rec, "n_resamples": n_resamples, "method": "percentile"}
    names = ["ua", "accuracy", "macro_f1"] + (["ece"] if "bins" in tables else [])
    for name in names:
        ci = _percentile(stat(name), n_rec, k, n_resamples, level, seed).confidence_interval
        out[name] = [None if np.isnan(v) else float(v) for v in (ci.low, ci.high)]  # NaN: undefined in resamples
    return out


def paired_difference(
    a: tuple,
    b: tuple,
    k: int,
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict | None:
    """Two labelings of one archive, ``a`` and ``b`` (each ``(recording, y_true, y_pred)`` of its scored segments;
    their segmentations may differ): each score of both, ``b - a`` and its percentile interval over resamples of
    the recordings both scored, drawn once for both, so that what the recordings share (a hard caller, an easy
    script) cancels and a difference much smaller than either interval can still be told from noise. ``p_b_better``:
    the share of resamples in which ``b`` scores higher. None with fewer than 2 shared recordings."""
    shared = np.intersect1d(np.asarray(a[0]).astype(str), np.asarray(b[0]).astype(str))
    if len(shared) < 2 or n_resamples <= 0:
        return None
    confs = [recording_tables(*side, k, order=shared)[0] for side in (a, b)]
    out: dict = {"level": level, "n_recordings": len(shared), "n_resamples": n_resamples, "method": "percentile"}
    for name in ("ua", "accuracy", "macro_f1"):

        def diff(idx, axis=-1, name=name):
            idx = np.asarray(idx, np.int64)
            sa, sb = (scores_from_confusion(c[idx].sum(-3))[name] for c in confs)
            return sb - sa

        res = _percentile(diff, len(shared), k, n_resamples, level, seed)
        full = [float(scores_from_confusion(c.sum(0))[name]) for c in confs]
        ci = res.confidence_interval
        out[name] = {
            "a": full[0],
            "b": full[1],
            "b_minus_a": full[1] - full[0],
            "ci": [float(ci.low), float(ci.high)],
            "p_b_better": float((res.bootstrap_distribution > 0).mean()),
        }
    return out
