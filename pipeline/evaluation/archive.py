"""Score a labelled archive (``<labels>/segments/part-*.parquet``) against per-turn ground truth.

The truth (CSV, Parquet or a DataFrame) has one row per spoken turn: recording_id, channel, start_s, end_s, label
and optionally channel_name. Channel matching: truth ``channel_name`` -> the prediction's ``channel`` (name); else
an integer-like truth ``channel`` -> ``channel_index``; else the string ``channel`` -> ``channel``. A recording
labelled only on the mix (channel_index -1) is scored against all its truth turns pooled into one channel.

Semantics, and why:

* **Per predicted segment**, because that is what a user of the archive sees: a segment's true label is the truth
  label with the largest total overlap on its recording and channel (ties: first in label order). A segment
  overlapping truth speech for less than ``min_overlap`` of its own duration (or not at all) is a **false alarm**
  (speech found where the truth has none): counted, left out of the classification metrics, which would otherwise
  reward a label for silence. Segments of recordings absent from the truth are ``n_unmatched_recordings``, failed
  recordings (error rows) ``n_error_recordings``; neither is scored. Truth recordings with no output row at all (not
  labelled yet) are ``n_truth_recordings_missing`` and do not lower the coverage.
* ``segment``: :func:`emoq_model.metrics.classification_report` over the scored segments. Labels: ``label_names``,
  else the model's (the first row's probability keys), else the sorted union; truth labels the model lacks are
  appended (they count as misses).
* ``time_weighted``: on a 10 ms grid per recording+channel, truth label vs predicted label per frame (the label most
  turns / segments covering the frame carry). UA = mean over truth classes of correct time / that class's truth
  time covered by predictions: long turns weigh more, many short segments less, unlike the segment UA.
* ``coverage`` (overall and per class): truth speech time covered by any predicted segment / truth speech time;
  what segmentation missed, which the segment metrics cannot see.
* ``calibration``: expected calibration error of the scored segments' output probabilities against their truth
  labels (10 bins), with mean confidence and accuracy: calibration on calls whose speakers the temperature never saw.
* ``majority``: always predicting the scored segments' most frequent true label (accuracy, UA = 1/classes present,
  macro-F1): emotional speech is rare in calls, so accuracy alone flatters a model that says ``neutral``.
* ``ci``: 95 % percentile intervals of segment UA, accuracy, macro-F1 and ECE from resampling whole recordings
  (:mod:`pipeline.evaluation.bootstrap`): a call's segments share a speaker and a script, so the recording is the
  independent unit; with a dozen calls the interval is wide, and a difference inside it is not a finding.
* ``by_channel``: segment metrics per truth channel role (agent / customer / ...): roles differ in emotion mix.
* Calm channels (all truth turns ``calm_label``): ``calm_channel_neutral_share`` = share of their scored segments
  predicted ``calm_label`` (how often a calm speaker is labelled emotional); ``channel_dominant_accuracy``: truth
  dominant label (by time) vs predicted dominant label (by predicted time) per recording+channel with both.

Everything is vectorised per recording+channel (sorted intervals, ``searchsorted``, difference arrays), so the cost
is linear in the archive size. The report is JSON-serialisable (undefined values are ``None``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from emoq_model.io import resolve, write_json, write_parquet
from emoq_model.metrics import classification_report, plot_confusion, safe_name
from pipeline.evaluation.bootstrap import format_intervals

STEP = 0.01  # grid of the time-weighted metrics (s)


def read_segments(labels: str) -> pa.Table:
    """All part files of a labels directory (names starting with ``.`` are temporary or set aside)."""
    from pipeline.labeling.sink import part_files, segments_dir

    fs, root = resolve(segments_dir(labels))
    files = [i.path for i in part_files(fs, root)]
    if not files:
        raise FileNotFoundError(f"no part-*.parquet under {root}")
    return ds.dataset(files, format="parquet", filesystem=fs).to_table()


def read_truth(truth: str | pd.DataFrame) -> pd.DataFrame:
    """The ground-truth turns, validated (CSV or Parquet by extension)."""
    if isinstance(truth, pd.DataFrame):
        df = truth.copy()
    else:
        df = (
            pd.read_parquet(truth)
            if str(truth).endswith((".parquet", ".pq"))
            # ids stay text ("007")
            else pd.read_csv(truth, dtype={"recording_id": str, "channel_name": str, "label": str})
        )
    missing = {"recording_id", "channel", "start_s", "end_s", "label"} - set(df.columns)
    if missing:
        raise ValueError(f"truth lacks columns {sorted(missing)}")
    if df["label"].isna().any():
        raise ValueError(f"truth has {int(df['label'].isna().sum())} turns without a label")
    return df


def _int_like(s: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(s):
        return False
    v = pd.to_numeric(s, errors="coerce")
    return bool(v.notna().all() and (v == np.round(v)).all())


def _label_order(
    seg: pd.DataFrame, probs: pa.ChunkedArray | None, truth_labels: Sequence[str], label_names: list[str] | None
) -> list[str]:
    if label_names:
        labels = [str(x) for x in label_names]
    else:
        first = pc.drop_null(probs).slice(0, 1).to_pylist() if probs is not None else []
        labels = (
            [k for k, _ in first[0]] if first else sorted(set(truth_labels) | set(seg["label"].dropna().astype(str)))
        )
    return labels + sorted(set(truth_labels) - set(labels))


def _overlap_by_label(
    ps: np.ndarray, pe: np.ndarray, ts: np.ndarray, te: np.ndarray, tl: np.ndarray, k: int
) -> np.ndarray:
    """(n_pred, k) seconds of overlap of each predicted segment with truth turns of each label.

    Truth sorted by start; only the candidate turns [lo, hi) of each segment are paired (the running maximum of
    the ends keeps this right when turns overlap), so the cost is ~ n_pred + n_truth, not their product."""
    lo = np.searchsorted(np.maximum.accumulate(te), ps, "right")
    hi = np.searchsorted(ts, pe, "left")
    cnt = np.maximum(hi - lo, 0)
    ip = np.repeat(np.arange(len(ps)), cnt)
    it = np.arange(int(cnt.sum())) + np.repeat(lo - (np.cumsum(cnt) - cnt), cnt)
    ov = np.clip(np.minimum(pe[ip], te[it]) - np.maximum(ps[ip], ts[it]), 0.0, None)
    out = np.zeros((len(ps), k))
    np.add.at(out, (ip, tl[it]), ov)
    return out


def _frame_labels(s: np.ndarray, e: np.ndarray, lab: np.ndarray, k: int, n: int) -> np.ndarray:
    """Label per 10 ms frame (-1 = uncovered): the label most intervals covering the frame carry (ties: lowest)."""
    a = np.clip(np.rint(s / STEP).astype(np.int64), 0, n)
    b = np.clip(np.rint(e / STEP).astype(np.int64), 0, n)
    m = n + 1  # difference arrays, one row per label: +1 where an interval starts, -1 where it ends
    c = np.bincount(lab * m + a, minlength=k * m) - np.bincount(lab * m + b, minlength=k * m)
    c = np.cumsum(c.reshape(k, m)[:, :n], axis=1)
    out, best = np.full(n, -1, np.int64), np.zeros(n, c.dtype)
    for j in range(k):  # row by row: much faster than argmax over the short axis
        better = c[j] > best
        out[better], best[better] = j, c[j][better]
    return out


def _probabilities(probs, labs: list[str], scored: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The scored segments' probabilities in ``labs`` order and which segments carry them (None: none do)."""
    if probs is None or not scored.any():
        return None
    has = scored & probs.is_valid().to_numpy(zero_copy_only=False)
    if not has.any():
        return None
    p = np.array([[dict(r).get(c, 0.0) for c in labs] for r, keep in zip(probs.to_pylist(), has) if keep], np.float64)
    return p, has


def _calibration(got: tuple[np.ndarray, np.ndarray] | None, true_idx: np.ndarray) -> dict | None:
    """Held-out calibration of the output: ECE (10 equal-width bins) of the scored segments' probabilities
    (``got``, from :func:`_probabilities`) against their truth, with mean confidence and accuracy beside it (None
    when no scored segment has probabilities)."""
    if got is None:
        return None
    from emoq_model.calibration import expected_calibration_error

    p, has = got
    y = true_idx[has]
    return {
        "ece": expected_calibration_error(p, y),
        "mean_confidence": float(p.max(1).mean()),
        "accuracy": float((p.argmax(1) == y).mean()),
    }


def _intervals(seg, scored, true_idx, pred_lab, got, k: int, n_resamples: int) -> dict | None:
    """Recording-bootstrap intervals of the segment scores (:mod:`pipeline.evaluation.bootstrap`); ``got`` from
    :func:`_probabilities`."""
    from pipeline.evaluation.bootstrap import recording_bootstrap

    return recording_bootstrap(
        seg["recording_id"].to_numpy(object)[scored],
        true_idx[scored],
        pred_lab[scored],
        k,
        probs=None if got is None else got[0],
        prob_mask=None if got is None else got[1][scored],
        n_resamples=n_resamples,
    )


def _ratio(a: float, b: float) -> float | None:
    return float(a) / float(b) if b > 0 else None


def _majority(y_true: list[str], labels: list[str]) -> dict:
    """Always-majority reference on ``y_true`` (ties: first in label order), in closed form with the conventions of
    ``classification_report``: recall 1 for the majority class, 0 for the others; precision = its share p."""
    counts = pd.Series(y_true).value_counts()
    maj = next(lab for lab in labels if counts.get(lab, 0) == counts.max())
    p = float(counts[maj]) / len(y_true)
    return {"label": maj, "accuracy": p, "ua": 1.0 / len(counts), "macro_f1": 2 * p / (1 + p) / len(counts)}


def evaluate_archive(
    labels: str,
    truth: str | pd.DataFrame,
    out_dir: str | None = None,
    label_names: list[str] | None = None,
    name: str = "archive",
    min_overlap: float = 0.5,
    calm_label: str = "neutral",
    timelines: int = 3,
    ci_resamples: int = 2000,
) -> dict:
    """Score the labels directory ``labels`` against ``truth`` (see the module docstring), with 95 % intervals of
    the segment scores from ``ci_resamples`` resamples of the recordings (``ci``; 0: none); with ``out_dir``, write
    ``<name>.json``, ``<name>_confusion.png`` and ``<name>_segments.parquet`` (every predicted segment with
    ``true_label``, ``overlap_s``, ``false_alarm``, ``scored``, ``role``), timeline pictures with truth lanes of
    the first ``timelines`` evaluated recordings (``timelines/<id>.png``) and add their paths as ``files``."""
    if not 0.0 <= min_overlap <= 1.0:
        raise ValueError(f"min_overlap must be in [0, 1], got {min_overlap}")
    if timelines < 0:
        raise ValueError(f"timelines must be >= 0, got {timelines}")
    table = read_segments(labels)
    rid_all = table.column("recording_id").to_pandas().astype(str)
    err = table.column("error").is_valid().to_numpy(zero_copy_only=False)
    seg_table = table.filter(pa.array(~err))
    seg = seg_table.select(["recording_id", "channel", "channel_index", "start_s", "end_s", "label"]).to_pandas()
    seg["recording_id"] = seg["recording_id"].astype(str)
    truth_df = read_truth(truth)
    truth_df["recording_id"] = truth_df["recording_id"].astype(str)
    truth_df["label"] = truth_df["label"].astype(str)
    truth_in = truth_df  # every turn, for the timelines (below, truth_df is narrowed to the evaluated recordings)

    # channel keys: one string per (recording, channel) on both sides
    if "channel_name" in truth_df.columns:
        truth_df["_key"] = truth_df["channel_name"].astype(str)
        seg["_key"] = seg["channel"].astype(str)
    elif _int_like(truth_df["channel"]):
        truth_df["_key"] = pd.to_numeric(truth_df["channel"]).astype(np.int64).astype(str)
        seg["_key"] = seg["channel_index"].astype(np.int64).astype(str)
    else:
        truth_df["_key"] = truth_df["channel"].astype(str)
        seg["_key"] = seg["channel"].astype(str)
    truth_df["_role"] = truth_df["channel_name"].astype(str) if "channel_name" in truth_df.columns else truth_df["_key"]
    is_mix = (seg["channel_index"] == -1).to_numpy()
    mix_only = set(seg["recording_id"][is_mix]) - set(seg["recording_id"][~is_mix])
    mix_key = seg[is_mix].drop_duplicates("recording_id").set_index("recording_id")["_key"]
    pooled = truth_df["recording_id"].isin(mix_only)
    truth_df.loc[pooled, "_key"] = truth_df.loc[pooled, "recording_id"].map(mix_key)
    truth_df.loc[pooled, "_role"] = "mix"

    probs = seg_table.column("probabilities") if "probabilities" in seg_table.column_names else None
    labs = _label_order(seg, probs, sorted(truth_df["label"].unique()), label_names)
    k = len(labs)
    lab_idx = {lab: i for i, lab in enumerate(labs)}

    truth_rids, seg_rids = set(truth_df["recording_id"]), set(seg["recording_id"])
    error_rids = set(rid_all[err])
    evaluated = seg_rids & truth_rids
    truth_df = truth_df[truth_df["recording_id"].isin(evaluated)].sort_values(["recording_id", "_key", "start_s"])
    pred_lab = seg["label"].map(lab_idx).fillna(k).to_numpy(np.int64)  # k = outside the labels (None, unknown)
    ps_all, pe_all = seg["start_s"].to_numpy(float), seg["end_s"].to_numpy(float)
    tl_all = truth_df["label"].map(lab_idx).to_numpy(np.int64)
    ts_all, te_all = truth_df["start_s"].to_numpy(float), truth_df["end_s"].to_numpy(float)
    role_all = truth_df["_role"].to_numpy(object)
    calm_idx = lab_idx.get(calm_label, -1)

    n = len(seg)
    true_idx = np.full(n, -1, np.int64)
    overlap = np.zeros(n)
    false_alarm = np.zeros(n, bool)
    role = np.full(n, None, object)
    t_time, c_time, ok_time = np.zeros(k), np.zeros(k), np.zeros(k)  # frames: truth, covered truth, correct
    calm_units, calm_segs, dom = 0, [], []
    p_groups = {
        u: i for u, i in seg.groupby(["recording_id", "_key"], sort=False).indices.items() if u[0] in evaluated
    }  # positions into seg
    t_groups = truth_df.groupby(["recording_id", "_key"], sort=False).indices
    for unit in set(p_groups) | set(t_groups):
        pi, ti = p_groups.get(unit, np.zeros(0, np.int64)), t_groups.get(unit, np.zeros(0, np.int64))
        ps, pe, pl = ps_all[pi], pe_all[pi], pred_lab[pi]
        ts, te, tl = ts_all[ti], te_all[ti], tl_all[ti]
        if len(ti):
            r = role_all[ti[0]]
            ov = _overlap_by_label(ps, pe, ts, te, tl, k)
            tot = np.minimum(ov.sum(1), pe - ps)
            overlap[pi], true_idx[pi], role[pi] = tot, np.where(tot > 0, ov.argmax(1), -1), r
            fa = (tot <= 0) | (tot < min_overlap * (pe - ps))
            false_alarm[pi] = fa
            nf = int(np.ceil(max(te.max(), pe.max() if len(pe) else 0.0) / STEP)) + 1
            ft = _frame_labels(ts, te, tl, k, nf)
            fp = _frame_labels(ps, pe, pl, k + 1, nf)
            speech = ft >= 0
            t_time += np.bincount(ft[speech], minlength=k)
            cov = speech & (fp >= 0)
            c_time += np.bincount(ft[cov], minlength=k)
            ok_time += np.bincount(ft[cov & (fp == ft)], minlength=k)
            if (tl == calm_idx).all():
                calm_units += 1
                calm_segs.append(pi[~fa])
            inside = pl < k
            if inside.any():
                true_dom = np.bincount(tl, weights=te - ts, minlength=k).argmax()
                pred_dom = np.bincount(pl[inside], weights=(pe - ps)[inside], minlength=k).argmax()
                dom.append(true_dom == pred_dom)
        else:  # a channel without truth speech: all its segments are false alarms
            false_alarm[pi] = True

    in_eval = seg["recording_id"].isin(evaluated).to_numpy()
    scored = in_eval & ~false_alarm
    if not scored.any():
        raise ValueError(
            f"no predicted segment overlaps the truth ({n} segments, {len(evaluated)} recordings in "
            f"both; check recording ids and channel matching)"
        )
    y_true = [labs[i] for i in true_idx[scored]]
    y_pred = seg["label"].to_numpy(object)[scored].tolist()
    roles = role[scored]
    by_channel = {}
    for r in sorted(set(roles)):
        m = roles == r
        yt, yp = [y for y, keep in zip(y_true, m) if keep], [y for y, keep in zip(y_pred, m) if keep]
        rep = classification_report(yt, yp, labs)
        by_channel[r] = {
            "n": rep["n"],
            "accuracy": rep["accuracy"],
            "ua": rep["ua"],
            "macro_f1": rep["macro_f1"],
            "per_class_recall": {c: v["recall"] for c, v in rep["per_class"].items()},
            "majority_accuracy": _majority(yt, labs)["accuracy"],
        }
    calm = np.concatenate(calm_segs) if calm_segs else np.zeros(0, np.int64)
    scored_probs = _probabilities(probs, labs, scored)  # read once for the calibration and the intervals
    report = {
        "labels": labs,
        "n_pred_segments": int(n),
        "n_scored": int(scored.sum()),
        "n_false_alarms": int((in_eval & false_alarm).sum()),
        "n_error_recordings": len(error_rids),
        "n_unmatched_recordings": len(seg_rids - truth_rids),
        "n_truth_recordings": len(truth_rids),
        "n_truth_recordings_missing": len(truth_rids - seg_rids - error_rids),
        "min_overlap": float(min_overlap),
        "coverage": _ratio(c_time.sum(), t_time.sum()),
        "coverage_per_class": {c: _ratio(c_time[i], t_time[i]) for i, c in enumerate(labs)},
        "segment": classification_report(y_true, y_pred, labs),
        "time_weighted": {
            "ua": float(np.mean([ok_time[i] / c_time[i] for i in range(k) if c_time[i] > 0])) if c_time.any() else None,
            "accuracy": _ratio(ok_time.sum(), c_time.sum()),
            "per_class_recall": {c: _ratio(ok_time[i], c_time[i]) for i, c in enumerate(labs)},
        },
        "majority": _majority(y_true, labs),
        "by_channel": by_channel,
        "calm_label": calm_label,
        "n_calm_channels": calm_units,
        "calm_channel_neutral_share": _ratio((pred_lab[calm] == calm_idx).sum(), len(calm)),
        "n_dominant_channels": len(dom),
        "channel_dominant_accuracy": _ratio(sum(dom), len(dom)),
        "calibration": _calibration(scored_probs, true_idx),
        "ci": _intervals(seg, scored, true_idx, pred_lab, scored_probs, k, ci_resamples),
    }
    if out_dir is not None:
        ids = sorted(evaluated)[:timelines]
        report["files"] = _write(
            report,
            seg_table,
            labs,
            true_idx,
            overlap,
            false_alarm,
            scored,
            in_eval,
            role,
            out_dir,
            name,
            timelines=(labels, truth_in[truth_in["recording_id"].isin(ids)], ids),
        )
    return report


def _write(
    report: dict,
    seg_table: pa.Table,
    labs: list[str],
    true_idx: np.ndarray,
    overlap: np.ndarray,
    false_alarm: np.ndarray,
    scored: np.ndarray,
    in_eval: np.ndarray,
    role: np.ndarray,
    out_dir: str,
    name: str,
    timelines: tuple[str, pd.DataFrame, list[str]],
) -> dict:
    """The report JSON (written last, atomically), the confusion PNG, the per-segment Parquet and the timelines
    (``timelines``: labels directory, truth, recording ids)."""
    from pipeline.evaluation.timeline import write_timelines

    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(os.path.abspath(out_dir), safe_name(name))
    files = {"json": f"{base}.json", "png": f"{base}_confusion.png", "segments": f"{base}_segments.parquet"}
    plot_confusion(report["segment"], files["png"], title=f"{name} (per segment)")
    tl = [labs[i] if i >= 0 else None for i in true_idx]
    out = (
        seg_table.append_column("true_label", pa.array(tl, pa.string()))
        .append_column("overlap_s", pa.array(overlap))
        .append_column("false_alarm", pa.array(false_alarm, mask=~in_eval))
        .append_column("scored", pa.array(scored))
        .append_column("role", pa.array(role.tolist(), pa.string()))
    )
    write_parquet(out, files["segments"])
    labels_dir, truth, ids = timelines
    files["timelines"] = write_timelines(
        labels_dir,
        len(ids),
        truth=truth,
        recording_ids=ids,
        out_dir=os.path.join(os.path.abspath(out_dir), "timelines"),
    )
    write_json(files["json"], {**report, "files": files})
    return files


def compare_to_baseline(segments: str, baseline_segments: str, n_resamples: int = 2000) -> dict | None:
    """``segments`` minus ``baseline_segments`` (two ``<name>_segments.parquet`` of :func:`evaluate_archive`, one
    archive and truth): segment UA, accuracy and macro-F1 of each, their difference and its interval from
    resampling the recordings once for both (:func:`pipeline.evaluation.bootstrap.paired_difference`)."""
    from pipeline.evaluation.bootstrap import paired_difference

    frames = [
        pd.read_parquet(p, columns=["recording_id", "label", "true_label", "scored"])
        for p in (baseline_segments, segments)
    ]
    frames = [f[f["scored"].fillna(False).astype(bool)] for f in frames]
    labs = sorted({lab for f in frames for col in ("true_label", "label") for lab in f[col].dropna()})
    k = len(labs)
    idx = {lab: i for i, lab in enumerate(labs)}
    sides = [
        (
            f["recording_id"].astype(str).to_numpy(),
            f["true_label"].map(idx).to_numpy(np.int64),
            f["label"].map(idx).fillna(k).to_numpy(np.int64),
        )
        for f in frames
    ]
    return paired_difference(sides[0], sides[1], k, n_resamples=n_resamples)


def format_comparison(cmp: dict | None, baseline: str) -> str:
    """One line per score: this labeling against the baseline, with the paired interval of the difference."""
    if not cmp:
        return f"against {baseline}: fewer than 2 recordings scored in both, no comparison"
    lines = [f"against {baseline} (paired over {cmp['n_recordings']} recordings, {cmp['level']:.0%} intervals):"]
    for key, name in (("ua", "segment UA"), ("accuracy", "accuracy"), ("macro_f1", "macro-F1")):
        c = cmp[key]
        lines.append(
            f"  {name}: {c['a']:.3f} -> {c['b']:.3f}, difference {c['b_minus_a']:+.3f} "
            f"[{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}], higher in {c['p_b_better']:.0%} of resamples"
        )
    return "\n".join(lines)


def format_archive_report(report: dict) -> str:
    """A short table: headline, per-class recall, one line per channel role, calm channels, counts."""
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    s, m = report["segment"], report["majority"]
    ci = report.get("ci")
    lines = [
        f"segment UA {f(s['ua'])}, accuracy {f(s['accuracy'])}, macro-F1 {f(s['macro_f1'])} "
        f"(always-majority '{m['label']}': accuracy {f(m['accuracy'])}, UA {f(m['ua'])}) | time-weighted UA "
        f"{f(report['time_weighted']['ua'])} | coverage {f(report['coverage'])} | "
        f"false alarms {report['n_false_alarms']}",
        "recall: " + "  ".join(f"{c} {f(v['recall'])}" for c, v in s["per_class"].items()),
    ]
    if ci:
        lines.append(format_intervals(ci))
    w = max([len(r) for r in report["by_channel"]] + [4])
    for r, c in report["by_channel"].items():
        lines.append(
            f"  {r:<{w}}  n={c['n']}  UA {f(c['ua'])}  acc {f(c['accuracy'])}  mF1 {f(c['macro_f1'])}  "
            f"majority acc {f(c['majority_accuracy'])}  recall "
            + " ".join(f"{k} {f(v)}" for k, v in c["per_class_recall"].items())
        )
    lines.append(
        f"calm channels (all '{report['calm_label']}'): {report['n_calm_channels']}, share of their "
        f"segments labelled '{report['calm_label']}' {f(report['calm_channel_neutral_share'])} | "
        f"channel dominant-label accuracy {f(report['channel_dominant_accuracy'])} "
        f"({report['n_dominant_channels']} channels)"
    )
    cal = report.get("calibration")
    if cal:
        lines.append(
            f"calibration on these unseen calls: ECE {f(cal['ece'])} (mean confidence {f(cal['mean_confidence'])}, "
            f"accuracy {f(cal['accuracy'])})"
        )
    lines.append(
        f"segments {report['n_pred_segments']}, scored {report['n_scored']} | recordings: "
        f"{report['n_error_recordings']} failed, {report['n_unmatched_recordings']} not in the truth, "
        f"{report['n_truth_recordings_missing']} of {report['n_truth_recordings']} truth recordings "
        f"not labelled"
    )
    return "\n".join(lines)
