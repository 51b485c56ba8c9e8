"""End-to-end labeling with real Ray Data and the real vLLM engine (CPU) on real audio files."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import ray
import soundfile as sf

from pipeline.labeling.job import LabelJobConfig, StageResources, run
from pipeline.labeling.segment import overlap_scores
from pipeline.labeling.sink import segments_dir

pytestmark = pytest.mark.slow  # real Ray + vLLM end to end: `pytest -m 'not slow'` skips it


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """An untrained bundle (tiny random encoder + tiny Qwen2 LLM + fresh LoRA): labels are arbitrary but real."""
    from emoq_model.bundle import save_bundle
    from emoq_model.model import EmoQModel
    from emoq_model.testing import tiny_config

    return str(save_bundle(EmoQModel(tiny_config()), tmp_path_factory.mktemp("b") / "bundle"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two short demo calls (stereo 8 kHz µ-law) plus a set of bad inputs, listed in one manifest."""
    from pipeline.demo.calls import make_call_archive

    root = tmp_path_factory.mktemp("corpus")
    calls = pd.read_csv(make_call_archive(root / "archive", n_calls=2, minutes=0.5, seed=3, workers=1))
    bad = root / "bad"
    bad.mkdir()
    (bad / "empty.wav").write_bytes(b"")
    (bad / "text.wav").write_text("this is a text file, not audio\n")
    good = bad / "tone.wav"
    t = np.arange(16000) / 16000
    sf.write(good, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    (bad / "truncated.wav").write_bytes(good.read_bytes()[:40])
    sf.write(bad / "silence.wav", np.zeros(16000 * 2, np.float32), 16000)
    rows = [{"recording_id": r.recording_id, "path": r.path, "channels": r.channels} for r in calls.itertuples()]
    rows += [{"recording_id": p.stem, "path": str(p), "channels": None} for p in sorted(bad.iterdir())]
    rows.append({"recording_id": "missing", "path": str(bad / "does-not-exist.wav"), "channels": None})
    man = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(man, index=False)
    return {
        "manifest": str(man),
        "n": len(rows),
        "calls": calls,
        "truth": pd.read_csv(root / "archive" / "segments.csv"),
    }


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=4, include_dashboard=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


def job(corpus, bundle, out):
    from emoq_model.assets.whisper_ct2 import build_whisper_tiny_en

    # the tiny bundle fuses transcripts (tiny_config default): segments get them from the Whisper ASR stage
    return LabelJobConfig(
        inputs=[corpus["manifest"]],
        output=str(out),
        bundle=bundle,
        batch_recordings=2,
        asr_model=str(build_whisper_tiny_en()),
        asr=StageResources(1, 0.5),
        encode=StageResources(1, 0.5),
        label=StageResources(1, 0.5),
        engine={"enforce_eager": True, "max_model_len": 512, "max_num_seqs": 64},
    )


def read_segments(out) -> pd.DataFrame:
    return pq.read_table(segments_dir(str(out))).to_pandas()


@pytest.fixture(scope="module")
def labelled(ray_local, corpus, bundle, tmp_path_factory):
    """The job's first run on the corpus (default layout: encoder and vLLM in separate actor pools)."""
    out = tmp_path_factory.mktemp("labelled") / "out"
    rep = run(job(corpus, bundle, out))
    return {"out": out, "report": rep, "segments": read_segments(out)}


def test_label_resume_and_errors(labelled, corpus, bundle):
    out, rep, df = labelled["out"], labelled["report"], labelled["segments"]
    # every input row appears; failures as one row each with a clear error
    assert set(df.recording_id) == {r for r in pd.read_csv(corpus["manifest"]).recording_id}
    assert rep["labeled"] + rep["failed"] == corpus["n"] == rep["recordings_found"]
    errors = df[df.error.notna()].set_index("recording_id").error
    assert "empty file" in errors["empty"]
    assert "not a readable audio file" in errors["text"]
    assert errors["truncated"]
    assert "no speech" in errors["silence"]
    assert "not found" in errors["missing"]
    ok = df[df.error.isna()]
    labels = json.loads(Path(bundle, "bundle.json").read_text())["labels"]
    assert ok.label.isin(labels).all()
    probs = ok.probabilities.map(lambda kv: sum(v for _, v in kv))
    assert np.allclose(probs, 1.0, atol=1e-4)
    assert (ok.confidence > 0).all() and (ok.confidence <= 1).all()
    assert set(ok[ok.recording_id.str.startswith("call")].channel) == {"agent", "customer"}
    # ASR filled the transcripts of the synthetic speech (words of the demo sentences)
    calls = ok[ok.recording_id.str.startswith("call")]
    assert calls.transcript.notna().mean() > 0.8
    words = set(" ".join(corpus["truth"].transcript).lower().replace(".", "").replace(",", "").split())
    heard = set(" ".join(calls.transcript.dropna()).lower().replace(".", "").replace(",", "").split())
    assert len(heard & words) >= 10
    # segment boundaries against the ground truth of the synthetic calls
    truth = corpus["truth"]
    f1s = []
    for (rid, ch), g in truth.groupby(["recording_id", "channel_name"]):
        pred = ok[(ok.recording_id == rid) & (ok.channel == ch)]
        f1s.append(overlap_scores(list(zip(pred.start_s, pred.end_s)), list(zip(g.start_s, g.end_s)))["f1"])
    print(f"VAD time-overlap F1 per call channel: {np.round(f1s, 3).tolist()}")
    assert min(f1s) > 0.8
    # summary: one row per recording and channel (the error-only recordings: one row, channel null)
    summary = pq.read_table(out / "summary.parquet").to_pandas()
    assert summary.recording_id.nunique() == corpus["n"]
    assert len(summary) == ok.groupby("recording_id").channel.nunique().sum() + len(errors)
    per_channel = summary.dropna(subset=["channel"]).set_index(["recording_id", "channel"]).num_segments
    assert per_channel.to_dict() == ok.groupby(["recording_id", "channel"]).size().to_dict()
    assert summary[summary.channel.isna()].recording_id.tolist() == sorted(errors.index)
    # timeline pictures of the first recordings (by id)
    assert [Path(p).name for p in rep["timelines"]] == [f"{r}.png" for r in sorted(set(df.recording_id))[:3]]
    assert all(Path(p).parent == out / "timelines" and Path(p).stat().st_size > 0 for p in rep["timelines"])

    # rerun: nothing to do, nothing duplicated
    rep2 = run(job(corpus, bundle, out))
    assert rep2["already_done"] == corpus["n"] and rep2["labeled"] == rep2["failed"] == 0
    assert len(read_segments(out)) == len(df)

    # an interrupted run: one part file never written, and a partial temporary file left behind
    seg_dir = Path(segments_dir(str(out)))
    parts = sorted(seg_dir.glob("part-*.parquet"))
    lost = set(pq.read_table(parts[0], columns=["recording_id"]).column(0).to_pylist())
    parts[0].unlink()
    (seg_dir / ".tmp-deadbeef-part-x.parquet").write_bytes(b"PAR1 partial")
    rep3 = run(job(corpus, bundle, out))
    assert rep3["labeled"] + rep3["failed"] == len(lost)
    df3 = read_segments(out)
    assert len(df3) == len(df)
    assert not df3.duplicated(["recording_id", "channel", "segment_index"]).any()
    key = ["recording_id", "segment_index", "channel"]
    merged = df.merge(df3, on=key, suffixes=("", "_new"))
    assert len(merged) == len(df)
    assert (merged.label.fillna("") == merged.label_new.fillna("")).all()  # same model, same labels


def test_fused_model_stages_same_output(labelled, corpus, bundle, tmp_path):
    """Encoder and vLLM in one actor (``fuse_model_stages``): the same rows, labels and probabilities as with
    separate pools, every input accounted for. The fused run's bundle also carries a conversation context
    (``calibration.json``, :mod:`emoq_model.context`): its probabilities must be the separate run's after that
    context, per recording and channel, and its labels their argmax."""
    import json
    import shutil
    from dataclasses import replace

    from emoq_model.context import ChannelContext

    ctx = ChannelContext(weight=1.0, tau_s=20.0)
    with_context = tmp_path / "bundle_context"
    shutil.copytree(bundle, with_context)
    (with_context / "calibration.json").write_text(json.dumps({"temperature": 1.0, "context": ctx.to_dict()}))
    out = tmp_path / "fused"
    cfg = replace(job(corpus, str(with_context), out), fuse_model_stages=True, label=StageResources(1, 1.0))
    rep = run(cfg)
    assert rep["labeled"] + rep["failed"] == corpus["n"] and rep["crashed"] == 0
    key = ["recording_id", "channel", "segment_index"]
    a = labelled["segments"].sort_values(key).reset_index(drop=True)
    b = read_segments(out).sort_values(key).reset_index(drop=True)

    def keys(d):  # None / NaN (error rows) as one value
        return d[key].astype(object).where(d[key].notna(), "").astype(str)

    assert len(a) == len(b) and (keys(a) == keys(b)).all().all()
    assert (a.error.fillna("") == b.error.fillna("")).all()
    ok = a.error.isna()
    assert ok.sum() > 10
    pa = np.array([[v for _, v in kv] for kv in a.probabilities[ok]])
    pb = np.array([[v for _, v in kv] for kv in b.probabilities[ok]])
    groups = (a.recording_id[ok] + "/" + a.channel[ok]).tolist()
    expected = ctx.apply(pa, groups, a.start_s[ok].to_numpy(), a.end_s[ok].to_numpy())
    assert np.abs(expected - pa).max() > 0.01  # the context did act
    np.testing.assert_allclose(pb, expected, atol=1e-4)
    names = [k for k, _ in a.probabilities[ok].iloc[0]]
    assert (b.label[ok].to_numpy() == np.array(names)[expected.argmax(1)]).all()
