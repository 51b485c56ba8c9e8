"""pipeline/evaluation/bootstrap.py: recording-bootstrap intervals of archive scores (no Ray)."""

import json

import numpy as np
import pandas as pd
import pytest

from emoq_model.calibration import expected_calibration_error
from emoq_model.metrics import classification_report
from pipeline.evaluation.archive import evaluate_archive, format_archive_report
from pipeline.evaluation.bootstrap import (
    calibration_bins,
    ece_from_bins,
    paired_difference,
    recording_bootstrap,
    recording_tables,
    scores_from_confusion,
)
from tests.evaluation.test_archive import seg, turn, write_labels

LABELS = ["neutral", "happy", "angry", "sad"]


def archive(n_rec: int, per_rec: int, skill: float, seed: int):
    """Segments of ``n_rec`` recordings, each a skewed label mix; a prediction is right with probability ``skill``,
    else another label or (1 in 10) outside the labels (index 4); probabilities peaked on the prediction."""
    g = np.random.default_rng(seed)
    rec, yt, yp, probs = [], [], [], []
    for r in range(n_rec):
        mix = g.dirichlet(np.full(4, 0.5))
        for _ in range(per_rec):
            t = int(g.choice(4, p=mix))
            p = t if g.random() < skill else (4 if g.random() < 0.1 else int(g.integers(4)))
            q = g.dirichlet(np.ones(4))
            q[min(p, 3)] += 2 * g.random()
            rec.append(f"call_{r:03d}")
            yt.append(t)
            yp.append(p)
            probs.append(q / q.sum())
    return np.array(rec), np.array(yt), np.array(yp), np.array(probs)


def test_scores_from_the_recording_tables_equal_the_reports_on_all_rows():
    """Summed over every recording, the per-recording tables give classification_report's UA, accuracy and
    macro-F1 and expected_calibration_error's ECE (outside-label predictions and a class missing from the truth
    included), so a resample is scored exactly as the report scores the archive."""
    rec, yt, yp, probs = archive(9, 40, 0.6, seed=1)
    yt[yt == 3] = 0  # 'sad' never true: UA over three classes, F1 over four (it is predicted)
    conf, codes = recording_tables(rec, yt, yp, 4)
    assert conf.shape == (9, 4, 5) and conf.sum() == len(yt) and (np.bincount(codes) == 40).all()
    got = scores_from_confusion(conf.sum(0))
    names = LABELS + ["other"]
    want = classification_report([LABELS[t] for t in yt], [names[p] if p < 4 else None for p in yp], LABELS)
    assert want["n_pred_outside_labels"] > 0 and want["classes_in_ua"] == LABELS[:3]
    for key in ("ua", "accuracy", "macro_f1"):
        assert got[key] == pytest.approx(want[key], abs=1e-12)
    bins = calibration_bins(codes, 9, probs, yt)
    assert ece_from_bins(bins.sum(0)) == pytest.approx(expected_calibration_error(probs, yt), abs=1e-12)


def test_intervals_hold_the_estimate_are_seeded_and_narrow_with_more_recordings():
    rec, yt, yp, probs = archive(12, 30, 0.6, seed=2)
    ci = recording_bootstrap(rec, yt, yp, 4, probs=probs, n_resamples=1000, seed=0)
    point = scores_from_confusion(recording_tables(rec, yt, yp, 4)[0].sum(0))
    assert ci["n_recordings"] == 12 and ci["level"] == 0.95 and ci["method"] == "percentile"
    for key in ("ua", "accuracy", "macro_f1"):
        lo, hi = ci[key]
        assert lo < point[key] < hi and hi - lo > 0.02
    assert ci["ece"][0] < expected_calibration_error(probs, yt) < ci["ece"][1]
    assert recording_bootstrap(rec, yt, yp, 4, probs=probs, n_resamples=1000, seed=0) == ci
    assert recording_bootstrap(rec, yt, yp, 4, probs=probs, n_resamples=1000, seed=1) != ci
    # the same kind of archive with 8x the recordings: a much narrower interval (~1/sqrt(8) as wide)
    big = recording_bootstrap(*archive(96, 30, 0.6, seed=3)[:3], 4, n_resamples=1000, seed=0)
    assert big["ua"][1] - big["ua"][0] < 0.6 * (ci["ua"][1] - ci["ua"][0])


def test_the_recording_is_the_unit_not_the_segment():
    """Recordings that are each all right or all wrong: the same segments pooled into one recording per segment
    would give a narrow interval; resampling the 10 recordings gives the wide one their count allows."""
    rec = np.repeat([f"r{i}" for i in range(10)], 50)
    yt = np.zeros(500, np.int64)
    yp = np.where(np.repeat(np.arange(10) % 2 == 0, 50), 0, 1)  # half the recordings wrong throughout
    by_rec = recording_bootstrap(rec, yt, yp, 4, n_resamples=2000, seed=0)
    by_seg = recording_bootstrap(np.arange(500).astype(str), yt, yp, 4, n_resamples=2000, seed=0)
    assert by_rec["accuracy"][1] - by_rec["accuracy"][0] > 2.5 * (by_seg["accuracy"][1] - by_seg["accuracy"][0])


def test_degenerate_and_too_small():
    rec = np.repeat(["a", "b", "c"], 5)
    y = np.tile([0, 1, 2, 3, 0], 3)
    perfect = recording_bootstrap(rec, y, y, 4, n_resamples=200)
    assert perfect["ua"] == [1.0, 1.0] and perfect["accuracy"] == [1.0, 1.0]
    assert recording_bootstrap(np.repeat("a", 5), y[:5], y[:5], 4) is None  # one recording: no interval
    assert recording_bootstrap(rec, y, y, 4, n_resamples=0) is None


def test_evaluate_archive_reports_intervals(tmp_path):
    """Through evaluate_archive: intervals over the evaluated recordings around the segment scores, printed."""
    truth, rows = [], []
    g = np.random.default_rng(0)
    for r in range(6):
        for i in range(8):
            lab = LABELS[(r + i) % 4]
            truth.append(turn(f"r{r}", 1, 2.0 * i, 2.0 * i + 1, lab))
            rows.append(seg(f"r{r}", 1, 2.0 * i, 2.0 * i + 1, lab if g.random() < 0.6 else LABELS[i % 4], i))
    rep = evaluate_archive(write_labels(tmp_path, rows), pd.DataFrame(truth), ci_resamples=500)
    ci = rep["ci"]
    assert ci["n_recordings"] == 6 and ci["n_resamples"] == 500
    for key in ("ua", "accuracy", "macro_f1"):
        assert ci[key][0] <= rep["segment"][key] <= ci[key][1] and ci[key][0] < ci[key][1]
    assert ci["ece"][0] <= rep["calibration"]["ece"] <= ci["ece"][1]
    assert "95% intervals over 6 recordings" in format_archive_report(rep)
    assert evaluate_archive(write_labels(tmp_path / "b", rows), pd.DataFrame(truth), ci_resamples=0)["ci"] is None


def test_paired_difference_cancels_what_recordings_share():
    """b fixes 3 wrong segments in every recording of a labeling whose recordings differ widely in difficulty:
    the paired interval of b - a is far narrower than either labeling's own interval and lies above 0; the
    same labeling twice differs by exactly 0."""
    g = np.random.default_rng(4)
    rec, yt, ya = [], [], []
    for r in range(12):
        skill = g.uniform(0.2, 0.9)  # an easy or a hard caller
        for _ in range(30):
            t = int(g.integers(4))
            rec.append(f"c{r}")
            yt.append(t)
            ya.append(t if g.random() < skill else (t + 1) % 4)
    rec, yt, ya = np.array(rec), np.array(yt), np.array(ya)
    yb = ya.copy()
    for r in range(12):
        wrong = np.flatnonzero((rec == f"c{r}") & (ya != yt))[:3]
        yb[wrong] = yt[wrong]
    cmp = paired_difference((rec, yt, ya), (rec, yt, yb), 4, n_resamples=1000)
    own = recording_bootstrap(rec, yt, ya, 4, n_resamples=1000)
    for key in ("ua", "accuracy", "macro_f1"):
        c = cmp[key]
        assert c["b"] > c["a"] and c["ci"][0] > 0 and c["p_b_better"] == 1.0
        assert c["ci"][1] - c["ci"][0] < 0.5 * (own[key][1] - own[key][0])
    assert cmp["accuracy"]["b_minus_a"] == pytest.approx(36 / 360)
    want = classification_report([LABELS[t] for t in yt], [LABELS[p] for p in yb], LABELS)
    assert cmp["ua"]["b"] == pytest.approx(want["ua"]) and cmp["macro_f1"]["b"] == pytest.approx(want["macro_f1"])
    same = paired_difference((rec, yt, ya), (rec, yt, ya), 4, n_resamples=200)
    assert same["ua"]["b_minus_a"] == 0 and same["ua"]["ci"] == [0.0, 0.0] and same["ua"]["p_b_better"] == 0
    # only the recordings both labelings scored are compared
    part = paired_difference((rec, yt, ya), (rec[:60], yt[:60], yb[:60]), 4, n_resamples=200)
    assert part["n_recordings"] == 2
    assert paired_difference((rec, yt, ya), (rec[:30], yt[:30], yb[:30]), 4) is None


def test_cli_compares_with_a_baseline_labeling(tmp_path, capsys):
    from jobs.evaluate_archive import main

    truth, good, bad = [], [], []
    for r in range(4):
        for i in range(6):
            lab = LABELS[(r + i) % 4]
            truth.append(turn(f"r{r}", 1, 2.0 * i, 2.0 * i + 1, lab))
            good.append(seg(f"r{r}", 1, 2.0 * i, 2.0 * i + 1, lab, i))
            bad.append(seg(f"r{r}", 1, 2.0 * i, 2.0 * i + 1, lab if i % 2 else "neutral", i))
    pd.DataFrame(truth).to_csv(tmp_path / "t.csv", index=False)
    new, old = write_labels(tmp_path / "new", good), write_labels(tmp_path / "old", bad)
    rep = main([new, str(tmp_path / "t.csv"), "--baseline", old, "--ci-resamples", "300"])
    c = rep["comparison"]
    assert c["n_recordings"] == 4 and c["accuracy"]["a"] < c["accuracy"]["b"] == 1.0
    assert c["accuracy"]["b_minus_a"] == pytest.approx(1.0 - c["accuracy"]["a"]) and c["accuracy"]["ci"][0] > 0
    assert json.load(open(rep["files"]["json"]))["comparison"] == c
    assert "against " + old + " (paired over 4 recordings" in capsys.readouterr().out
