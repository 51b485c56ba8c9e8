"""IEMOCAP's on-disk layout -> the project's manifest (a recipe, after lhotse's).

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

Missing audio: see :mod:`pipeline.recipes.common`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from pipeline.recipes.common import DirCache, Missing, apply_missing, clean_text, find_root, probe_durations

log = logging.getLogger("pipeline.recipes")

IEMOCAP_LABELS: tuple[str, ...] = ("neutral", "happy", "angry", "sad")
IEMOCAP_LABEL_MAP: dict[str, str] = {"neu": "neutral", "hap": "happy", "exc": "happy", "ang": "angry", "sad": "sad"}


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
        out.append(
            {
                "utt_id": utt,
                "start_s": float(start),
                "end_s": float(end),
                "code": code.strip().lower(),
                "valence": v,
                "arousal": a,
                "dominance": d,
            }
        )
    return out


def parse_transcription(path: str | os.PathLike) -> dict[str, str]:
    """utt_id → text for one ``transcriptions/<dialog>.txt`` (lines ``<utt> [start-end]: text``)."""
    out: dict[str, str] = {}
    for line in _read_text(Path(path)).splitlines():
        m = _TRANS_LINE.match(line.strip())
        if m:
            text = clean_text(m.group(2))
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


def read_iemocap(
    root: str | os.PathLike,
    *,
    merge_excited: bool = True,
    sessions=(1, 2, 3, 4, 5),
    missing: Missing = "drop",
    probe_audio: bool = False,
) -> pd.DataFrame:
    """All 4-class IEMOCAP utterances of ``sessions`` (``split`` empty, ``fold`` absent).

    ``root`` is ``IEMOCAP_full_release`` or its parent. ``probe_audio`` reads every WAV header for the
    exact duration and sample rate (otherwise duration comes from the annotation times, sample rate absent).
    """
    root = find_root(root, "IEMOCAP_full_release", "Session1")
    label_map = dict(IEMOCAP_LABEL_MAP)
    if not merge_excited:
        label_map.pop("exc")
    dirs = DirCache()
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
                rows.append(
                    {
                        "utt_id": utt,
                        "path": path,
                        "label": label,
                        "transcript": transcripts.get(utt),
                        "speaker": speaker,
                        "split": None,
                        "session": n,
                        "gender": gender,
                        "dialog": dialog,
                        "start_s": e["start_s"],
                        "end_s": e["end_s"],
                        "duration_s": round(e["end_s"] - e["start_s"], 4),
                        "raw_label": e["code"],
                        "valence": e["valence"],
                        "arousal": e["arousal"],
                        "dominance": e["dominance"],
                        "audio_exists": dirs.exists(path),
                    }
                )
    if n_found_sessions == 0:
        raise FileNotFoundError(f"no IEMOCAP sessions under {root} (expected Session1..5/dialog/EmoEvaluation)")
    cols = [
        "utt_id",
        "path",
        "label",
        "transcript",
        "speaker",
        "split",
        "session",
        "gender",
        "dialog",
        "start_s",
        "end_s",
        "duration_s",
        "raw_label",
        "valence",
        "arousal",
        "dominance",
        "audio_exists",
    ]
    df = pd.DataFrame(rows, columns=cols)
    df["session"] = df["session"].astype("int64")
    df["audio_exists"] = df["audio_exists"].astype(bool)
    df["split"] = df["split"].astype("object")
    df = apply_missing(df, missing, "IEMOCAP")
    if probe_audio:
        df = probe_durations(df)
    return df


def iemocap_split(
    df: pd.DataFrame,
    fold: int,
    *,
    speaker_independent: bool = False,
    val_session: int | None = None,
    test_gender: str = "F",
) -> pd.DataFrame:
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


def iemocap_manifest(
    root: str | os.PathLike,
    fold: int | None = None,
    *,
    speaker_independent: bool = False,
    val_session: int | None = None,
    test_gender: str = "F",
    merge_excited: bool = True,
    missing: Missing = "drop",
    probe_audio: bool = False,
) -> pd.DataFrame:
    """IEMOCAP 4-class manifest; ``fold=None``: all utterances with ``split`` empty (assign later with
    :func:`iemocap_split`); ``fold=k`` (1-5): leave-one-session-out fold k (see module docstring)."""
    df = read_iemocap(root, merge_excited=merge_excited, missing=missing, probe_audio=probe_audio)
    if fold is None:
        return df
    return iemocap_split(
        df, fold, speaker_independent=speaker_independent, val_session=val_session, test_gender=test_gender
    )


def iemocap_folds(root: str | os.PathLike, **kw) -> Iterator[tuple[int, pd.DataFrame]]:
    """(k, manifest) for k = 1..5, reading the corpus once. ``kw`` as in :func:`iemocap_manifest`."""
    read_kw = {k: kw.pop(k) for k in ("merge_excited", "missing", "probe_audio") if k in kw}
    df = read_iemocap(root, **read_kw)
    for k in range(1, 6):
        yield k, iemocap_split(df, k, **kw)
