"""Readers for the standard on-disk layouts of IEMOCAP and MELD, producing the project's manifest.

Manifest (one row per utterance; a pandas DataFrame here, CSV or Parquet on disk via :func:`write_manifest`):

    utt_id, path (absolute), label, transcript, speaker, split (train/val/test)
    optional: session, fold, duration_s, sample_rate, and corpus-specific extras (kept, documented below)

IEMOCAP (the usual setup: 4 classes, 5,531 utterances, leave-one-session-out)
---------------------------------------------------------------------------
Layout: ``IEMOCAP_full_release/Session{1..5}/sentences/wav/<dialog>/<utt>.wav``, labels in
``Session{n}/dialog/EmoEvaluation/<dialog>.txt`` (summary lines ``[start - end]\\t<utt>\\t<code>\\t[V, A, D]``),
transcripts in ``Session{n}/dialog/transcriptions/<dialog>.txt`` (``<utt> [start-end]: text``).
Only the top-level ``EmoEvaluation/*.txt`` files are read (not ``Categorical/``, ``Attribute/``,
``Self-evaluation/``; macOS ``._*`` files are skipped).

* Labels: ``neu``→neutral, ``hap``+``exc``→happy, ``ang``→angry, ``sad``→sad; everything else
  (``fru``, ``sur``, ``fea``, ``dis``, ``oth``, ``xxx``) is dropped. ``merge_excited=False`` drops ``exc``
  instead (the older "hap only" setup).
* Speaker: session + the gender letter of the utterance's last ``_`` part (``Ses01F_impro01_M003`` is the
  *male* actor of session 1 → ``Ses01M``). The dialog prefix's F/M says who wore the mocap markers, not who
  speaks. Extra columns: ``session`` (1-5), ``gender``, ``dialog``, ``start_s``, ``end_s``, ``raw_label``,
  ``valence``/``arousal``/``dominance`` (the evaluators' mean), ``duration_s`` = end - start (or probed).
* Folds (:func:`iemocap_split`): fold k (1-5) always puts Session k's test speaker(s) in ``test``.

  - default (``speaker_independent=False``): test = all of Session k; val = one other whole session
    (``val_session``, default ``k % 5 + 1``, i.e. the next one cyclically); train = the remaining 3 sessions.
    Model selection never sees a test speaker *or* a test dialog; costs one session of training data.
  - ``speaker_independent=True`` (the common practice, also the "leave-one-speaker-out 10-fold" setup when
    run for both ``test_gender`` values): test = one speaker of Session k (``test_gender``, default ``F``),
    val = the other speaker of Session k, train = the other 4 sessions. Val and test speakers are both
    unseen in training, but they share dialogs (same scripts/improvisations), so val is optimistic about
    topic/text overlap.

  Every split is speaker-disjoint from every other in both schemes (IEMOCAP's 10 speakers are session-bound).
  The ``fold`` column records k.

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

Missing audio (both corpora; ``missing=``)
-----------------------------------------
``"drop"`` (default): rows whose audio file does not exist are removed, a warning names the count and the
first ids, and ``df.attrs["missing_audio"]`` lists all dropped ``utt_id``\\ s (``df.attrs["n_missing_audio"]``
the count) — so training never sees an undecodable row and evaluation sizes are explicit.
``"keep"``: rows stay, with ``audio_exists=False``. ``"error"``: raise :class:`FileNotFoundError`.
The ``audio_exists`` column is always present (all True after ``"drop"``).
"""
from __future__ import annotations

import codecs
import io
import logging
import math
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal

import pandas as pd

log = logging.getLogger(__name__)

IEMOCAP_LABELS: tuple[str, ...] = ("neutral", "happy", "angry", "sad")
IEMOCAP_LABEL_MAP: dict[str, str] = {"neu": "neutral", "hap": "happy", "exc": "happy", "ang": "angry", "sad": "sad"}
MELD_LABELS: tuple[str, ...] = ("neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear")
MELD_CSV_COLUMNS: tuple[str, ...] = ("Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID",
                                     "Utterance_ID", "Season", "Episode", "StartTime", "EndTime")
MELD_SPLITS: dict[str, str] = {"train": "train", "dev": "val", "test": "test"}  # official → manifest
MELD_AUDIO_DIRS: dict[str, str] = {"train": "train_splits", "dev": "dev_splits_complete",
                                   "test": "output_repeated_splits_test"}
MANIFEST_COLUMNS: tuple[str, ...] = ("utt_id", "path", "label", "transcript", "speaker", "split")

Missing = Literal["drop", "keep", "error"]


# ----------------------------------------------------------------------------------------------------------------
# shared helpers


class _DirCache:
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


def _clean_text(s) -> str | None:
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return None
    s = re.sub(r"\s+", " ", str(s)).strip()  # no newlines/tabs: manifests stay one row per line
    return s or None


def _probe(df: pd.DataFrame) -> pd.DataFrame:
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


def _apply_missing(df: pd.DataFrame, missing: Missing, corpus: str) -> pd.DataFrame:
    if missing not in ("drop", "keep", "error"):
        raise ValueError(f"missing must be 'drop', 'keep' or 'error', got {missing!r}")
    absent = df.loc[~df["audio_exists"], "utt_id"].tolist()
    if absent and missing == "error":
        raise FileNotFoundError(f"{corpus}: {len(absent)} utterances have no audio file, e.g. "
                                f"{df.loc[~df['audio_exists'], 'path'].head(3).tolist()}")
    if absent:
        action = "dropped" if missing == "drop" else "kept with audio_exists=False"
        log.warning("%s: %d of %d utterances have no audio file (%s), e.g. %s", corpus, len(absent), len(df),
                    action, absent[:5])
    if missing == "drop":
        df = df[df["audio_exists"]].reset_index(drop=True)
    df.attrs["missing_audio"] = absent
    df.attrs["n_missing_audio"] = len(absent)
    return df


def _find_root(root: str | os.PathLike, child: str, probe: str) -> Path:
    """``root`` itself or ``root/child`` (accept the release folder or its parent)."""
    r = Path(root).expanduser().resolve()
    if not (r / probe).exists() and (r / child / probe).exists():
        r = r / child
    return r


# ----------------------------------------------------------------------------------------------------------------
# IEMOCAP

_EVAL_LINE = re.compile(r"^\[\s*([0-9.]+)\s*-\s*([0-9.]+)\s*\]\s+(Ses\S+)\s+(\S+)\s+\[([^\]]*)\]")
_TRANS_LINE = re.compile(r"^(Ses\d\d[FM]\S*_[FM]\d+)\s*(?:\[[^\]]*\])?\s*:?\s?(.*)$")


def _read_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace")


def parse_emo_evaluation(path: str | os.PathLike) -> list[dict]:
    """Summary lines of one ``EmoEvaluation/<dialog>.txt``: utt_id, start_s, end_s, code, valence/arousal/dominance."""
    out = []
    for line in _read_text(Path(path)).splitlines():
        m = _EVAL_LINE.match(line.strip())
        if not m:
            continue
        start, end, utt, code, vad = m.groups()
        try:
            v, a, d = (float(x) for x in vad.split(","))
        except ValueError:
            v = a = d = float("nan")
        out.append({"utt_id": utt, "start_s": float(start), "end_s": float(end), "code": code.strip().lower(),
                    "valence": v, "arousal": a, "dominance": d})
    return out


def parse_transcription(path: str | os.PathLike) -> dict[str, str]:
    """utt_id → text for one ``transcriptions/<dialog>.txt`` (lines ``<utt> [start-end]: text``)."""
    out: dict[str, str] = {}
    for line in _read_text(Path(path)).splitlines():
        m = _TRANS_LINE.match(line.strip())
        if m:
            text = _clean_text(m.group(2))
            if text is not None:
                out[m.group(1)] = text
    return out


def iemocap_speaker(utt_id: str) -> tuple[str, str]:
    """(speaker, gender) of an utterance id: ``Ses01F_impro01_M003`` → (``Ses01M``, ``M``)."""
    m = re.match(r"^Ses(\d\d)[FM]", utt_id)
    last = utt_id.rsplit("_", 1)[-1]
    if not m or not last or last[0] not in "FM":
        raise ValueError(f"not an IEMOCAP utterance id: {utt_id!r}")
    return f"Ses{m.group(1)}{last[0]}", last[0]


def read_iemocap(root: str | os.PathLike, *, merge_excited: bool = True, sessions=(1, 2, 3, 4, 5),
                 missing: Missing = "drop", probe_audio: bool = False) -> pd.DataFrame:
    """All 4-class IEMOCAP utterances of ``sessions`` (``split`` empty, ``fold`` absent).

    ``root`` is ``IEMOCAP_full_release`` or its parent. ``probe_audio`` reads every WAV header for the
    exact duration and sample rate (otherwise duration comes from the annotation times, sample rate absent).
    """
    root = _find_root(root, "IEMOCAP_full_release", "Session1")
    label_map = dict(IEMOCAP_LABEL_MAP)
    if not merge_excited:
        label_map.pop("exc")
    dirs = _DirCache()
    rows: list[dict] = []
    seen: set[str] = set()
    n_found_sessions = 0
    for n in sessions:
        sess = root / f"Session{n}"
        eval_dir = sess / "dialog" / "EmoEvaluation"
        if not eval_dir.is_dir():
            log.warning("IEMOCAP: %s not found, session %d skipped", eval_dir, n)
            continue
        n_found_sessions += 1
        for ef in sorted(eval_dir.glob("*.txt")):
            if ef.name.startswith(".") or not ef.is_file():
                continue
            dialog = ef.stem
            tf = sess / "dialog" / "transcriptions" / ef.name
            transcripts = parse_transcription(tf) if tf.is_file() else {}
            for e in parse_emo_evaluation(ef):
                label = label_map.get(e["code"])
                if label is None:
                    continue
                utt = e["utt_id"]
                if utt in seen:
                    log.warning("IEMOCAP: duplicate utterance %s in %s ignored", utt, ef)
                    continue
                seen.add(utt)
                speaker, gender = iemocap_speaker(utt)
                path = str(sess / "sentences" / "wav" / dialog / f"{utt}.wav")
                rows.append({
                    "utt_id": utt, "path": path, "label": label, "transcript": transcripts.get(utt),
                    "speaker": speaker, "split": None, "session": n, "gender": gender, "dialog": dialog,
                    "start_s": e["start_s"], "end_s": e["end_s"], "duration_s": round(e["end_s"] - e["start_s"], 4),
                    "raw_label": e["code"], "valence": e["valence"], "arousal": e["arousal"],
                    "dominance": e["dominance"], "audio_exists": dirs.exists(path),
                })
    if n_found_sessions == 0:
        raise FileNotFoundError(f"no IEMOCAP sessions under {root} (expected Session1..5/dialog/EmoEvaluation)")
    cols = ["utt_id", "path", "label", "transcript", "speaker", "split", "session", "gender", "dialog", "start_s",
            "end_s", "duration_s", "raw_label", "valence", "arousal", "dominance", "audio_exists"]
    df = pd.DataFrame(rows, columns=cols)
    df["session"] = df["session"].astype("int64")
    df["audio_exists"] = df["audio_exists"].astype(bool)
    df["split"] = df["split"].astype("object")
    df = _apply_missing(df, missing, "IEMOCAP")
    if probe_audio:
        df = _probe(df)
    return df


def iemocap_split(df: pd.DataFrame, fold: int, *, speaker_independent: bool = False, val_session: int | None = None,
                  test_gender: str = "F") -> pd.DataFrame:
    """A copy of ``df`` (from :func:`read_iemocap`) with ``split`` and ``fold`` set for leave-one-session-out fold k.

    See the module docstring for the two schemes. Raises if a split would be empty.
    """
    if fold not in (1, 2, 3, 4, 5):
        raise ValueError(f"IEMOCAP fold must be 1..5, got {fold}")
    out = df.copy()
    attrs = dict(df.attrs)
    sess = out["session"].astype(int)
    if speaker_independent:
        if test_gender not in ("F", "M"):
            raise ValueError(f"test_gender must be 'F' or 'M', got {test_gender!r}")
        if val_session is not None:
            raise ValueError("val_session applies to speaker_independent=False only")
        in_k = sess == fold
        is_test = in_k & (out["gender"] == test_gender)
        split = pd.Series("train", index=out.index, dtype="object")
        split[in_k] = "val"
        split[is_test] = "test"
    else:
        vs = fold % 5 + 1 if val_session is None else int(val_session)
        if vs == fold or vs not in (1, 2, 3, 4, 5):
            raise ValueError(f"val_session must be a session 1..5 other than the test session {fold}, got {vs}")
        split = pd.Series("train", index=out.index, dtype="object")
        split[sess == vs] = "val"
        split[sess == fold] = "test"
    out["split"] = split
    out["fold"] = fold
    for s in ("train", "val", "test"):
        if not (out["split"] == s).any():
            raise ValueError(f"IEMOCAP fold {fold}: split {s!r} is empty (sessions present: {sorted(sess.unique())})")
    out.attrs.update(attrs)
    return out


def iemocap_manifest(root: str | os.PathLike, fold: int | None = None, *, speaker_independent: bool = False,
                     val_session: int | None = None, test_gender: str = "F", merge_excited: bool = True,
                     missing: Missing = "drop", probe_audio: bool = False) -> pd.DataFrame:
    """IEMOCAP 4-class manifest; ``fold=None``: all utterances with ``split`` empty (assign later with
    :func:`iemocap_split`); ``fold=k`` (1-5): leave-one-session-out fold k (see module docstring)."""
    df = read_iemocap(root, merge_excited=merge_excited, missing=missing, probe_audio=probe_audio)
    if fold is None:
        return df
    return iemocap_split(df, fold, speaker_independent=speaker_independent, val_session=val_session,
                         test_gender=test_gender)


def iemocap_folds(root: str | os.PathLike, **kw) -> Iterator[tuple[int, pd.DataFrame]]:
    """(k, manifest) for k = 1..5, reading the corpus once. ``kw`` as in :func:`iemocap_manifest`."""
    read_kw = {k: kw.pop(k) for k in ("merge_excited", "missing", "probe_audio") if k in kw}
    df = read_iemocap(root, **read_kw)
    for k in range(1, 6):
        yield k, iemocap_split(df, k, **kw)


# ----------------------------------------------------------------------------------------------------------------
# MELD: robust text decoding


def _cp1252_fallback(exc: UnicodeError):
    """codecs error handler: decode the offending bytes as cp1252 (undefined bytes as Latin-1)."""
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    bad = exc.object[exc.start:exc.end]
    return "".join(_cp1252_char(b) for b in bad), exc.end


def _cp1252_char(b: int) -> str:
    try:
        return bytes([b]).decode("cp1252")
    except UnicodeDecodeError:
        return chr(b)


codecs.register_error("emoq_cp1252_fallback", _cp1252_fallback)

# One UTF-8 character seen through cp1252/Latin-1: a lead byte (Â..ô) and its 1-3 continuation bytes
# (0x80-0xBF, which cp1252 shows as Latin-1 symbols or as € ‚ ƒ „ … † ‡ ˆ ‰ Š ‹ Œ Ž ‘ ’ “ ” • – — ˜ ™ š › œ ž Ÿ).
_CONT = "[\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc\u2013\u2014" \
        "\u2018-\u201a\u201c-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122]"
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


def meld_manifest(root: str | os.PathLike, audio_dirs: Mapping[str, str | os.PathLike] | None = None,
                  ext: str = "wav", *, splits=("train", "dev", "test"), missing: Missing = "drop",
                  probe_audio: bool = False) -> pd.DataFrame:
    """MELD 7-class manifest from ``MELD.Raw`` (or its parent).

    ``audio_dirs`` maps an official split (``train``/``dev``/``test``; ``val`` is accepted for ``dev``) to its
    audio folder (absolute, or relative to ``root``); unspecified splits use the release folder names.
    ``ext``: audio file extension (``wav``, ``flac``, ``mp4``...). ``splits``: official splits to read.
    """
    root = _find_root(root, "MELD.Raw", "train_sent_emo.csv")
    ext = ext.lstrip(".")
    dirs_cfg = dict(MELD_AUDIO_DIRS)
    for k, v in (audio_dirs or {}).items():
        k = "dev" if k == "val" else k
        if k not in MELD_AUDIO_DIRS:
            raise ValueError(f"audio_dirs keys must be train/dev(val)/test, got {k!r}")
        dirs_cfg[k] = os.fspath(v)
    exists = _DirCache()
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

        def col(name):
            return raw[name].str.strip() if name in raw else pd.Series([None] * len(raw), dtype="object")

        frames.append(pd.DataFrame({
            "utt_id": [f"{off}_dia{d}_utt{u}" for d, u in zip(dia, utt)],
            "path": paths,
            "label": emo.to_numpy(),
            "transcript": [_clean_text(t) for t in raw["Utterance"]],
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
        }))
    df = pd.concat(frames, ignore_index=True)
    dup = df["utt_id"].duplicated()
    if dup.any():
        log.warning("MELD: %d duplicate (split, dialogue, utterance) rows dropped, e.g. %s", int(dup.sum()),
                    df.loc[dup, "utt_id"].head(5).tolist())
        df = df[~dup].reset_index(drop=True)
    df["audio_exists"] = df["audio_exists"].astype(bool)
    df = _apply_missing(df, missing, "MELD")
    if probe_audio:
        df = _probe(df)
    return df


# ----------------------------------------------------------------------------------------------------------------
# manifest I/O


def write_manifest(df: pd.DataFrame, path: str | os.PathLike, *, add_recording_id: bool = True) -> str:
    """Write ``df`` as CSV (``.csv``) or Parquet (``.parquet``) atomically; return the absolute path.

    Checks the required columns and that paths are absolute. ``add_recording_id`` adds ``recording_id`` =
    ``utt_id`` when absent, so :mod:`pipeline.sources` (which keys recordings by ``recording_id``) labels the
    same ids (MELD's ``dia0_utt0.wav`` names repeat across splits).
    """
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"manifest lacks required columns {missing}")
    rel = [p for p in df["path"] if not os.path.isabs(str(p))]
    if rel:
        raise ValueError(f"manifest paths must be absolute, e.g. {rel[:3]}")
    if df["utt_id"].duplicated().any():
        raise ValueError(f"duplicate utt_id values, e.g. {df.loc[df['utt_id'].duplicated(), 'utt_id'].head(3).tolist()}")
    out = df.copy()
    if add_recording_id and "recording_id" not in out:
        out.insert(0, "recording_id", out["utt_id"])
    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    if path.endswith(".parquet"):
        out.to_parquet(tmp, index=False)
    elif path.endswith(".csv"):
        out.to_csv(tmp, index=False)
    else:
        raise ValueError(f"manifest path must end in .csv or .parquet: {path}")
    os.replace(tmp, path)
    return path


def load_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest written by :func:`write_manifest` (or by hand) back into a DataFrame.

    CSV text columns stay text (utt ids like ``007`` are not turned into numbers; empty cells become NA).
    """
    path = os.fspath(path)
    if path.endswith(".parquet"):
        df = pd.read_parquet(path)
    else:
        df = pd.read_csv(path, dtype={c: str for c in ("utt_id", "recording_id", "path", "label", "transcript",
                                                         "speaker", "split")})
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: manifest lacks required columns {missing}")
    return df


def call_archive_manifest(segments: str | os.PathLike | pd.DataFrame, split: str = "train",
                          splits: Mapping[str, str] | None = None) -> pd.DataFrame:
    """A training manifest from a labelled call archive: one utterance per labelled turn.

    ``segments``: a table (CSV / Parquet / DataFrame) with ``recording_id, path, channel`` (index), ``start_s,
    end_s, label`` and optional ``channel_name, transcript`` -- the shape of the demo archive's ``segments.csv``.
    The utterance's ``speaker`` is the *channel of its call* (``<recording_id>/<channel name>``): that is the group
    labeling sees (one channel of one call), so per-speaker statistics in training come from the same kind of
    population as at labeling time -- a label-skewed channel, not a class-balanced speaker set. ``split``: the
    split of every row, or ``splits``: recording_id -> split.
    """
    df = segments if isinstance(segments, pd.DataFrame) else (
        pd.read_parquet(segments) if str(segments).endswith(".parquet")
        else pd.read_csv(segments, dtype={"recording_id": str, "path": str, "label": str, "transcript": str}))
    missing = [c for c in ("recording_id", "path", "channel", "start_s", "end_s", "label") if c not in df.columns]
    if missing:
        raise ValueError(f"call segments table lacks columns {missing}")
    name = df["channel_name"].astype(str) if "channel_name" in df.columns else df["channel"].astype(str)
    seg = df["segment"].astype(int) if "segment" in df.columns else df.groupby("recording_id").cumcount()
    out = pd.DataFrame({
        "utt_id": df["recording_id"].astype(str) + "/" + name + "/" + seg.astype(str),
        "path": df["path"].astype(str), "label": df["label"].astype(str),
        "transcript": df["transcript"] if "transcript" in df.columns else None,
        "speaker": df["recording_id"].astype(str) + "/" + name,
        "split": df["recording_id"].map(dict(splits)) if splits is not None else split,
        "channel": df["channel"].astype(int), "segment_start_s": df["start_s"].astype(float),
        "segment_end_s": df["end_s"].astype(float),
        "duration_s": (df["end_s"] - df["start_s"]).astype(float), "recording_id": df["recording_id"].astype(str),
    })
    if out["split"].isna().any():
        raise ValueError("splits does not name the split of every recording")
    return out
