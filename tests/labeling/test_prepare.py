"""Decode, segment and source discovery on real audio bytes (no model involved)."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from pipeline import audio
from pipeline.labeling.prepare import PrepareConfig, prepare_recording, split_segments
from pipeline.labeling.segment import overlap_scores
from pipeline.labeling.sink import (
    SEGMENT_SCHEMA,
    completed_recordings,
    segment_rows,
    segments_dir,
    summarize,
    write_atomic,
)
from pipeline.labeling.sources import ManifestError, discover

SR = 8000


def voiced(sec: float, f0: float = 180.0) -> np.ndarray:
    t = np.arange(int(sec * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * f0 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def quiet(sec: float, rng=np.random.default_rng(0)) -> np.ndarray:
    return (0.001 * rng.standard_normal(int(sec * SR))).astype(np.float32)


@pytest.fixture()
def call_file(tmp_path):
    """Stereo µ-law call: ch0 speaks 1-3 s and 4.5-7.5 s, ch1 speaks 3.2-4.4 s."""
    a = np.concatenate([quiet(1), voiced(2), quiet(1.5), voiced(3), quiet(1)])
    b = np.concatenate([quiet(3.2), voiced(1.2, 120), quiet(4.1)])
    p = tmp_path / "call.wav"
    sf.write(p, np.stack([a, b], 1), SR, subtype="ULAW")
    return p


def row_for(path, **kw):
    return {
        "recording_id": "r",
        "path": str(path),
        "transcript": None,
        "channel_names": None,
        "given_segments": None,
        "error": None,
        **kw,
    }


def test_vad_finds_turns_per_channel(call_file):
    out = prepare_recording(row_for(call_file, channel_names="agent,customer"), PrepareConfig())
    assert out["error"] is None and out["channel_names"] == "agent,customer"
    segs = list(zip(out["seg_channel"].tolist(), out["seg_start_s"], out["seg_end_s"]))
    ch0 = [(s, e) for c, s, e in segs if c == 0]
    ch1 = [(s, e) for c, s, e in segs if c == 1]
    assert overlap_scores(ch0, [(1, 3), (4.5, 7.5)])["f1"] > 0.85
    assert overlap_scores(ch1, [(3.2, 4.4)])["f1"] > 0.8
    # waveforms are at the encoder rate and match the segment times
    waves = split_segments(out)
    for (_, s, e), w in zip(segs, waves):
        assert abs(len(w) / 16000 - (e - s)) < 1e-3


def test_given_segments_and_long_split(call_file):
    given = json.dumps([{"start": 1.0, "end": 3.0, "channel": "agent", "transcript": "hi"}, [4.5, 7.5]])
    cfg = PrepareConfig()
    cfg.vad.max_segment_s = 2.0
    out = prepare_recording(row_for(call_file, channel_names="agent,customer", given_segments=given), cfg)
    assert out["error"] is None
    assert out["seg_channel"].tolist() == [0, -1, -1]  # no channel named: the mix
    assert np.allclose(out["seg_end_s"] - out["seg_start_s"], [2.0, 1.5, 1.5])
    assert json.loads(out["seg_transcript"]) == ["hi", None, None]


@pytest.mark.parametrize(
    "make,expect",
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_bytes(b"this is not audio at all"), "not a readable audio file"),
        (lambda p: sf.write(p, np.zeros(SR * 3, np.float32), SR), "no speech detected"),
        (lambda p: sf.write(p, np.full(SR, np.nan, np.float32), SR, subtype="FLOAT"), "NaN"),
        (lambda p: sf.write(p, np.zeros((SR, 6), np.float32) + voiced(1)[:, None], SR), "6 channels"),
    ],
)
def test_bad_inputs_become_error_rows(tmp_path, make, expect):
    p = tmp_path / "x.wav"
    make(p)
    out = prepare_recording(row_for(p), PrepareConfig())
    assert expect in out["error"]
    assert len(out["seg_start_s"]) == 0 and out["audio"].size == 0


def test_truncated_and_too_long(tmp_path):
    p = tmp_path / "t.wav"
    sf.write(p, voiced(2), SR, subtype="PCM_16")
    p.write_bytes(p.read_bytes()[:30])
    assert prepare_recording(row_for(p), PrepareConfig())["error"]
    q = tmp_path / "long.wav"
    sf.write(q, voiced(5), SR)
    out = prepare_recording(row_for(q), PrepareConfig(max_duration_s=2))
    assert "over the limit" in out["error"]
    assert "not found" in prepare_recording(row_for(tmp_path / "gone.wav"), PrepareConfig())["error"]


@pytest.mark.parametrize(
    "fmt,subtype",
    [("FLAC", None), ("OGG", "VORBIS"), ("OGG", "OPUS"), ("MP3", None), ("WAV", "ALAW"), ("WAV", "GSM610")],
)
def test_formats_decode(tmp_path, fmt, subtype):
    p = tmp_path / f"a.{fmt.lower()}"
    sr = 48000 if subtype == "OPUS" else SR
    t = np.arange(sr) / sr
    sf.write(p, (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), sr, format=fmt, subtype=subtype)
    a = audio.load(str(p))
    assert a.sample_rate == sr and abs(a.duration_s - 1.0) < 0.1 and a.samples.std() > 0.05


def test_discover_manifest_and_folder(tmp_path, call_file):
    (tmp_path / "sub").mkdir()
    sf.write(tmp_path / "sub" / "b.flac", voiced(1), SR)
    recs = discover([str(tmp_path)])
    assert sorted(r.recording_id for r in recs) == ["call", "sub/b"]
    man = tmp_path / "m.csv"
    man.write_text('path,recording_id,channels\ncall.wav,c1,"agent,customer"\n,c2,\ncall.wav,c1,\n')
    recs = discover([str(man)])
    assert recs[0].path == str(call_file) and recs[0].channel_names == ["agent", "customer"]
    assert "missing" in recs[1].error
    assert "duplicate" in recs[2].error and recs[2].recording_id != "c1"
    (tmp_path / "bad.csv").write_text("file\nx.wav\n")
    with pytest.raises(ManifestError, match="no 'path' column"):
        discover([str(tmp_path / "bad.csv")])


def test_sink_atomic_resume_and_summary(tmp_path, call_file):
    out = str(tmp_path / "out")
    labels = ["neutral", "angry"]
    rec = prepare_recording(row_for(call_file, channel_names="agent,customer"), PrepareConfig())
    n = len(rec["seg_start_s"])
    rec.update(
        labels=["angry"] * (n - 1) + ["neutral"], confidence=np.full(n, 0.9), probabilities=np.tile([0.1, 0.9], (n, 1))
    )
    bad = prepare_recording(dict(row_for(tmp_path / "nope.wav"), recording_id="bad"), PrepareConfig())
    rows = segment_rows(rec, labels, "m") + segment_rows(bad, labels, "m")
    write_atomic(pa.Table.from_pylist(rows, schema=SEGMENT_SCHEMA), segments_dir(out), b"x")
    assert completed_recordings(out) == {"r", "bad"}
    t = pq.read_table(segments_dir(out))
    assert t.num_rows == n + 1
    s = summarize(out).to_pylist()
    # one summary row per channel of "r" (in channel order), each with that channel's own dominant label
    per_ch = {}
    for row in rows[:n]:
        d = per_ch.setdefault(row["channel"], {})
        d[row["label"]] = d.get(row["label"], 0.0) + row["end_s"] - row["start_s"]
    r_rows = [x for x in s if x["recording_id"] == "r"]
    assert [x["channel"] for x in r_rows] == [c for c in ("agent", "customer") if c in per_ch]
    assert sum(x["num_segments"] for x in r_rows) == n
    assert {x["channel"]: x["dominant_label"] for x in r_rows} == {c: max(d, key=d.get) for c, d in per_ch.items()}
    by = {r["recording_id"]: r for r in s}
    assert by["bad"]["channel"] is None and by["bad"]["error_count"] == 1 and "not found" in by["bad"]["error"]
