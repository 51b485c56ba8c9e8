"""Readers for the standard on-disk layouts of IEMOCAP and MELD, producing the project's manifest.

Manifest (one row per utterance; a pandas DataFrame here, CSV or Parquet on disk via :func:`write_manifest`):

    utt_id, path (absolute), label, transcript, speaker, split (train/val/test)
    optional: session, fold, duration_s, sample_rate, and corpus-specific extras (kept, documented below)

Recipes that produce manifests: :mod:`pipeline.recipes.iemocap`, :mod:`pipeline.recipes.meld`; a labelled
call archive: :func:`call_archive_manifest`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import pandas as pd

from emoq_model.io import atomic_path
from pipeline.recipes.common import MANIFEST_COLUMNS

# manifest I/O


def write_manifest(df: pd.DataFrame, path: str | os.PathLike, *, add_recording_id: bool = True) -> str:
    """Write ``df`` as CSV (``.csv``) or Parquet (``.parquet``) atomically; return the absolute path.

    Checks the required columns and that paths are absolute. ``add_recording_id`` adds ``recording_id`` =
    ``utt_id`` when absent, so :mod:`pipeline.labeling.sources` (which keys recordings by ``recording_id``) labels the
    same ids (MELD's ``dia0_utt0.wav`` names repeat across splits).
    """
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"manifest lacks required columns {missing}")
    rel = [p for p in df["path"] if not os.path.isabs(str(p))]
    if rel:
        raise ValueError(f"manifest paths must be absolute, e.g. {rel[:3]}")
    if df["utt_id"].duplicated().any():
        raise ValueError(
            f"duplicate utt_id values, e.g. {df.loc[df['utt_id'].duplicated(), 'utt_id'].head(3).tolist()}"
        )
    out = df.copy()
    if add_recording_id and "recording_id" not in out:
        out.insert(0, "recording_id", out["utt_id"])
    path = os.path.abspath(os.fspath(path))
    if not path.endswith((".parquet", ".csv")):
        raise ValueError(f"manifest path must end in .csv or .parquet: {path}")
    with atomic_path(path) as tmp:
        out.to_parquet(tmp, index=False) if path.endswith(".parquet") else out.to_csv(tmp, index=False)
    return path


def load_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest written by :func:`write_manifest` (or by hand) back into a DataFrame.

    CSV text columns stay text (utt ids like ``007`` are not turned into numbers; empty cells become NA).
    """
    path = os.fspath(path)
    if path.endswith(".parquet"):
        df = pd.read_parquet(path)
    else:
        df = pd.read_csv(
            path, dtype={c: str for c in ("utt_id", "recording_id", "path", "label", "transcript", "speaker", "split")}
        )
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: manifest lacks required columns {missing}")
    return df


def call_archive_manifest(
    segments: str | os.PathLike | pd.DataFrame, split: str = "train", splits: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """A training manifest from a labelled call archive: one utterance per labelled turn.

    ``segments``: a table (CSV / Parquet / DataFrame) with ``recording_id, path, channel`` (index), ``start_s,
    end_s, label`` and optional ``channel_name, transcript`` -- the shape of the demo archive's ``segments.csv``.
    The utterance's ``speaker`` is the *channel of its call* (``<recording_id>/<channel name>``): that is the group
    labeling sees (one channel of one call), so per-speaker statistics in training come from the same kind of
    population as at labeling time -- a label-skewed channel, not a class-balanced speaker set. ``split``: the
    split of every row, or ``splits``: recording_id -> split.
    """
    df = (
        segments
        if isinstance(segments, pd.DataFrame)
        else (
            pd.read_parquet(segments)
            if str(segments).endswith(".parquet")
            else pd.read_csv(segments, dtype={"recording_id": str, "path": str, "label": str, "transcript": str})
        )
    )
    missing = [c for c in ("recording_id", "path", "channel", "start_s", "end_s", "label") if c not in df.columns]
    if missing:
        raise ValueError(f"call segments table lacks columns {missing}")
    name = df["channel_name"].astype(str) if "channel_name" in df.columns else df["channel"].astype(str)
    seg = df["segment"].astype(int) if "segment" in df.columns else df.groupby("recording_id").cumcount()
    out = pd.DataFrame(
        {
            "utt_id": df["recording_id"].astype(str) + "/" + name + "/" + seg.astype(str),
            "path": df["path"].astype(str),
            "label": df["label"].astype(str),
            "transcript": df["transcript"] if "transcript" in df.columns else None,
            "speaker": df["recording_id"].astype(str) + "/" + name,
            "split": df["recording_id"].map(dict(splits)) if splits is not None else split,
            "channel": df["channel"].astype(int),
            "segment_start_s": df["start_s"].astype(float),
            "segment_end_s": df["end_s"].astype(float),
            "duration_s": (df["end_s"] - df["start_s"]).astype(float),
            "recording_id": df["recording_id"].astype(str),
        }
    )
    if out["split"].isna().any():
        raise ValueError("splits does not name the split of every recording")
    return out
