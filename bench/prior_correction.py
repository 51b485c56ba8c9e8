"""A class-prior correction of the served label, measured the honest way: fitted on a bundle's validation calls,
scored on a labelled archive it never saw.

    python bench/prior_correction.py runs/demo/bundle runs/demo/features runs/demo/labels EVAL_CALLS/segments.csv

Why it might help: the archive's main error is angry turns called happy (angry recall 0.07-0.14 against 0.39-0.56
on validation), and UA weighs each class equally. A decision rule that maximises balanced accuracy divides each
class's posterior by its prior; a per-class log offset ``b`` does that for whatever prior the model learnt.

1. the bundle's LLM-answer probabilities on the cache's ``val`` turns (``jobs/evaluate.py``'s path, honest
   normalisation), undone to raw log-probabilities with the bundle's temperature;
2. ``b`` and a temperature fitted jointly by minimising the *class-balanced* NLL of those turns (each class weighs
   the same), then the confidence temperature refitted on the plain NLL with ``b`` applied;
3. label = argmax(raw log-probabilities + ``b``) on the archive labels' stored probabilities, scored by
   ``evaluate_archive`` (``bench/context_fit.py``'s ``rescored``), beside the unchanged labels.
Writes ``bench/results/prior_correction.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from context_fit import rescored, validation_predictions  # noqa: E402
from scipy.special import log_softmax  # noqa: E402


def fit_offsets(logp: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-class log offsets (the first class's fixed at 0) minimising the class-balanced NLL of ``y`` under
    ``softmax(logp / T + c)``, ``T`` fitted with them; returned in ``logp``'s units (``c * T``)."""
    from scipy.optimize import minimize

    k = logp.shape[1]
    w = 1.0 / np.bincount(y, minlength=k).clip(min=1)[y]
    w /= w.sum()

    def loss(x: np.ndarray) -> float:
        lp = log_softmax(logp / np.exp(x[-1]) + np.r_[0.0, x[:-1]], axis=1)
        return float(-(w * lp[np.arange(len(y)), y]).sum())

    x = minimize(loss, np.zeros(k), method="L-BFGS-B").x
    return np.r_[0.0, x[:-1]] * np.exp(x[-1])


def recall(pred: np.ndarray, y: np.ndarray, k: int) -> list[float]:
    return [float((pred[y == c] == c).mean()) if (y == c).any() else float("nan") for c in range(k)]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("features", help="the bundle's feature cache (its val split: validation calls)")
    ap.add_argument("labels", help="labeling output of an archive by this bundle")
    ap.add_argument("truth", help="the archive's per-turn truth (segments.csv)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "prior_correction.json"))
    a = ap.parse_args(argv)
    from emoq_model.calibration import (
        apply_temperature,
        expected_calibration_error,
        fit_temperature,
        load_temperature,
    )

    t_bundle = load_temperature(a.bundle)
    _, names, probs, y = validation_predictions(a.bundle, a.features)
    raw = np.log(probs.astype(np.float64).clip(1e-30)) * t_bundle  # raw log-probabilities, up to a row constant
    k = len(names)
    b = fit_offsets(raw, y)
    corrected = np.exp(log_softmax(raw + b, axis=1))
    t_conf = fit_temperature(corrected, y)

    def ua(p: np.ndarray) -> float:
        return float(np.nanmean(recall(p, y, k)))

    val = {
        "n": int(len(y)),
        "offsets": dict(zip(names, b.round(4).tolist())),
        "confidence_temperature": t_conf,
        "ua_before": ua(raw.argmax(1)),
        "ua_after": ua((raw + b).argmax(1)),
        "recall_before": dict(zip(names, recall(raw.argmax(1), y, k))),
        "recall_after": dict(zip(names, recall((raw + b).argmax(1), y, k))),
        "ece_before": expected_calibration_error(apply_temperature(np.exp(log_softmax(raw, axis=1)), t_bundle), y),
        "ece_after": expected_calibration_error(apply_temperature(corrected, t_conf), y),
    }
    print(
        f"fitted on {len(y)} validation turns: offsets {val['offsets']}; val UA {val['ua_before']:.4f} -> "
        f"{val['ua_after']:.4f}, ECE {val['ece_before']:.3f} -> {val['ece_after']:.3f}"
    )

    def corrected_probs(probs, groups, start, end):  # the stored, calibrated probabilities -> corrected ones
        z = np.log(np.asarray(probs, np.float64).clip(1e-30)) * t_bundle + b
        return apply_temperature(np.exp(log_softmax(z, axis=1)), t_conf)

    out = {"bundle": a.bundle, "labels": a.labels, "validation": val}
    with tempfile.TemporaryDirectory() as tmp:
        for key, fn in (("archive_before", lambda p, *_: np.asarray(p)), ("archive_after", corrected_probs)):
            r = rescored(a.labels, a.truth, fn, Path(tmp) / key)
            seg = r["segment"]
            out[key] = {
                **{m: seg[m] for m in ("ua", "wa", "macro_f1")},
                "recall": {c: seg["per_class"][c]["recall"] for c in names if c in seg["per_class"]},
                "ece": (r.get("calibration") or {}).get("ece"),
                "calm_channel_neutral_share": r.get("calm_channel_neutral_share"),
            }
    print(
        f"archive segment UA {out['archive_before']['ua']:.3f} -> {out['archive_after']['ua']:.3f}, macro-F1 "
        f"{out['archive_before']['macro_f1']:.3f} -> {out['archive_after']['macro_f1']:.3f}, ECE "
        f"{out['archive_before']['ece']:.3f} -> {out['archive_after']['ece']:.3f}"
    )
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1, default=float))
    return out


if __name__ == "__main__":
    main()
