"""Per-call timeline pictures: what was labelled where, on each channel, at a glance.

One horizontal lane per channel (in channel order), each predicted segment a bar from ``start_s`` to ``end_s`` in
its label's colour, opacity = confidence (so an unsure label looks faded rather than as certain as any other).
With a ground truth (the demo archive's ``segments.csv`` shape: recording_id, channel and/or channel_name,
start_s, end_s, label) a truth lane sits above each predicted lane, so misses, false alarms and label errors show
as mismatched bars. Colours are fixed per label name (the same emotion looks the same in every picture).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from emoq_model.io import atomic_path, join, resolve, write_bytes
from emoq_model.metrics import safe_name

__all__ = ["plot_timeline", "write_timelines", "label_colours", "MIN_ALPHA"]

MIN_ALPHA = 0.25  # a confidence this low (or lower) still draws a visible bar
# intuitive colours for the usual emotion names; any other label takes the next free one of PALETTE
KNOWN = {
    "neutral": "#9e9e9e",
    "happy": "#f2b701",
    "angry": "#d62728",
    "sad": "#1f77b4",
    "frustrated": "#ff7f0e",
    "excited": "#e377c2",
    "surprise": "#17becf",
    "fear": "#9467bd",
    "disgust": "#2ca02c",
    "calm": "#8c564b",
}
PALETTE = [
    "#2ca02c",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#ff7f0e",
    "#393b79",
    "#637939",
    "#8c6d31",
    "#843c39",
    "#7b4173",
]
TIMELINE_COLUMNS = [
    "recording_id",
    "channel",
    "channel_index",
    "start_s",
    "end_s",
    "label",
    "confidence",
    "recording_duration_s",
    "error",
]


def label_colours(labels: Sequence[str]) -> dict[str, str]:
    """Label -> colour: the known emotion names keep theirs, the others take unused palette colours in order."""
    used = {KNOWN[lab] for lab in labels if lab in KNOWN}
    free = iter([c for c in PALETTE if c not in used] + PALETTE * 4)
    return {lab: KNOWN[lab] if lab in KNOWN else next(free) for lab in labels}


def _int_like(s: pd.Series) -> bool:
    v = pd.to_numeric(s, errors="coerce")
    return bool(len(s) and v.notna().all() and (v == np.round(v)).all())


def _truth_channels(truth: pd.DataFrame, names: dict[int, str], mix_only: bool) -> pd.Series:
    """The lane name of each truth turn, matched as :mod:`pipeline.evaluation.archive` matches channels:
    ``channel_name``, else an integer ``channel`` (-> the predicted name of that index), else ``channel``."""
    if mix_only:  # labelled on the mix only: all truth turns pooled into its lane
        return pd.Series("mix", index=truth.index)
    if "channel_name" in truth.columns:
        return truth["channel_name"].astype(str)
    if _int_like(truth["channel"]):
        idx = pd.to_numeric(truth["channel"]).astype(int)
        return idx.map(lambda i: names.get(i, f"ch{i}"))
    return truth["channel"].astype(str)


def _lanes(ok: pd.DataFrame, truth: pd.DataFrame | None) -> tuple[list[str], pd.Series | None]:
    """Channel names in channel order (predicted ones by channel_index, truth-only ones after) and the truth's
    lane names."""
    order = (
        ok.groupby("channel")["channel_index"].min().sort_values(kind="stable") if len(ok) else pd.Series(dtype=float)
    )
    channels = [str(c) for c in order.index]
    tlane = None
    if truth is not None:
        names = {int(i): str(c) for c, i in order.items()}
        tlane = _truth_channels(truth, names, mix_only=channels == ["mix"])
        if "channel" in truth.columns and _int_like(truth["channel"]):  # truth-only channels in their index order
            extra = (
                pd.DataFrame({"lane": tlane, "i": pd.to_numeric(truth["channel"])})
                .groupby("lane")["i"]
                .min()
                .sort_values(kind="stable")
                .index
            )
        else:
            extra = sorted(set(tlane))
        channels += [str(c) for c in extra if str(c) not in channels]
    return channels, tlane


def _plain(text: str, limit: int = 140) -> str:
    """Text as drawn: control characters (ids and errors are data) as ``?``, long text cut; callers pass
    ``parse_math=False`` so that a ``$`` in an id is a dollar, not mathtext."""
    text = "".join(c if c.isprintable() else "?" for c in str(text))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _save(fig, path: str) -> str:
    """PNG to ``path`` atomically: a local temporary name + rename, or bytes through a temporary object (URIs)."""
    if "://" in str(path):
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return write_bytes(path, buf.getvalue())
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return os.path.abspath(path)


def plot_timeline(
    segments: pd.DataFrame,
    path: str | os.PathLike,
    title: str | None = None,
    truth: pd.DataFrame | None = None,
    labels: list[str] | None = None,
) -> list[str]:
    """Draw one recording's segments (output rows, error rows allowed) as a PNG at ``path`` (local or URI).

    Returns the lane names, top to bottom (``"customer (truth)"`` above ``"customer"`` when ``truth`` is given).
    ``labels`` fixes the legend and colour order (default: the labels present, sorted). A recording without
    segments gets an empty picture with its error as a note.
    """
    # Agg canvas on a bare Figure: no pyplot, no global backend switch (as emoq_model.metrics.plot_confusion)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import to_rgba
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    has_err = segments["error"].notna() if "error" in segments.columns else pd.Series(False, index=segments.index)
    ok = segments[~has_err & segments["start_s"].notna()]
    if truth is not None:
        truth = truth[truth["start_s"].notna()]
    channels, tlane = _lanes(ok, truth)
    seen = set(ok["label"].dropna().astype(str)) | (set(truth["label"].astype(str)) if truth is not None else set())
    labs = list(labels) + sorted(seen - set(labels)) if labels else sorted(seen)
    colours = label_colours(labs)

    lanes = [x for c in channels for x in ((f"{c} (truth)", c) if truth is not None else (c,))]
    ends = [ok["end_s"].max() if len(ok) else 0.0, truth["end_s"].max() if truth is not None and len(truth) else 0.0]
    if "recording_duration_s" in segments.columns:
        ends.append(segments["recording_duration_s"].max())
    x_max = max([float(e) for e in ends if pd.notna(e)] + [1.0])

    n = max(len(lanes), 1)
    fig = Figure(figsize=(12, 1.3 + 0.45 * n), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    y_of = {lane: n - 1 - i for i, lane in enumerate(lanes)}  # first lane on top

    def bars(rows: pd.DataFrame, lane: str, alpha: np.ndarray, height: float) -> None:
        if not len(rows):
            return
        rgba = [to_rgba(colours.get(str(lab), "#000000"), float(a)) for lab, a in zip(rows["label"], alpha)]
        ax.barh(
            y_of[lane],
            (rows["end_s"] - rows["start_s"]).to_numpy(float),
            left=rows["start_s"].to_numpy(float),
            height=height,
            color=rgba,
            edgecolor="none",
        )

    for c in channels:
        rows = ok[ok["channel"].astype(str) == c]
        conf = rows["confidence"].to_numpy(float) if "confidence" in rows.columns else np.ones(len(rows))
        bars(rows, c, np.clip(np.nan_to_num(conf, nan=1.0), MIN_ALPHA, 1.0), 0.8)
        if truth is not None:
            t = truth[tlane == c]
            bars(t, f"{c} (truth)", np.ones(len(t)), 0.6)
    if not len(ok):
        errs = segments["error"].dropna() if "error" in segments.columns else pd.Series(dtype=str)
        note = "no segments" + (f": {errs.iloc[0]}" if len(errs) else "")
        ax.text(
            0.5,
            0.5,
            _plain(note),
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=10,
            color="#b00000",
            parse_math=False,
        )

    ax.set_xlim(0, x_max)
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_yticks([y_of[lane] for lane in lanes], [_plain(lane, 40) for lane in lanes], fontsize=9, parse_math=False)
    ax.set_xlabel("time (s)")
    ax.grid(axis="x", alpha=0.3)
    if labs:
        ax.legend(
            handles=[Patch(color=colours[lab], label=lab) for lab in labs],
            loc="upper left",
            bbox_to_anchor=(1.0, 1.0),
            fontsize=8,
            frameon=False,
            title="opacity = confidence",
            title_fontsize=7,
        )
    if title is None and "recording_id" in segments.columns and len(segments):
        title = str(segments["recording_id"].iloc[0])
    if title:
        ax.set_title(_plain(title), fontsize=11, parse_math=False)
    _save(fig, os.fspath(path))
    return lanes


def _file_names(ids: list[str]) -> list[str]:
    """``<safe_name(id)>.png``; an id that ``safe_name`` changed gets a short hash of itself too, so that ``a/b``
    and ``a_b`` cannot overwrite each other's picture."""
    out = []
    for rid in ids:
        name = safe_name(rid)
        out.append(f"{name}.png" if name == rid else f"{name}-{hashlib.sha1(rid.encode()).hexdigest()[:8]}.png")
    return out


def write_timelines(
    out_uri: str,
    n: int,
    truth: str | pd.DataFrame | None = None,
    out_dir: str | None = None,
    recording_ids: Sequence[str] | None = None,
) -> list[str]:
    """Timelines of the first ``n`` recordings (sorted by id; of ``recording_ids`` when given) of the labeling
    output ``out_uri``, as ``<out_dir or out_uri/timelines>/<safe id>.png``; returns their paths.

    Only the chosen recordings' rows are read (a filter on the part files), so an archive's size does not matter.
    ``truth``: per-turn truth (path or DataFrame, as :func:`pipeline.evaluation.archive.read_truth` reads it).
    """
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from pipeline.labeling.sink import part_files, segments_dir

    if n <= 0:
        return []
    fs, root = resolve(segments_dir(out_uri))
    files = [i.path for i in part_files(fs, root)]
    if not files:
        return []
    data = ds.dataset(files, format="parquet", filesystem=fs)
    present = pc.unique(data.to_table(columns=["recording_id"]).column(0)).to_pylist()
    pool = set(present) if recording_ids is None else set(present) & {str(r) for r in recording_ids}
    ids = sorted(pool)[:n]
    if not ids:
        return []
    table = data.to_table(columns=TIMELINE_COLUMNS + ["probabilities"], filter=pc.field("recording_id").isin(ids))
    first = pc.drop_null(table.column("probabilities")).slice(0, 1).to_pylist()
    labels = [k for k, _ in first[0]] if first else None  # the model's label order: stable colours and legend
    df = table.drop(["probabilities"]).to_pandas()
    truth_df = None
    if truth is not None:
        from pipeline.evaluation.archive import read_truth

        truth_df = read_truth(truth)
        truth_df = truth_df.assign(recording_id=truth_df["recording_id"].astype(str))
    dest = out_dir or join(out_uri, "timelines")
    paths = []
    for rid, name in zip(ids, _file_names(ids)):
        t = truth_df[truth_df["recording_id"] == rid] if truth_df is not None else None
        path = join(dest, name)
        plot_timeline(df[df["recording_id"] == rid], path, title=rid, truth=t, labels=labels)
        paths.append(path if "://" in path else os.path.abspath(path))
    return paths
