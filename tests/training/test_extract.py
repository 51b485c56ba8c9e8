"""Feature cache format, statistics and normalisation (no Ray, no models: fast)."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from emoq_model import features as F


def _items(rng, speakers=("a", "b"), n=3, L=2, D=5):
    out = []
    for s_i, s in enumerate(speakers):
        for i in range(n):
            t = int(rng.integers(3, 9))
            out.append(
                {
                    "utt_id": f"{s}{i}",
                    "speaker": s,
                    "label": "x",
                    "frames": (rng.normal(size=(L, t, D)) * (1 + s_i) + 3 * s_i).astype(np.float32),
                }
            )
    return out


def test_encode_decode_roundtrip_and_clipping():
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4) / 7
    data, shape = F.encode_frames(x, "float16")
    assert shape == (2, 3, 4) and len(data) == x.size * 2
    np.testing.assert_allclose(F.decode_frames(data, shape), x, rtol=1e-3, atol=1e-3)
    data, shape = F.encode_frames(np.full((3, 4), 1e6, np.float32), "float16")  # [T, D] -> [1, T, D], clipped
    y = F.decode_frames(data, shape)
    assert shape == (1, 3, 4) and np.isfinite(y).all() and y.max() == np.float16(65000)
    data, shape = F.encode_frames(x, "float32")
    np.testing.assert_array_equal(F.decode_frames(data, shape, "float32"), x)
    assert F.model_frames(x[:1], stacked=False).shape == (3, 4)
    with pytest.raises(ValueError):
        F.model_frames(x, stacked=False)


def test_stats_match_numpy_and_merge():
    rng = np.random.default_rng(0)
    items = _items(rng)
    stats = F.compute_group_stats(items, "speaker")
    for s in ("a", "b"):
        allf = np.concatenate([it["frames"] for it in items if it["speaker"] == s], axis=1)
        np.testing.assert_allclose(stats[s].mean, allf.mean(1), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(stats[s].std, allf.std(1), rtol=1e-5, atol=1e-5)
        assert stats[s].n_frames == allf.shape[1]
    pooled = F.pooled_stats(stats.values())
    allf = np.concatenate([it["frames"] for it in items], axis=1)
    np.testing.assert_allclose(pooled.mean, allf.mean(1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pooled.std, allf.std(1), rtol=1e-4, atol=1e-5)


def test_speaker_norm_and_shrinkage(tmp_path):
    rng = np.random.default_rng(1)
    items = _items(rng)
    norm = F.FeatureNorm("speaker", min_frames=1)
    out = norm.apply(items)
    for s in ("a", "b"):
        allf = np.concatenate([it["frames"] for it in out if it["speaker"] == s], axis=1)
        np.testing.assert_allclose(allf.mean(1), 0, atol=1e-4)
        np.testing.assert_allclose(allf.std(1), 1, atol=1e-3)
    # utterance mode: each item zero-mean on its own
    for it in F.FeatureNorm("utterance", min_frames=1).apply(items):
        np.testing.assert_allclose(it["frames"].mean(1), 0, atol=1e-4)
    # a tiny group is pulled towards the global stats; save/load keeps everything
    g = F.GroupStats(1000, np.zeros((2, 5), np.float32), np.ones((2, 5), np.float32))
    norm = F.FeatureNorm("speaker", min_frames=10_000, global_stats=g)
    small = F.GroupStats(100, np.full((2, 5), 10, np.float32), np.full((2, 5), 0.1, np.float32))
    mean, std = norm.effective(small)
    np.testing.assert_allclose(mean, 0.1, rtol=1e-5)  # w = 100 / 10000
    norm.save(tmp_path)
    back = F.FeatureNorm.load(tmp_path)
    assert back.mode == "speaker" and back.min_frames == 10_000
    np.testing.assert_array_equal(back.global_stats.std, g.std)
    assert F.FeatureNorm.load(tmp_path / "nothing").mode == "none"
    np.testing.assert_allclose(back.effective(small)[0], mean)
    with pytest.raises(ValueError):
        F.FeatureNorm("per-call")


def test_norm_on_torch_tensors_equals_numpy():
    """The labeling stage normalises encoder frames where they are (torch, possibly on a GPU): same statistics and
    outputs as the numpy path, tensors stay tensors."""
    import torch

    rng = np.random.default_rng(2)
    items = _items(rng, n=4)
    as_torch = [dict(it, frames=torch.from_numpy(it["frames"])) for it in items]
    for mode in ("speaker", "utterance"):
        norm = F.FeatureNorm(
            mode,
            min_frames=20,
            global_stats=F.GroupStats(1000, np.zeros((2, 5), np.float32), np.ones((2, 5), np.float32)),
        )
        ref, got = norm.apply(items), norm.apply(as_torch)
        for r, g in zip(ref, got):
            assert torch.is_tensor(g["frames"]) and g["frames"].dtype == torch.float32
            np.testing.assert_allclose(g["frames"].numpy(), r["frames"], rtol=1e-6, atol=1e-6)


def test_cache_reader(tmp_path):
    rng = np.random.default_rng(2)
    rows = []
    for it in _items(rng):
        data, (n_layers, t, d) = F.encode_frames(it["frames"])
        rows.append(
            dict(
                utt_id=it["utt_id"],
                path="/x.wav",
                label="happy",
                transcript=None,
                speaker=it["speaker"],
                split="train" if it["speaker"] == "a" else "test",
                error=None,
                num_samples=16000,
                duration_s=1.0,
                n_layers=n_layers,
                n_frames=t,
                dim=d,
                frames=data,
            )
        )
    rows.append(
        dict(
            utt_id="bad",
            path="/bad.wav",
            label="happy",
            transcript=None,
            speaker="a",
            split="train",
            error="decode: nope",
            num_samples=None,
            duration_s=None,
            n_layers=None,
            n_frames=None,
            dim=None,
            frames=None,
        )
    )
    (tmp_path / "shards").mkdir()
    # shard names in the reverse of the rows' order, as when an extraction's later block finishes first
    pq.write_table(pa.Table.from_pylist(rows[:4], schema=F.feature_schema()), tmp_path / "shards" / "1.parquet")
    pq.write_table(pa.Table.from_pylist(rows[4:], schema=F.feature_schema()), tmp_path / "shards" / "0.parquet")
    with pytest.raises(FileNotFoundError):
        F.FeatureCache(tmp_path)
    (tmp_path / "meta.json").write_text(
        json.dumps({"format": F.FORMAT, "dtype": "float16", "n_layers": 2, "dim": 5, "encoder": {"layer": "weighted"}})
    )
    cache = F.FeatureCache(str(tmp_path))
    assert cache.stacked and len(cache.index()) == 7
    # the index is in utt_id order whatever the shards' order: rank shards and simulated channels drawn from it
    # (and so training) do not depend on which extraction block finished first
    assert list(cache.index()["utt_id"]) == sorted(r["utt_id"] for r in rows)
    assert list(cache.index(["split"]).columns) == ["split"]
    assert sorted(r["utt_id"] for r in cache.load(split="test")) == ["b0", "b1", "b2"]
    assert len(cache.load()) == 6 and len(cache.load(with_errors=True)) == 7
    one = cache.load(utt_ids=["a1"])[0]
    assert one["frames"].shape[0] == 2 and one["frames"].dtype == np.float16
    stats = cache.speaker_stats()  # computed (no stats file)
    F.write_stats(stats, str(tmp_path / F.SPEAKER_STATS_FILE))
    back = F.FeatureCache(tmp_path).speaker_stats()
    assert set(back) == {"a", "b"}
    np.testing.assert_allclose(back["a"].mean, stats["a"].mean)


# ---------------------------------------------------------------------- deployment-faithful normalisation groups


def _index(n_speakers=3, per_label=12, labels=("neutral", "happy", "angry", "sad")):
    rows = [
        dict(utt_id=f"s{s}_{lab}_{i}", speaker=f"s{s}", label=lab, split="test")
        for s in range(n_speakers)
        for lab in labels
        for i in range(per_label)
    ]
    return pd.DataFrame(rows)


def test_simulated_channels_partition_each_speaker_into_skewed_groups():
    idx = _index()
    g = F.simulated_channels(idx, seed=0)
    assert set(g) == set(idx["utt_id"])  # every utterance in exactly one group (a dict: at most one)
    d = idx.assign(group=idx["utt_id"].map(g))
    assert (d.groupby("group")["speaker"].nunique() == 1).all()  # never across speakers
    sizes = d.groupby("group").size()
    assert sizes.max() <= 12 and sizes.sum() == len(idx)
    dominant = d.groupby("group")["label"].agg(lambda s: s.value_counts().iloc[0] / len(s))
    full = sizes[sizes == 12].index
    assert dominant[full].mean() > 0.5  # balanced would be 0.25-0.33: channels are label-skewed
    assert g == F.simulated_channels(idx, seed=0) and g != F.simulated_channels(idx, seed=1)


def test_norm_groups_protocols(tmp_path):
    idx = _index(2)

    class Cache:  # only the meta is consulted
        meta = {"groups": "speakers"}

    sim = F.norm_groups(Cache(), idx, "channels", seed=0)
    assert len(set(sim.values())) > 2 and set(sim) == set(idx["utt_id"])
    assert F.norm_groups(Cache(), idx, "speaker") == dict(zip(idx["utt_id"], idx["speaker"]))
    Cache.meta = {"groups": "channels"}  # a call archive: speakers already are channels, used as they are
    assert F.norm_groups(Cache(), idx, "channels") == dict(zip(idx["utt_id"], idx["speaker"]))
    with pytest.raises(ValueError, match="norm groups"):
        F.norm_groups(Cache(), idx, "utterance")


# ---------------------------------------------------------------------- training from a labelled call archive


def test_call_archive_manifest_and_segment_cut(tmp_path):
    import soundfile as sf

    from pipeline.recipes import call_archive_manifest
    from pipeline.training.extract import decode_batch

    rate = 8000
    x = np.zeros((2, 4 * rate), np.float32)
    x[0, rate : 2 * rate] = 0.1 * np.sin(2 * np.pi * 200 * np.arange(rate) / rate)
    x[1, 2 * rate : 3 * rate + rate // 2] = 0.2 * np.sin(2 * np.pi * 300 * np.arange(rate + rate // 2) / rate)
    wav = tmp_path / "call.wav"
    sf.write(wav, x.T, rate, subtype="PCM_16")
    truth = pd.DataFrame(
        [
            dict(
                recording_id="c1",
                path=str(wav),
                channel=0,
                channel_name="agent",
                segment=0,
                start_s=1.0,
                end_s=2.0,
                label="neutral",
                transcript="hello",
            ),
            dict(
                recording_id="c1",
                path=str(wav),
                channel=1,
                channel_name="customer",
                segment=1,
                start_s=2.0,
                end_s=3.5,
                label="angry",
                transcript=None,
            ),
            dict(
                recording_id="c1",
                path=str(wav),
                channel=1,
                channel_name="customer",
                segment=2,
                start_s=3.9,
                end_s=6.0,
                label="angry",
                transcript=None,
            ),  # past the end of the file: an error row
        ]
    )
    m = call_archive_manifest(truth, splits={"c1": "train"})
    assert m["utt_id"].tolist() == ["c1/agent/0", "c1/customer/1", "c1/customer/2"]
    assert m["speaker"].tolist() == ["c1/agent", "c1/customer", "c1/customer"]  # the group labeling sees
    assert (m["split"] == "train").all()
    out = decode_batch(m, sample_rate=16000, max_duration_s=60.0)
    a = np.frombuffer(out["audio"][0], "<f4")
    b = np.frombuffer(out["audio"][1], "<f4")
    assert out["num_samples"][:2].tolist() == [16000, 24000] and out["duration_s"][1] == pytest.approx(1.5)
    assert np.abs(a).max() == pytest.approx(0.1, rel=0.05) and np.abs(b).max() == pytest.approx(0.2, rel=0.05)
    assert "outside the recording" in out["error"][2]
    with pytest.raises(ValueError, match="lacks columns"):
        call_archive_manifest(truth.drop(columns=["label"]))


def test_extraction_decodes_through_the_labeling_path(tmp_path):
    """Extraction's reader and decode are labeling's: a FIFO is refused without blocking, a name that is not UTF-8
    is read by its exact bytes, header limits apply, and a bad manifest row is an error row, not a crash."""
    import os

    import soundfile as sf

    from pipeline.decode import DecodeLimits
    from pipeline.training.extract import decode_batch, read_manifest

    t = np.arange(8000) / 8000
    tone = (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    raw = os.fsencode(str(tmp_path)) + b"/caf\xe9.wav"
    with open(raw, "wb") as f:
        sf.write(f, tone, 8000, format="WAV")
    sf.write(tmp_path / "long.wav", np.tile(tone, 5), 8000)
    os.mkfifo(tmp_path / "pipe.wav")
    man = tmp_path / "m.csv"
    man.write_bytes(
        b"utt_id,path,label,transcript,speaker,split\n"
        b"u1,caf\xe9.wav,happy,hi,s1,train\n"
        b"u2,pipe.wav,sad,,s1,train\n"
        b"u3,long.wav,angry,,s2,val\n"
        b"u4,,neutral,,s2,val\n"
    )
    df = read_manifest(str(man))
    assert list(df["utt_id"]) == ["u1", "u2", "u3", "u4"] and df.loc[0, "raw_path"] == raw
    assert "missing or non-text 'path'" in df.loc[3, "error"]
    out = decode_batch(df, 16000, 600.0, DecodeLimits(max_duration_s=3.0)).set_index("utt_id")
    assert pd.isna(out.loc["u1", "error"]) and out.loc["u1", "num_samples"] == 16000
    assert out.loc["u1", "path"].endswith("caf\\xe9.wav")  # shown escaped, opened by its bytes
    assert "not a regular file" in out.loc["u2", "error"]
    assert pd.isna(out.loc["u3", "error"])  # a whole clip: bounded by the utterance limit (600 s) ...
    short = decode_batch(df.iloc[[2]], 16000, 3.0).iloc[0]
    assert "over the limit of 3 s" in short["error"]  # ... which refuses it from the header when lower
    assert out.loc["u4", "error"].startswith("input: manifest row 3")


def test_speed_perturbation_copies_train_rows_as_new_speakers(tmp_path):
    """Speed perturbation adds one copy of each train row per factor, as its own speaker, and plays it like a tape
    at that speed: the length divides by the factor and a tone's pitch multiplies by it; validation rows and error
    rows are never copied."""
    import soundfile as sf

    from pipeline.training.extract import decode_batch, speed_perturbed

    rate = 16000
    t = np.arange(rate) / rate
    sf.write(tmp_path / "a.wav", (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), rate)
    df = pd.DataFrame(
        {
            "utt_id": ["u1", "u2", "u3"],
            "path": [str(tmp_path / "a.wav")] * 3,
            "label": ["happy", "sad", "angry"],
            "transcript": ["hi", None, None],
            "speaker": ["s1", "s2", "s1"],
            "split": ["train", "val", "train"],
            "error": [None, None, "input: bad row"],
        }
    )
    out = speed_perturbed(df, (0.9, 1.0, 1.25))
    assert out["utt_id"].tolist() == ["u1", "u2", "u3", "u1~sp0.9", "u1~sp1.25"]
    assert out["speaker"].tolist()[3:] == ["s1~sp0.9", "s1~sp1.25"]
    assert out["split"].tolist()[3:] == ["train", "train"] and out["transcript"].tolist()[3:] == ["hi", "hi"]
    assert speed_perturbed(df, ()) is df and speed_perturbed(df, (1.0,)) is df
    with pytest.raises(ValueError, match="speed factors"):
        speed_perturbed(df, (3.0,))
    dec = decode_batch(out.iloc[[0, 3, 4]].astype(object).where(out.iloc[[0, 3, 4]].notna(), None), rate, 60.0)
    assert dec["error"].isna().all()
    n = dec["num_samples"].tolist()
    assert n[0] == rate and abs(n[1] - rate / 0.9) <= 2 and abs(n[2] - rate / 1.25) <= 2
    for k, f in ((0, 1.0), (1, 0.9), (2, 1.25)):
        y = np.frombuffer(dec["audio"][k], "<f4")
        spec = np.abs(np.fft.rfft(y * np.hanning(y.size)))
        peak_hz = np.argmax(spec) * rate / y.size
        assert peak_hz == pytest.approx(200 * f, abs=3)
        assert dec["duration_s"][k] == pytest.approx(y.size / rate)
