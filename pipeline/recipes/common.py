"""Shared parts of the corpus recipes: the manifest's required columns, audio-existence checks, text cleaning,
probing.

Missing audio (both corpora; ``missing=``)
-----------------------------------------
``"drop"`` (default): rows whose audio file does not exist are removed, a warning names the count and the
first ids, and ``df.attrs["missing_audio"]`` lists all dropped ``utt_id``\\ s (``df.attrs["n_missing_audio"]``
the count) — so training never sees an undecodable row and evaluation sizes are explicit.
``"keep"``: rows stay, with ``audio_exists=False``. ``"error"``: raise :class:`FileNotFoundError`.
The ``audio_exists`` column is always present (all True after ``"drop"``).
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import Literal

import pandas as pd

log = logging.getLogger("pipeline.recipes")  # one logger for every recipe

MANIFEST_COLUMNS: tuple[str, ...] = ("utt_id", "path", "label", "transcript", "speaker", "split")

Missing = Literal["drop", "keep", "error"]


class DirCache:
    """Existence checks with one listdir per folder (cheap on network file systems)."""

    def __init__(self):
        self._cache: dict[str, set[str]] = {}

    def exists(self, path: str) -> bool:
        d, name = os.path.split(path)
        if d not in self._cache:
            try:
                self._cache[d] = set(os.listdir(d))
            except OSError:
                self._cache[d] = set()
        return name in self._cache[d]


def clean_text(s) -> str | None:
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return None
    s = re.sub(r"\s+", " ", str(s)).strip()  # no newlines/tabs: manifests stay one row per line
    return s or None


def probe_durations(df: pd.DataFrame) -> pd.DataFrame:
    import soundfile as sf

    durs, rates = [], []
    for p, ok in zip(df["path"], df["audio_exists"]):
        d = r = None
        if ok:
            try:
                info = sf.info(p)
                d, r = info.frames / info.samplerate, int(info.samplerate)
            except Exception:  # noqa: BLE001 - unreadable by libsndfile (e.g. mp4): leave unknown
                pass
        durs.append(d)
        rates.append(r)
    probed = pd.Series(durs, index=df.index, dtype="float64")
    df["duration_s"] = probed.fillna(df["duration_s"]) if "duration_s" in df else probed
    df["sample_rate"] = pd.array(rates, dtype="Int64")
    return df


def apply_missing(df: pd.DataFrame, missing: Missing, corpus: str) -> pd.DataFrame:
    if missing not in ("drop", "keep", "error"):
        raise ValueError(f"missing must be 'drop', 'keep' or 'error', got {missing!r}")
    absent = df.loc[~df["audio_exists"], "utt_id"].tolist()
    if absent and missing == "error":
        raise FileNotFoundError(
            f"{corpus}: {len(absent)} utterances have no audio file, e.g. "
            f"{df.loc[~df['audio_exists'], 'path'].head(3).tolist()}"
        )
    if absent:
        action = "dropped" if missing == "drop" else "kept with audio_exists=False"
        log.warning(
            "%s: %d of %d utterances have no audio file (%s), e.g. %s", corpus, len(absent), len(df), action, absent[:5]
        )
    if missing == "drop":
        df = df[df["audio_exists"]].reset_index(drop=True)
    df.attrs["missing_audio"] = absent
    df.attrs["n_missing_audio"] = len(absent)
    return df


def find_root(root: str | os.PathLike, child: str, probe: str) -> Path:
    """``root`` itself or ``root/child`` (accept the release folder or its parent)."""
    r = Path(root).expanduser().resolve()
    if not (r / probe).exists() and (r / child / probe).exists():
        r = r / child
    return r
