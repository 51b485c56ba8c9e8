"""Synthetic emotional speech corpus and call archive (pipeline.demo.corpus, pipeline.demo.calls)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from pipeline import audio
from pipeline.demo.calls import make_call_archive
from pipeline.demo.corpus import MANIFEST_COLUMNS, CorpusConfig, make_emotion_corpus
from pipeline.demo.voices import LABELS

pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None for t in ("espeak-ng", "flite", "sox")), reason="needs espeak-ng, flite and sox"
)

N_SPK, N_SENT = 8, 3


def _cfg(**kw) -> CorpusConfig:
    return CorpusConfig(**{"n_speakers": N_SPK, "n_sentences": N_SENT, "seed": 0, **kw})


@pytest.fixture(scope="module")
def easy(tmp_path_factory) -> pd.DataFrame:
    return pd.read_csv(make_emotion_corpus(tmp_path_factory.mktemp("easy"), _cfg(mode="easy")))


@pytest.fixture(scope="module")
def hard(tmp_path_factory) -> pd.DataFrame:
    return pd.read_csv(make_emotion_corpus(tmp_path_factory.mktemp("hard"), _cfg(mode="hard")))


@pytest.fixture(scope="module")
def calls(tmp_path_factory) -> tuple[pd.DataFrame, pd.DataFrame]:
    m = make_call_archive(tmp_path_factory.mktemp("calls"), n_calls=3, minutes=0.75, seed=0)
    return pd.read_csv(m), pd.read_csv(m.parent / "segments.csv")


# --- small signal helpers, independent of the generator's own -------------------------------------------------


def _mono(path: str) -> tuple[np.ndarray, int]:
    a = audio.load(path)
    return a.samples.mean(axis=0), a.sample_rate


def _frames(x: np.ndarray, rate: int, win_s: float = 0.04, hop_s: float = 0.01) -> np.ndarray:
    n, h = int(rate * win_s), int(rate * hop_s)
    return np.lib.stride_tricks.sliding_window_view(x, n)[::h]


def _active_db(x: np.ndarray, rate: int) -> float:
    e = np.sqrt(np.mean(_frames(x, rate) ** 2, axis=1))
    act = e[e >= e.max() * 10 ** (-30 / 20)]
    return float(20 * np.log10(np.sqrt(np.mean(act**2))))


def _median_f0(x: np.ndarray, rate: int, fmin: float = 60, fmax: float = 450) -> float:
    fr = _frames(x, rate)
    e = np.sqrt(np.mean(fr**2, axis=1))
    fr = fr[e >= 0.1 * e.max()]
    fr = fr - fr.mean(axis=1, keepdims=True)
    spec = np.fft.rfft(fr, 2 * fr.shape[1], axis=1)
    ac = np.fft.irfft(np.abs(spec) ** 2, axis=1)[:, : fr.shape[1]]
    ac = ac / np.maximum(ac[:, :1], 1e-12)
    lo, hi = int(rate / fmax), int(rate / fmin)
    k = lo + np.argmax(ac[:, lo:hi], axis=1)
    voiced = ac[np.arange(len(k)), k] > 0.5
    return float(np.median(rate / k[voiced])) if voiced.any() else 0.0


# --- corpus -------------------------------------------------------------------------------------------------------


def test_manifest_contents(easy, tmp_path):
    assert list(easy.columns[: len(MANIFEST_COLUMNS)]) == MANIFEST_COLUMNS
    assert len(easy) == N_SPK * N_SENT * len(LABELS)
    assert sorted(easy.label.unique()) == sorted(LABELS)
    assert easy.speaker.nunique() == N_SPK
    assert set(easy.engine) == {"espeak", "flite"} and easy.voice.nunique() == N_SPK
    assert easy.utt_id.is_unique
    assert all(Path(p).is_absolute() and Path(p).exists() for p in easy.path)
    assert not any(lab in p for p in easy.path for lab in LABELS)  # no label leaks through file names
    # every speaker says every sentence once in every class: text carries no label
    per_class = easy.groupby("label").transcript.apply(lambda s: tuple(sorted(s)))
    assert per_class.nunique() == 1
    assert easy.groupby(["speaker", "sentence_id", "label"]).size().eq(1).all()
    assert easy.transcript.nunique() == N_SENT
    # speaker-disjoint, non-empty splits
    spk_split = easy.groupby("speaker").split.nunique()
    assert spk_split.eq(1).all()
    assert set(easy.split) == {"train", "val", "test"}
    # parquet twin
    pq = pd.read_parquet(Path(easy.path[0]).parents[2] / "manifest.parquet")
    assert list(pq.columns) == list(easy.columns)
    pd.testing.assert_frame_equal(pq[MANIFEST_COLUMNS], easy[MANIFEST_COLUMNS], check_dtype=False)


def test_files_decode_at_manifest_rate(easy, hard):
    for df in (easy, hard):
        for row in df.itertuples():
            a = audio.load(row.path)
            assert a.sample_rate == row.sample_rate == 16000
            assert a.num_channels == 1
            assert a.duration_s == pytest.approx(row.duration_s, abs=1e-3)
            assert 1.0 < a.duration_s < 8.0
            assert sf.info(row.path).subtype == "PCM_16"


def test_deterministic(easy, tmp_path):
    again = pd.read_csv(make_emotion_corpus(tmp_path / "again", _cfg(mode="easy", workers=1)))
    root_a, root_b = Path(easy.path[0]).parents[2], tmp_path / "again"
    rel = lambda df, root: df.path.map(lambda p: str(Path(p).relative_to(root)))  # noqa: E731
    pd.testing.assert_frame_equal(easy.drop(columns="path"), again.drop(columns="path"))
    assert rel(easy, root_a).tolist() == rel(again, root_b.resolve()).tolist()
    for a, b in zip(easy.path, again.path):
        assert Path(a).read_bytes() == Path(b).read_bytes()
    other = pd.read_csv(make_emotion_corpus(tmp_path / "other", _cfg(mode="easy", n_speakers=3, n_sentences=1, seed=1)))
    assert set(other.voice) != set(easy.voice[easy.speaker.isin(other.speaker)])


def test_levels_hard_normalised_easy_emotional(easy, hard):
    def class_db(df):
        df = df.assign(db=[_active_db(*_mono(p)) for p in df.path])
        return df, df.groupby("label").db.mean()

    hard_db, hard_mean = class_db(hard)
    assert hard_mean.max() - hard_mean.min() < 1.5, hard_mean  # level alone cannot classify
    easy_db, easy_mean = class_db(easy)
    assert easy_mean["angry"] > easy_mean["neutral"] > easy_mean["sad"]
    assert easy_mean["angry"] - easy_mean["sad"] > 6.0, easy_mean
    # paired per speaker and sentence, angry is louder than sad every time in easy mode
    piv = easy_db.pivot_table(index=["speaker", "sentence_id"], columns="label", values="db")
    assert (piv["angry"] > piv["sad"]).all()
    # hard mode is noisy (5-30 dB SNR), easy mode is clean: compare the leading padding
    assert hard.snr_db.between(5, 30).all() and easy.snr_db.isna().all()
    lead = lambda p: float(np.sqrt(np.mean(_mono(p)[0][:800] ** 2)))  # noqa: E731
    assert all(lead(p) == 0.0 for p in easy.path[:8])
    assert all(lead(p) > 1e-4 for p in hard.path[:8])
    assert hard.strength.between(0, 1).all() and hard.strength.std() > 0.05


def test_easy_mode_is_separable_by_prosody(easy):
    df = easy.assign(f0=[_median_f0(*_mono(p)) for p in easy.path])
    piv = df.pivot_table(index=["speaker", "sentence_id"], columns="label", values=["f0", "duration_s"])
    assert (piv[("f0", "happy")] > piv[("f0", "sad")]).mean() >= 0.9
    assert (piv[("f0", "happy")] > piv[("f0", "neutral")]).mean() >= 0.8
    assert (piv[("duration_s", "sad")] > piv[("duration_s", "angry")]).all()  # slower
    means = df.groupby("label").f0.mean()
    assert means["happy"] > means["neutral"] > means["sad"]


def test_telephone_and_other_formats(tmp_path):
    cfg = _cfg(n_speakers=4, n_sentences=1, telephone=True, mode="hard", alt_formats=("flac", "ogg", "mp3"))
    df = pd.read_csv(make_emotion_corpus(tmp_path / "tel", cfg))
    assert set(df.format) == {"wav", "flac", "ogg", "mp3"}
    assert (df.sample_rate == 8000).all()
    for row in df.itertuples():
        assert Path(row.path).suffix == f".{row.format}"
        a = audio.load(row.path)
        assert a.sample_rate == 8000 and a.num_channels == 1 and a.duration_s > 1.0
        if row.format == "wav":
            assert sf.info(row.path).subtype == "ULAW"
    # band-limited like a phone line: little energy above 3.5 kHz in a clean clip
    x, r = _mono(df.path[df.format == "wav"].iloc[0])
    p = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / r)
    assert p[f > 3500].sum() / p.sum() < 0.02
    # byte-identical reruns, OGG included (its random stream serial is rewritten)
    again = pd.read_csv(make_emotion_corpus(tmp_path / "tel2", cfg))
    for a, b in zip(df.path, again.path):
        assert Path(a).read_bytes() == Path(b).read_bytes(), a


def test_espeak_variants_change_the_voice(tmp_path):
    def f0(voice):
        wav = subprocess.run(
            ["espeak-ng", "-v", voice, "--stdout", "The next bus comes in ten minutes."],
            check=True,
            capture_output=True,
        ).stdout
        a = audio.decode(wav)
        return _median_f0(a.samples[0], a.sample_rate), wav

    f_f3, _ = f0("en-us+f3")
    f_m3, _ = f0("en-us+m3")
    assert f_f3 > 1.6 * f_m3
    # the pitfall this corpus avoids: en-gb+<variant> silently ignores the variant ("en+f3" works)
    _, gb = f0("en-gb")
    _, gb_f3 = f0("en-gb+f3")
    f_en_f3, _ = f0("en+f3")
    assert gb == gb_f3 and f_en_f3 > 1.6 * f_m3


# --- call archive -------------------------------------------------------------------------------------------------


def test_call_archive(calls):
    manifest, segs = calls
    assert len(manifest) == 3 and (manifest.channels == "agent,customer").all()
    assert list(segs.columns[:9]) == [
        "recording_id",
        "path",
        "channel",
        "channel_name",
        "segment",
        "start_s",
        "end_s",
        "label",
        "transcript",
    ]
    assert set(segs.label) == set(LABELS)
    assert (segs.channel_name == segs.channel.map({0: "agent", 1: "customer"})).all()
    assert segs.transcript.str.len().gt(0).all()
    for rec in manifest.itertuples():
        a = audio.load(rec.path)
        assert a.sample_rate == 8000 and a.num_channels == 2
        assert a.duration_s == pytest.approx(0.75 * 60, abs=0.01)
        assert sf.info(rec.path).subtype == "ULAW"
        g = segs[segs.recording_id == rec.recording_id]
        assert rec.agent_speaker != rec.customer_speaker
        assert g.groupby("channel").speaker.nunique().eq(1).all()
        assert ((g.start_s >= 0) & (g.end_s <= a.duration_s) & (g.start_s < g.end_s)).all()
        assert set(g.channel) == {0, 1}
        assert (g.channel.diff().dropna() != 0).all()  # turns alternate
        for c in (0, 1):
            gc = g[g.channel == c].sort_values("start_s")
            assert (gc.start_s.to_numpy()[1:] >= gc.end_s.to_numpy()[:-1]).all()  # no overlap per channel
            mask = np.zeros(a.num_frames, bool)
            for s, e in zip(gc.start_s, gc.end_s):
                mask[int(s * 8000) : int(e * 8000)] = True
            x = a.samples[c]
            inside = np.sqrt(np.mean(x[mask] ** 2))
            outside = np.sqrt(np.mean(x[~mask] ** 2))
            assert outside > 0  # line noise
            assert 20 * np.log10(inside / outside) > 20
    cust = segs[segs.channel_name == "customer"]
    assert cust.groupby("recording_id").label.nunique().gt(1).all()  # the customer's emotion changes
    assert cust.groupby("recording_id").label.first().eq("neutral").all()  # ... starting neutral
    assert set(segs[segs.channel_name == "agent"].label) <= {"neutral", "happy"}
    assert pd.read_parquet(Path(manifest.path[0]).parents[1] / "segments.parquet").shape == segs.shape


def test_call_archive_deterministic(calls, tmp_path):
    manifest, segs = calls
    m2 = make_call_archive(tmp_path / "c2", n_calls=1, minutes=0.75, seed=0)
    assert Path(pd.read_csv(m2).path[0]).read_bytes() == Path(manifest.path[0]).read_bytes()
    s2 = pd.read_csv(m2.parent / "segments.csv")
    pd.testing.assert_frame_equal(
        s2.drop(columns="path"), segs[segs.recording_id == "call_000"].drop(columns="path").reset_index(drop=True)
    )
