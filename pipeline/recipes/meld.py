"""MELD's on-disk layout -> the project's manifest (a recipe, after lhotse's).

MELD (the usual setup: 7 classes, official train/dev/test)
------------------------------------------------------
Layout: ``MELD.Raw/{train,dev,test}_sent_emo.csv`` (header ``Sr No.,Utterance,Speaker,Emotion,Sentiment,
Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime``) and audio per split folder as
``dia{D}_utt{U}.<ext>``; default folders are the release's ``train_splits``, ``dev_splits_complete`` and
``output_repeated_splits_test`` (override with ``audio_dirs``; relative folders are taken from ``root``).

* Labels: neutral, joy, surprise, anger, sadness, disgust, fear (lower-cased; anything else raises).
  Splits: train→train, dev→val, test→test. ``utt_id`` = ``<official split>_dia{D}_utt{U}`` (ids repeat across
  the official splits). Speaker = the character name (MELD splits are NOT speaker-disjoint: the six friends
  are everywhere). Extras: ``dialogue_id``, ``utterance_id``, ``sentiment``, ``season``, ``episode``,
  ``start_time``, ``end_time``, ``duration_s`` (from the subtitle times; NaN when non-positive).
* Text decoding: the CSVs are mostly UTF-8 but hold both raw cp1252 bytes (``\\x92`` for ’) and UTF-8
  mojibake (``â€™``). Invalid UTF-8 bytes are decoded as cp1252, then mojibake runs are repaired when they
  re-encode to valid UTF-8 (see :func:`fix_mojibake`); pure ASCII and correct text are left unchanged.

Missing audio: see :mod:`pipeline.recipes.common`.
"""

from __future__ import annotations

import codecs
import io
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from pipeline.recipes.common import DirCache, Missing, apply_missing, clean_text, find_root, probe_durations

log = logging.getLogger("pipeline.recipes")

MELD_LABELS: tuple[str, ...] = ("neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear")
MELD_CSV_COLUMNS: tuple[str, ...] = (
    "Sr No.",
    "Utterance",
    "Speaker",
    "Emotion",
    "Sentiment",
    "Dialogue_ID",
    "Utterance_ID",
    "Season",
    "Episode",
    "StartTime",
    "EndTime",
)
MELD_SPLITS: dict[str, str] = {"train": "train", "dev": "val", "test": "test"}  # official → manifest
MELD_AUDIO_DIRS: dict[str, str] = {
    "train": "train_splits",
    "dev": "dev_splits_complete",
    "test": "output_repeated_splits_test",
}


# MELD: robust text decoding


def _cp1252_fallback(exc: UnicodeError):
    """codecs error handler: decode the offending bytes as cp1252 (undefined bytes as Latin-1)."""
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    bad = exc.object[exc.start : exc.end]
    return "".join(_cp1252_char(b) for b in bad), exc.end


def _cp1252_char(b: int) -> str:
    try:
        return bytes([b]).decode("cp1252")
    except UnicodeDecodeError:
        return chr(b)


codecs.register_error("emoq_cp1252_fallback", _cp1252_fallback)

# One UTF-8 character seen through cp1252/Latin-1: a lead byte (Â..ô) and its 1-3 continuation bytes
# (0x80-0xBF, which cp1252 shows as Latin-1 symbols or as € ‚ ƒ „ … † ‡ ˆ ‰ Š ‹ Œ Ž ‘ ’ “ ” • – — ˜ ™ š › œ ž Ÿ).
_CONT = (
    "[\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc\u2013\u2014"
    "\u2018-\u201a\u201c-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122]"
)
_MOJIBAKE = re.compile(f"[\u00c2-\u00df]{_CONT}|[\u00e0-\u00ef]{_CONT}{{2}}|[\u00f0-\u00f4]{_CONT}{{3}}")


def _to_single_bytes(s: str) -> bytes:
    out = bytearray()
    for ch in s:
        try:
            out += ch.encode("cp1252")
        except UnicodeEncodeError:
            if ord(ch) < 256:
                out.append(ord(ch))
            else:
                raise
    return bytes(out)


def fix_mojibake(text: str) -> str:
    """Repair UTF-8 text that was decoded as cp1252 once (``youâ€™re`` → ``you’re``).

    Only runs that re-encode to *valid* UTF-8 are replaced, so correct accented text (``café``) is kept.
    """
    if not text or text.isascii():
        return text

    def repl(m: re.Match) -> str:
        s = m.group(0)
        try:
            return _to_single_bytes(s).decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            return s

    return _MOJIBAKE.sub(repl, text)


def decode_text_bytes(raw: bytes) -> str:
    """UTF-8 (BOM stripped) with invalid bytes read as cp1252, then :func:`fix_mojibake`."""
    text = raw.decode("utf-8-sig", errors="emoq_cp1252_fallback")
    return fix_mojibake(text)


def read_meld_csv(path: str | os.PathLike) -> pd.DataFrame:
    """One ``*_sent_emo.csv`` as strings (no NA guessing), text repaired, header checked."""
    text = decode_text_bytes(Path(path).read_bytes())
    df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=False)
    df.columns = [str(c).strip() for c in df.columns]
    missing_cols = [c for c in ("Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID") if c not in df]
    if missing_cols:
        raise ValueError(f"{path}: not a MELD CSV, missing columns {missing_cols} (have {list(df.columns)})")
    return df


def _srt_seconds(t: str) -> float:
    """``HH:MM:SS,mmm`` (or with ``.``) → seconds; NaN if unparseable."""
    m = re.match(r"^\s*(\d+):(\d+):(\d+)(?:[,.](\d+))?\s*$", t or "")
    if not m:
        return float("nan")
    h, mi, s, frac = m.groups()
    return int(h) * 3600 + int(mi) * 60 + int(s) + (int(frac) / 10 ** len(frac) if frac else 0.0)


def meld_manifest(
    root: str | os.PathLike,
    audio_dirs: Mapping[str, str | os.PathLike] | None = None,
    ext: str = "wav",
    *,
    splits=("train", "dev", "test"),
    missing: Missing = "drop",
    probe_audio: bool = False,
) -> pd.DataFrame:
    """MELD 7-class manifest from ``MELD.Raw`` (or its parent).

    ``audio_dirs`` maps an official split (``train``/``dev``/``test``; ``val`` is accepted for ``dev``) to its
    audio folder (absolute, or relative to ``root``); unspecified splits use the release folder names.
    ``ext``: audio file extension (``wav``, ``flac``, ``mp4``...). ``splits``: official splits to read.
    """
    root = find_root(root, "MELD.Raw", "train_sent_emo.csv")
    ext = ext.lstrip(".")
    dirs_cfg = dict(MELD_AUDIO_DIRS)
    for k, v in (audio_dirs or {}).items():
        k = "dev" if k == "val" else k
        if k not in MELD_AUDIO_DIRS:
            raise ValueError(f"audio_dirs keys must be train/dev(val)/test, got {k!r}")
        dirs_cfg[k] = os.fspath(v)
    exists = DirCache()
    frames = []
    for off in splits:
        if off not in MELD_SPLITS:
            raise ValueError(f"MELD split must be one of {list(MELD_SPLITS)}, got {off!r}")
        csv = root / f"{off}_sent_emo.csv"
        if not csv.is_file():
            raise FileNotFoundError(f"MELD CSV not found: {csv}")
        raw = read_meld_csv(csv)
        adir = Path(dirs_cfg[off]).expanduser()
        adir = (adir if adir.is_absolute() else root / adir).resolve()
        emo = raw["Emotion"].str.strip().str.lower()
        bad = sorted(set(emo) - set(MELD_LABELS))
        if bad:
            raise ValueError(f"{csv}: emotions outside the 7 MELD classes: {bad[:10]}")
        dia = raw["Dialogue_ID"].str.strip().astype(int)
        utt = raw["Utterance_ID"].str.strip().astype(int)
        paths = [str(adir / f"dia{d}_utt{u}.{ext}") for d, u in zip(dia, utt)]
        start = raw.get("StartTime", pd.Series([""] * len(raw))).map(_srt_seconds)
        end = raw.get("EndTime", pd.Series([""] * len(raw))).map(_srt_seconds)
        dur = (end - start).where(lambda x: x > 0)

        def col(name, raw=raw):
            return raw[name].str.strip() if name in raw else pd.Series([None] * len(raw), dtype="object")

        frames.append(
            pd.DataFrame(
                {
                    "utt_id": [f"{off}_dia{d}_utt{u}" for d, u in zip(dia, utt)],
                    "path": paths,
                    "label": emo.to_numpy(),
                    "transcript": [clean_text(t) for t in raw["Utterance"]],
                    "speaker": col("Speaker").to_numpy(),
                    "split": MELD_SPLITS[off],
                    "dialogue_id": dia.to_numpy(),
                    "utterance_id": utt.to_numpy(),
                    "sentiment": col("Sentiment").str.lower().to_numpy(),
                    "season": pd.to_numeric(col("Season"), errors="coerce").astype("Int64").to_numpy(),
                    "episode": pd.to_numeric(col("Episode"), errors="coerce").astype("Int64").to_numpy(),
                    "start_time": col("StartTime").to_numpy(),
                    "end_time": col("EndTime").to_numpy(),
                    "duration_s": dur.round(3).to_numpy(),
                    "audio_exists": [exists.exists(p) for p in paths],
                }
            )
        )
    df = pd.concat(frames, ignore_index=True)
    dup = df["utt_id"].duplicated()
    if dup.any():
        log.warning(
            "MELD: %d duplicate (split, dialogue, utterance) rows dropped, e.g. %s",
            int(dup.sum()),
            df.loc[dup, "utt_id"].head(5).tolist(),
        )
        df = df[~dup].reset_index(drop=True)
    df["audio_exists"] = df["audio_exists"].astype(bool)
    df = apply_missing(df, missing, "MELD")
    if probe_audio:
        df = probe_durations(df)
    return df
