"""Emotion-recognition metrics (as reported for IEMOCAP and MELD): WA, UA, weighted/macro F1, per-class scores,
confusion matrix.

Conventions
-----------
* ``labels`` fixes the class order of every per-class list and of the confusion matrix
  (rows = true class, columns = predicted class).
* ``y_true``/``y_pred`` hold label strings or integer indices into ``labels`` (mixing is allowed).
  A true value outside ``labels`` is an error. A prediction outside ``labels`` (unparseable LLM output,
  ``None``, an out-of-range index) counts as wrong for every metric, is counted in
  ``n_pred_outside_labels`` and, since it belongs to no column, is absent from the confusion matrix
  (the matrix rows then sum to less than the class support).
* WA = accuracy over all utterances. UA = mean per-class recall over the classes **present in y_true**
  (a class with no test utterance has no recall). Macro F1 = mean F1 over the classes present in y_true
  or predicted (a class that is only ever predicted wrongly scores F1 0). Weighted F1 = F1 weighted by
  true support (sklearn ``average="weighted"``).
* Undefined per-class values are ``None``: recall when support is 0, precision when never predicted,
  F1 when both.

The report is a plain JSON-serialisable dict; :func:`save_report` writes it plus a confusion-matrix PNG.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence

import numpy as np

from emoq_model.io import write_json

OUTSIDE = "<outside-labels>"


def _normalise(values, labels: list[str], what: str) -> list[str]:
    out = []
    for v in values:
        if isinstance(v, (bool, np.bool_)):
            out.append(OUTSIDE if what == "y_pred" else str(v))
        elif isinstance(v, (int, np.integer)):
            i = int(v)
            out.append(labels[i] if 0 <= i < len(labels) else f"{OUTSIDE}:{i}")
        elif v is None or (isinstance(v, float) and math.isnan(v)):
            out.append(OUTSIDE)
        else:
            out.append(str(v))
    return out


def _f(x) -> float:
    return float(x)


def classification_report(
    y_true: Sequence[str | int], y_pred: Sequence[str | int | None], labels: Sequence[str]
) -> dict:
    """WA, UA, weighted/macro F1, per-class recall/precision/F1/support and the confusion matrix.

    Returns a JSON-serialisable dict with keys ``labels``, ``n``, ``wa``, ``accuracy`` (= wa),
    ``ua``, ``weighted_f1``, ``macro_f1``, ``per_class`` ({label: {recall, precision, f1, support,
    predicted}}), ``confusion_matrix`` (list of rows, true × predicted, in ``labels`` order),
    ``n_pred_outside_labels`` and ``classes_in_ua``.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    labels = [str(lab) for lab in labels]
    if len(set(labels)) != len(labels) or not labels:
        raise ValueError(f"labels must be non-empty and unique, got {labels}")
    yt = _normalise(list(y_true), labels, "y_true")
    yp = _normalise(list(y_pred), labels, "y_pred")
    if len(yt) != len(yp):
        raise ValueError(f"y_true has {len(yt)} items, y_pred {len(yp)}")
    if not yt:
        raise ValueError("empty y_true: nothing to evaluate")
    label_set = set(labels)
    unknown = sorted(set(yt) - label_set)
    if unknown:
        raise ValueError(f"y_true holds values outside labels {labels}: {unknown[:10]}")

    cm = confusion_matrix(yt, yp, labels=labels)
    prec, rec, f1, support = precision_recall_fscore_support(yt, yp, labels=labels, zero_division=0)
    predicted = cm.sum(axis=0)  # predictions per class (inside labels)

    per_class: dict[str, dict] = {}
    for i, lab in enumerate(labels):
        s, p = int(support[i]), int(predicted[i])
        per_class[lab] = {
            "recall": _f(rec[i]) if s > 0 else None,
            "precision": _f(prec[i]) if p > 0 else None,
            "f1": _f(f1[i]) if (s > 0 or p > 0) else None,
            "support": s,
            "predicted": p,
        }
    present = [lab for lab in labels if per_class[lab]["support"] > 0]
    ua = float(np.mean([per_class[lab]["recall"] for lab in present]))
    f1_defined = [per_class[lab]["f1"] for lab in labels if per_class[lab]["f1"] is not None]
    wa = _f(accuracy_score(yt, yp))
    return {
        "labels": labels,
        "n": len(yt),
        "wa": wa,
        "accuracy": wa,
        "ua": ua,
        "weighted_f1": _f(f1_score(yt, yp, labels=labels, average="weighted", zero_division=0)),
        "macro_f1": float(np.mean(f1_defined)),
        "per_class": per_class,
        "confusion_matrix": cm.astype(int).tolist(),
        "n_pred_outside_labels": int(sum(v not in label_set for v in yp)),
        "classes_in_ua": present,
    }


def format_report(report: dict) -> str:
    """Short human-readable summary (one line of totals, one line per class)."""
    lines = [
        f"n={report['n']}  WA={report['wa']:.4f}  UA={report['ua']:.4f}  "
        f"wF1={report['weighted_f1']:.4f}  mF1={report['macro_f1']:.4f}  "
        f"outside-labels={report['n_pred_outside_labels']}"
    ]
    w = max(len(lab) for lab in report["labels"])
    fmt = lambda v: "   -  " if v is None else f"{v:.4f}"  # noqa: E731
    for lab in report["labels"]:
        c = report["per_class"][lab]
        lines.append(
            f"  {lab:<{w}}  R={fmt(c['recall'])}  P={fmt(c['precision'])}  F1={fmt(c['f1'])}  support={c['support']}"
        )
    return "\n".join(lines)


def safe_name(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._")
    return s or "report"


def plot_confusion(report: dict, path: str, title: str | None = None) -> str:
    """Counts and row-normalised confusion matrices side by side, as a PNG (matplotlib Agg)."""
    # Agg canvas on a bare Figure: no pyplot, no global backend switch, safe in workers and threads.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    labels = report["labels"]
    cm = np.asarray(report["confusion_matrix"], dtype=float)
    k = len(labels)
    # normalised by true support, so the diagonal is each class's recall even when some predictions fell
    # outside the labels (such rows then sum to less than 1)
    rows = np.array([[report["per_class"][lab]["support"]] for lab in labels], dtype=float)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)

    cell = 0.62 if k <= 10 else 0.42
    side = max(3.8, 1.6 + cell * k)
    fig = Figure(figsize=(2 * side + 1.2, side + 0.6), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    fontsize = 9 if k <= 8 else 7
    # n = true support (rows may sum to less when some predictions fell outside the labels)
    ylabels = [f"{lab} (n={report['per_class'][lab]['support']})" for lab in labels]
    for ax, mat, sub, is_norm in ((axes[0], cm, "counts", False), (axes[1], norm, "row-normalised (recall)", True)):
        vmax = 1.0 if is_norm else max(float(mat.max()), 1.0)
        im = ax.imshow(mat, cmap="Blues", vmin=0, vmax=vmax)
        cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        if not is_norm:
            cbar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xticks(range(k))
        ax.set_yticks(range(k))
        ax.set_xticklabels(labels, rotation=45, ha="right", rotation_mode="anchor", fontsize=fontsize)
        ax.set_yticklabels(ylabels if not is_norm else labels, fontsize=fontsize)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(sub, fontsize=10)
        for i in range(k):
            for j in range(k):
                v = mat[i, j]
                txt = ("-" if rows[i, 0] == 0 else f"{v:.2f}") if is_norm else f"{int(v)}"
                ax.text(
                    j,
                    i,
                    txt,
                    ha="center",
                    va="center",
                    fontsize=fontsize,
                    color="white" if v > 0.55 * vmax else "black",
                )
    head = title or ""
    head += (" — " if head else "") + (
        f"WA {report['wa']:.3f} · UA {report['ua']:.3f} · wF1 {report['weighted_f1']:.3f} · n {report['n']}"
    )
    if report.get("n_pred_outside_labels"):
        head += f" · {report['n_pred_outside_labels']} predictions outside labels"
    fig.suptitle(head, fontsize=11)
    fig.savefig(path)
    return path


def save_report(report: dict, out_dir: str | os.PathLike, name: str) -> dict[str, str]:
    """Write ``<out_dir>/<name>.json`` and ``<out_dir>/<name>_confusion.png``; return their paths.

    ``name`` is sanitised for the file system (anything but letters, digits, ``._-`` becomes ``_``); the
    original name is the figure's title.
    """
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    base = safe_name(name)
    json_path = os.path.join(out_dir, f"{base}.json")
    png_path = os.path.join(out_dir, f"{base}_confusion.png")
    write_json(json_path, report)
    plot_confusion(report, png_path, title=str(name))
    return {"json": os.path.abspath(json_path), "png": os.path.abspath(png_path)}
