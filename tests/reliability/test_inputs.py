"""Hostile inputs, no model involved: every bad file or manifest row becomes one clear error row, good ones decode.

The labeling job runs the same ``discover`` + ``prepare_recording`` inside Ray (``tests/reliability/test_job.py`` runs
this matrix end to end through the real Ray + vLLM pipeline).
"""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from pipeline import audio
from pipeline.labeling.prepare import PrepareConfig, prepare_batch, prepare_recording
from pipeline.labeling.sources import ManifestError, discover
from tests.reliability.hostile_inputs import (  # noqa: F401
    MATRIX,
    SR,
    build_matrix,
    make_good,
    make_hours_sparse,
    make_six_channels,
    make_truncated_data,
    row,
    speechlike,
    voiced,
    wav_header,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", list(MATRIX))
def test_bad_input_matrix(tmp_path, name):
    path, expect = build_matrix(tmp_path)[name]
    result = {}
    worker = threading.Thread(target=lambda: result.update(prepare_recording(row(path), PrepareConfig())), daemon=True)
    t0 = time.perf_counter()
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), f"{name}: prepare hung"
    took = time.perf_counter() - t0
    if expect is None:
        assert result["error"] is None, result["error"]
        assert len(result["seg_start_s"]) >= 2 and result["audio"].size > 0
        assert np.isfinite(result["audio"]).all()
    else:
        assert result["error"] and expect in result["error"], result["error"]
        assert len(result["seg_start_s"]) == 0 and result["audio"].size == 0
    if name.startswith(("five_hours", "header_claims", "fifo")):
        assert took < 2.0, f"{name} took {took:.1f} s: it was read, not refused"


def test_good_files_decode_the_same_whatever_the_container(tmp_path):
    """FLAC named .wav and the WAV original give the same samples; 192 kHz / 4 kHz resample to the encoder rate."""
    m = build_matrix(tmp_path)
    a = audio.load(str(m["good"][0]))
    b = audio.load(str(m["flac_named_wav"][0]))
    assert b.sample_rate == a.sample_rate and np.abs(a.samples - b.samples).max() < 1e-3
    for name, rate in (("rate_192k", 192000), ("rate_4k", 4000)):
        out = prepare_recording(row(m[name][0]), PrepareConfig())
        assert out["source_sample_rate"] == rate and abs(out["duration_s"] - 4.0) < 1e-6
        assert abs(out["seg_offsets"][-1] - 16000 * np.sum(out["seg_end_s"] - out["seg_start_s"])) < 16 * 4


def test_multi_hour_file_is_refused_from_the_header(tmp_path):
    """A 5 h file (576 MB) is refused without being read: peak memory of a fresh process stays near its baseline."""
    path = make_hours_sparse(tmp_path)
    code = (
        "import resource, sys; sys.path.insert(0, sys.argv[2])\n"
        "from pipeline.labeling.prepare import PrepareConfig, prepare_recording\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "out = prepare_recording({'recording_id': 'x', 'path': sys.argv[1]}, PrepareConfig())\n"
        "print(out['error']); print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(path), str(REPO)], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    err, grew_mb = res.stdout.strip().splitlines()
    assert "over the limit" in err
    assert int(grew_mb) < 50, f"peak RSS grew by {grew_mb} MB while refusing a 576 MB file"


def test_stream_decode_stops_at_the_limit(tmp_path):
    """A WAV whose header does not say its length (streaming placeholder) is decoded only up to the limit."""
    p = tmp_path / "stream.wav"
    samples = (speechlike(10) * 32767).astype("<i2")
    p.write_bytes(wav_header(0, data_size=0xFFFFFFFF) + samples.tobytes())
    assert abs(audio.load(str(p)).duration_s - 10) < 1e-6  # the length is found by decoding
    out = prepare_recording(row(p), PrepareConfig(max_duration_s=3))
    assert "recording is 10 s, over the limit of 3 s" in out["error"]  # libsndfile measured it: header check
    # a header that understates the length (possible for compressed formats): decoding stops at the limit
    small = audio.Header(sample_rate=SR, channels=1, frames=SR, format="WAV", subtype="PCM_16")
    with open(p, "rb") as f:
        with pytest.raises(audio.AudioError, match="longer than the limit of 3 s"):
            audio.decode_file(f, max_duration_s=3, target_rate=16000, header=small)
    # the decoded-size cap: channels x duration at the encoder rate
    out = prepare_recording(row(make_six_channels(tmp_path)), PrepareConfig(max_channels=8, max_decoded_mb=0.1))
    assert "would decode to" in out["error"] and "over the limit of 0 MB" in out["error"]


def test_truncated_data_can_be_labelled_when_allowed(tmp_path):
    out = prepare_recording(row(make_truncated_data(tmp_path)), PrepareConfig(allow_truncated=True))
    assert out["error"] in (None, "no speech detected") and abs(out["duration_s"] - 0.5) < 1e-6


def test_file_vanishing_after_discovery(tmp_path):
    p = make_good(tmp_path)
    rec = discover([str(tmp_path)])[0]
    p.unlink()
    out = prepare_recording(rec.to_row(), PrepareConfig())
    assert "file not found (missing or vanished)" in out["error"]


def test_non_utf8_file_names_are_labelled(tmp_path):
    """A name with bytes that are not UTF-8 (Linux allows them) is found, opened by its exact bytes and shown
    escaped; it flows through Ray's Arrow batches (which need valid UTF-8) without error."""
    good = make_good(tmp_path)
    raw = os.fsencode(str(tmp_path)) + b"/caf\xe9-\xff.wav"
    with open(raw, "wb") as f:
        f.write(good.read_bytes())
    good.unlink()
    recs = discover([str(tmp_path)])
    assert len(recs) == 1 and recs[0].error is None
    r = recs[0]
    assert r.recording_id == "caf\\xe9-\\xff" and r.path.endswith("/caf\\xe9-\\xff.wav") and r.raw_path == raw
    r.path.encode("utf-8")  # valid text
    table = pa.Table.from_pylist([r.to_row()])  # what ray.data.from_items builds
    batch = {k: np.array(table.column(k).to_pylist(), dtype=object) for k in table.column_names}
    out = prepare_batch(batch, PrepareConfig())
    assert out["error"][0] is None and len(out["seg_start_s"][0]) >= 2
    # the same name listed in a manifest (as the shell would write it: raw bytes in the CSV)
    man = tmp_path / "m.csv"
    man.write_bytes(b"path,recording_id\n" + raw + b",x\n")
    (rec,) = discover([str(man)])
    assert rec.raw_path == raw and rec.error is None
    assert prepare_recording(rec.to_row(), PrepareConfig())["error"] is None


def test_duplicates(tmp_path):
    p = make_good(tmp_path)
    man = tmp_path / "m.csv"
    man.write_text(f"path,recording_id\n{p},a\n{p},a\n{p},b\n{p},a\ngood.wav,a#dup1\n")
    recs = discover([str(man), str(p)])
    ids = [r.recording_id for r in recs]
    assert len(ids) == len(set(ids)) == 6, ids  # every row kept, every id unique
    assert [r.error is None for r in recs] == [True, False, False, False, False, False]
    assert "duplicate recording_id" in recs[1].error and recs[1].recording_id == "a#dup2"  # a#dup1 is taken
    assert "duplicate input: same file and options as recording_id 'a'" in recs[2].error
    assert "duplicate recording_id" in recs[3].error and recs[3].recording_id == "a#dup3"
    assert "duplicate input" in recs[5].error  # the file itself, given as an input next to the manifest
    # the same file with other options (e.g. another segment list) is a legitimate second recording
    man.write_text(f'path,recording_id,segments\n{p},a,\n{p},b,"[[0, 1]]"\n')
    assert [r.error for r in discover([str(man)])] == [None, None]


def test_manifest_types_and_bad_rows(tmp_path):
    p = make_good(tmp_path)
    # CSV: every cell is text (no type inference), short rows are padded, long rows are errors
    csv = tmp_path / "m.csv"
    csv.write_bytes(
        (f"\ufeffpath,recording_id,channels,transcript\n{p},007,,1e3\n{p},008,a;b\n{p},009,,x,EXTRA\n,010,,\n").encode()
    )
    recs = discover([str(csv)])
    assert [r.recording_id for r in recs] == ["007", "008", "009", "010"]
    assert recs[0].error is None and recs[0].transcript == "1e3"
    assert recs[1].channel_names == ["a;b"]
    assert "5 cells for 4 columns" in recs[2].error
    assert "missing or non-text 'path'" in recs[3].error
    # JSONL: one bad line is one bad row, mixed types per row are fine
    jl = tmp_path / "m.jsonl"
    jl.write_text(
        "\n".join(
            [
                json.dumps({"path": str(p), "recording_id": 1, "channels": ["left"]}),
                "{not json",
                json.dumps({"path": 5, "recording_id": "two"}),
                json.dumps(["not", "an", "object"]),
                json.dumps({"path": str(p), "recording_id": "three", "segments": {"start": 0}}),
                json.dumps({"path": str(p), "recording_id": "four", "segments": [[0, 1], [2, "x"]]}),
                json.dumps({"path": str(p), "recording_id": "five", "transcript": ["a"]}),
                json.dumps({"path": str(p), "recording_id": "six", "segments": [[0, True]]}),
                json.dumps("just a string"),
            ]
        )
        + "\n"
    )
    recs = discover([str(jl)])
    assert len(recs) == 9 and len({r.recording_id for r in recs}) == 9
    assert "line 9: not a JSON object" in recs[8].error
    assert recs[0].recording_id == "1" and recs[0].error is None and recs[0].channel_names == ["left"]
    assert "invalid JSON" in recs[1].error
    assert "missing or non-text 'path' (5)" in recs[2].error and recs[2].recording_id == "two"
    assert "not a JSON object" in recs[3].error
    assert "must be a JSON list" in recs[4].error
    assert "needs numeric start and end" in recs[5].error
    assert "'transcript' must be text" in recs[6].error
    assert "needs numeric start and end" in recs[7].error
    # Parquet with typed columns
    pqf = tmp_path / "m.parquet"
    pq.write_table(pa.table({"path": [str(p), None], "recording_id": [1, 2], "channels": [["a"], None]}), pqf)
    recs = discover([str(pqf)])
    assert [r.recording_id for r in recs] == ["1", "2"] and recs[0].error is None and recs[1].error
    # whole-manifest problems stop the job before any work, with a clear message
    (tmp_path / "nopath.csv").write_text("file,recording_id\nx.wav,1\n")
    with pytest.raises(ManifestError, match="has no 'path' column"):
        discover([str(tmp_path / "nopath.csv")])
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ManifestError, match="is empty"):
        discover([str(tmp_path / "empty.csv")])
    with pytest.raises(ManifestError, match="not found"):
        discover([str(tmp_path / "nope.csv")])
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ManifestError, match="cannot read manifest"):
        discover([str(tmp_path / "broken.parquet")])


def test_every_row_comes_out_of_prepare_batch(tmp_path):
    """rows in = rows out for the whole matrix in one batch (as Ray hands it over), in order."""
    m = build_matrix(tmp_path)
    rows = [row(p, recording_id=name) for name, (p, _) in m.items()]
    batch = {k: np.array([r[k] for r in rows], dtype=object) for k in rows[0]}
    out = prepare_batch(batch, PrepareConfig())
    assert list(out["recording_id"]) == list(m)
    for name, err in zip(out["recording_id"], out["error"]):
        assert (err is None) == (m[name][1] is None), (name, err)


def test_folder_walk_follows_symlinked_folders_once(tmp_path):
    d = tmp_path / "corpus"
    (d / "a").mkdir(parents=True)
    sf.write(d / "a" / "x.wav", voiced(1), SR)
    (d / "link").symlink_to(d / "a")  # the same folder twice
    (d / "a" / "loop").symlink_to(d)  # a loop
    recs = discover([str(d)])
    assert [(r.recording_id, r.error) for r in recs] == [("a/x", None)]


def test_sink_retried_writes_replace_and_damage_is_set_aside(tmp_path):
    """A retried write of the same batch (any row order) replaces its file; a damaged part file is moved aside
    (its recordings are redone); temporary files of an interrupted run are removed."""
    from pipeline.labeling.sink import clean_temporary, recording_counts, segments_dir, write_parts

    wav = make_good(tmp_path)
    recs = []
    for rid in ("a", "b", "c"):
        r = prepare_recording(row(wav, recording_id=rid), PrepareConfig())
        n = len(r["seg_start_s"])
        r.update(labels=["x"] * n, confidence=np.ones(n, np.float32), probabilities=np.ones((n, 1), np.float32))
        recs.append(r)
    out = str(tmp_path / "out")
    batch = lambda rs: {k: [r[k] for r in rs] for k in rs[0]}  # noqa: E731
    write_parts(batch(recs[:2]), out, ["x"], "m")
    write_parts(batch(recs[1::-1]), out, ["x"], "m")  # the retry, rows in another order
    write_parts(batch(recs[2:]), out, ["x"], "m")
    seg = Path(segments_dir(out))
    parts = sorted(seg.glob("part-*.parquet"))
    assert len(parts) == 2 and recording_counts(out) == {"a": 1, "b": 1, "c": 1}
    (seg / ".tmp-0123-part-x.parquet").write_bytes(b"PAR1 half")
    assert clean_temporary(out) == 1 and not list(seg.glob(".tmp-*"))
    damaged = next(p for p in parts if "c" in pq.read_table(p).column("recording_id").to_pylist())
    damaged.write_bytes(b"garbage")
    assert recording_counts(out) == {"a": 1, "b": 1}
    assert (seg / f".corrupt-{damaged.name}").exists() and not damaged.exists()
