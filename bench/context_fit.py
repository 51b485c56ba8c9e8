"""Conversation context (``emoq_model.context``) measured the honest way: fitted on a bundle's validation calls,
scored on a labelled archive it never saw.

    python bench/context_fit.py runs/demo/bundle runs/demo/features runs/demo/labels EVAL_CALLS/segments.csv

1. the bundle's LLM-answer probabilities on the cache's ``val`` turns (``jobs/evaluate.py``'s path, honest
   normalisation) -> :func:`emoq_model.context.fit_context` picks ``(weight, tau_s)`` on validation UA;
2. that context applied to the archive labels' stored probabilities, per recording and channel, exactly as the
   label stage applies it (context and temperature commute for the argmax), scored by ``evaluate_archive``;
3. also every grid point on the archive, printed as *exploratory* (choosing there would be choosing on test data).
Writes ``bench/results/context_fit.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rescored(labels: str, truth: str, transform, tmp: Path) -> dict:
    """``evaluate_archive`` of ``labels`` after ``transform(probs, groups, start_s, end_s) -> probs`` (each scored
    segment's stored probabilities, its recording-and-channel group and span): labels and probabilities rewritten
    (``bench/prior_correction.py`` reuses it)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.evaluation.archive import evaluate_archive, read_segments

    table = read_segments(labels)
    df = table.to_pandas()
    ok = df["error"].isna().to_numpy()
    names = [k for k, _ in df.loc[ok, "probabilities"].iloc[0]]
    probs = np.array([[dict(v)[k] for k in names] for v in df.loc[ok, "probabilities"]])
    sub = df.loc[ok]
    groups = (sub["recording_id"].astype(str) + "\0" + sub["channel"].astype(str)).tolist()
    out = transform(probs, groups, sub["start_s"].to_numpy(), sub["end_s"].to_numpy())
    df.loc[ok, "label"] = np.asarray(names, dtype=object)[out.argmax(1)]
    row_of = np.cumsum(ok) - 1  # row of ``out`` for each scored segment
    df["probabilities"] = [
        list(zip(names, map(float, out[row_of[i]]))) if ok[i] else v for i, v in enumerate(df["probabilities"])
    ]
    seg_dir = tmp / "segments"
    seg_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(df, schema=table.schema, preserve_index=False), seg_dir / "part-0.parquet")
    return evaluate_archive(str(tmp), truth, timelines=0)


def validation_predictions(bundle: str, features: str):
    """The bundle's served (LLM-answer, calibrated) probabilities on the cache's ``val`` turns, honest
    normalisation (``jobs/evaluate.py``'s path): ``(predictions frame, label names, probs [N, K], y [N])``."""
    import pandas as pd

    from pipeline.evaluation.clips import evaluate

    with tempfile.TemporaryDirectory() as tmp:
        pred = pd.read_parquet(evaluate(bundle, tmp, features=features, split="val")["files"]["predictions"])
    names = [c[2:] for c in pred.columns if c.startswith("p_")]
    return pred, names, pred[[f"p_{n}" for n in names]].to_numpy(), pred["label"].map(names.index).to_numpy()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("features", help="the bundle's feature cache (its val split: validation calls)")
    ap.add_argument("labels", help="labeling output of an archive (labelled without context)")
    ap.add_argument("truth", help="the archive's per-turn truth (segments.csv)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "context_fit.json"))
    a = ap.parse_args(argv)
    from emoq_model import features as F
    from emoq_model.calibration import load_context
    from emoq_model.context import TAUS_S, WEIGHTS, ChannelContext, fit_context

    if load_context(a.bundle).active:
        raise SystemExit(f"{a.bundle} already applies a context: its labels and validation are not context-free")
    pred, names, probs, y = validation_predictions(a.bundle, a.features)
    times = F.FeatureCache(a.features).index(["utt_id", "start_s", "end_s"])
    pred = pred.merge(times, on="utt_id", how="left")  # same row order: a left merge keeps the left keys' order
    chosen, grid = fit_context(probs, y, pred["speaker"].tolist(), pred["start_s"], pred["end_s"])
    print(f"fitted on {len(y)} validation turns: weight {chosen.weight:g}, tau {chosen.tau_s:g} s")
    out = {"bundle": a.bundle, "labels": a.labels, "validation_grid": grid, "chosen": chosen.to_dict()}
    with tempfile.TemporaryDirectory() as tmp:
        base = rescored(a.labels, a.truth, ChannelContext().apply, Path(tmp) / "base")
        fitted = rescored(a.labels, a.truth, chosen.apply, Path(tmp) / "fitted")
        out["archive_without"] = {k: base["segment"][k] for k in ("ua", "wa", "macro_f1")}
        out["archive_with_fitted"] = {k: fitted["segment"][k] for k in ("ua", "wa", "macro_f1")}
        explore = []
        for w in (x for x in WEIGHTS if x > 0):
            for tau in TAUS_S:
                r = rescored(a.labels, a.truth, ChannelContext(w, tau).apply, Path(tmp) / f"g{w}_{tau}")
                explore.append({"weight": w, "tau_s": tau, "ua": r["segment"]["ua"]})
        out["archive_grid_exploratory"] = explore
    print(
        f"archive segment UA without context {out['archive_without']['ua']:.3f}, with the fitted context "
        f"{out['archive_with_fitted']['ua']:.3f}; best grid point on the archive (exploratory, not a choice) "
        f"{max(e['ua'] for e in explore):.3f}"
    )
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1, default=float))
    return out


if __name__ == "__main__":
    main()
