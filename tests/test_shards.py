"""Tar shards (pipeline/shards.py) through the labeling readers and the one decode path: every sample is a record,
bad members and cut-off shards are error records, members decode to exactly the samples of the same file."""

import io
import json
import tarfile

import numpy as np
import pytest
import soundfile as sf

from pipeline.decode import DecodeLimits, MemberSpan, load_recording
from pipeline.labeling.prepare import PrepareConfig, prepare_recording
from pipeline.labeling.sources import discover
from pipeline.shards import index_shard, write_shard


def _wav(seconds: float, rate: int = 8000, channels: int = 1, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    voice = 0.3 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 1.5 * t) > 0)
    x = np.stack([voice + 0.01 * rng.standard_normal(t.size) for _ in range(channels)], axis=1)
    b = io.BytesIO()
    sf.write(b, x.astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return b.getvalue()


@pytest.fixture()
def shards(tmp_path):
    d = tmp_path / "shards"
    d.mkdir()
    call = _wav(3.0, channels=2, seed=1)
    meta = {"transcript": "thank you", "channels": ["agent", "customer"], "label": "happy", "speaker": "s1"}
    write_shard(
        str(d / "a.tar"),
        [
            ("call1", {"wav": call, "json": json.dumps(meta).encode()}),
            ("broken", {"flac": b"not audio" * 50}),
            ("orphan", {"json": b'{"transcript": "no audio here"}'}),
            ("badjson", {"wav": _wav(1.0), "json": b"{nope"}),
            ("dir/clip", {"wav": _wav(2.0, seed=2), "txt": b"hello there"}),
        ],
    )
    whole = (d / "a.tar").read_bytes()
    (d / "cut.tar").write_bytes(whole[: len(whole) - 12000])  # the last member loses most of its bytes
    first = 512 + ((len(call) + 511) // 512) * 512 + 1024  # call1.wav and call1.json with their headers
    (d / "header.tar").write_bytes(whole[: first + 300])  # cut inside the third member's header
    return d, call


def test_every_sample_is_a_record_with_clear_errors(shards):
    d, _ = shards
    recs = {r.recording_id: r for r in discover([str(d)])}
    assert set(recs) == {
        *(f"a/{k}" for k in ("call1", "broken", "orphan", "badjson", "dir/clip")),
        *(f"cut/{k}" for k in ("call1", "broken", "orphan", "badjson", "dir/clip")),
        "header/call1",
        f"header/@{512 + ((len(shards[1]) + 511) // 512) * 512 + 1024}",
    }
    good = recs["a/call1"]
    assert good.error is None and good.transcript == "thank you" and good.channel_names == ["agent", "customer"]
    assert good.extra == {"label": "happy", "speaker": "s1"} and json.loads(good.member)["name"] == "call1.wav"
    assert recs["a/dir/clip"].transcript == "hello there"  # key.txt
    assert recs["a/orphan"].error == "sample has no audio member"
    assert "not valid JSON" in recs["a/badjson"].error
    assert recs["a/broken"].error is None  # found at decode time, below
    assert "truncated tar shard" in recs["cut/dir/clip"].error and "holds" in recs["cut/dir/clip"].error
    assert recs["cut/call1"].error is None
    tail = [r for k, r in recs.items() if k.startswith("header/@")][0]
    assert "unreadable after byte" in tail.error and recs["header/call1"].error is None
    out = {k: prepare_recording(r.to_row(), PrepareConfig()) for k, r in recs.items()}
    assert out["a/call1"]["error"] is None and out["a/call1"]["channel_names"] == "agent,customer"
    assert len(out["a/call1"]["seg_start_s"]) >= 2  # speech on both channels
    assert "not a readable audio file" in out["a/broken"]["error"]
    assert out["a/dir/clip"]["error"] is None
    assert all(out[k]["error"] for k in ("a/orphan", "a/badjson", "cut/dir/clip", tail.recording_id))


def test_member_decodes_to_the_same_samples_as_the_file(shards, tmp_path):
    d, call = shards
    (tmp_path / "call1.wav").write_bytes(call)
    span = MemberSpan.from_json(next(r for r in discover([str(d / "a.tar")]) if r.recording_id == "a/call1").member)
    lim = DecodeLimits(sample_rate=16000)
    _, from_member = load_recording(str(d / "a.tar"), lim, member=span)
    _, from_file = load_recording(str(tmp_path / "call1.wav"), lim)
    assert from_member.samples.shape == (2, 48000)
    np.testing.assert_array_equal(from_member.samples, from_file.samples)
    with pytest.raises(Exception, match="over the limit"):  # the size limit applies to the member
        load_recording(str(d / "a.tar"), DecodeLimits(max_bytes=len(call) - 1), member=span)


def test_shard_level_problems(tmp_path):
    (tmp_path / "text.tar").write_text("not a tar at all, just text " * 40)
    (tmp_path / "empty.tar").write_bytes(b"")
    assert "not a readable tar shard" in index_shard(str(tmp_path / "text.tar"))[0].error
    assert index_shard(str(tmp_path / "empty.tar"))[0].error
    assert "not found" in index_shard(str(tmp_path / "gone.tar"))[0].error
    with tarfile.open(tmp_path / "none.tar", "w"):
        pass
    assert index_shard(str(tmp_path / "none.tar"))[0].error == "tar shard holds no samples"
    recs = discover([str(tmp_path / "*.tar")])
    assert len(recs) == 3 and all(r.error for r in recs)  # one record per unusable shard, none lost
