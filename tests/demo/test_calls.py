"""The synthetic call archive's scripts, speakers and lines (pipeline.demo.calls)."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from pipeline.demo import calls as dc
from pipeline.demo.voices import make_speakers, max_speakers

needs_tools = pytest.mark.skipif(
    any(shutil.which(t) is None for t in ("espeak-ng", "flite", "sox")), reason="needs espeak-ng, flite and sox"
)

MINUTES = 40 / 60  # 40 s calls: long enough for every phase of every script
SEED = 0


def _voices(specs: list[dict]) -> set[str]:
    from pipeline.demo.voices import Speaker

    return {Speaker.from_json(s[k]).voice for s in specs for k in ("agent", "customer")}


def _training_manifest(path: Path) -> Path:
    """A manifest like the demo corpus's (``voice`` column, speaker-disjoint splits) whose voices include the ones
    the call archive would pick by default, so the exclusion is exercised."""
    train = [s.voice for s in make_speakers(24, seed=0)]  # the default demo corpus's voices
    default_calls = sorted(_voices(dc.plan_call_archive(path.parent, n_calls=6, seed=SEED)))
    rows = [dict(utt_id=f"u{i}", voice=v, split="train") for i, v in enumerate(train + default_calls)]
    rows.append(dict(utt_id="u_test", voice="en-029+Andy", split="test"))
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


# --- planning (no audio) ------------------------------------------------------------------------------------------


def test_scripts_cycle_every_twelve_calls():
    assert (
        set(dc.SCRIPT_ORDER) == set(dc.ARCS) - {"mixed"} == {"calm", "escalate", "upset", "sad", "pleased", "grieving"}
    )
    arcs = [s["arc"] for s in dc.plan_call_archive("/tmp/x", n_calls=40, minutes=1.0)]
    for i in range(len(arcs) - 11):
        counts = Counter(arcs[i : i + 12])
        assert set(counts) == set(dc.SCRIPT_ORDER) and min(counts.values()) >= 2, (i, counts)
    assert arcs[:3] == ["escalate", "sad", "pleased"]  # the archive's original arcs come first
    for lab, end_lo, end_hi in (p for phases in dc.ARCS.values() for p in phases):
        assert lab in ("neutral", "happy", "angry", "sad") and 0 < end_lo <= end_hi <= 1
    assert all(phases[-1][1:] == (1.0, 1.0) for phases in dc.ARCS.values())


def test_scripts_option_restricts_and_orders():
    specs = dc.plan_call_archive("/tmp/x", n_calls=5, minutes=1.0, scripts="upset,calm")
    assert [s["arc"] for s in specs] == ["upset", "calm", "upset", "calm", "upset"]
    assert [s["arc"] for s in dc.plan_call_archive("/tmp/x", 2, 1.0, scripts=["grieving"])] == ["grieving"] * 2
    with pytest.raises(ValueError, match="unknown scripts"):
        dc.plan_call_archive("/tmp/x", 2, 1.0, scripts=["furious"])
    with pytest.raises(ValueError, match="empty"):
        dc.plan_call_archive("/tmp/x", 2, 1.0, scripts="")


def test_call_i_and_speakers_independent_of_n_calls():
    a = dc.plan_call_archive("/tmp/x", n_calls=3)
    b = dc.plan_call_archive("/tmp/x", n_calls=14)
    assert a == b[:3]
    # nothing excluded: the same speakers make_speakers gives (backward compatible)
    agents, customers = dc.call_speakers(5, seed=SEED)
    assert agents + customers == make_speakers(dc.N_AGENTS + 5, seed=SEED + 7919, mode="easy", prefix="callspk")
    # three agents, each on two of every six calls, not tied to the script
    agent_of = [s["agent"] for s in b[:12]]
    assert len(set(agent_of)) == 3
    for blk in (agent_of[:6], agent_of[6:12]):
        assert sorted(Counter(blk).values()) == [2, 2, 2]
    customers = [s["customer"] for s in b]
    assert len(set(customers)) == len(b) and not set(customers) & set(agent_of)


def test_exclude_voices(tmp_path):
    man = _training_manifest(tmp_path / "manifest.csv")
    excluded = dc.exclude_voices_from(man)
    assert "en-029+Andy" in excluded and len(excluded) >= 24
    assert dc.exclude_voices_from(man, splits=["test"]) == {"en-029+Andy"}
    df = pd.read_csv(man)
    df.to_parquet(tmp_path / "manifest.parquet")
    assert dc.exclude_voices_from(tmp_path / "manifest.parquet") == excluded
    df.drop(columns="voice").to_csv(tmp_path / "novoice.csv", index=False)
    with pytest.raises(ValueError, match="voice"):
        dc.exclude_voices_from(tmp_path / "novoice.csv")
    # a call archive's calls.csv names its voices per channel
    pd.DataFrame({"agent_voice": ["en+Andy", "en+Andy"], "customer_voice": ["en-gb+f3", "en+m2"]}).to_csv(
        tmp_path / "calls.csv", index=False
    )
    assert dc.exclude_voices_from(tmp_path / "calls.csv") == {"en+Andy", "en-gb+f3", "en+m2"}

    default = dc.plan_call_archive(tmp_path, n_calls=12)
    specs = dc.plan_call_archive(tmp_path, n_calls=12, exclude_voices=excluded)
    assert _voices(default) & excluded and not _voices(specs) & excluded
    assert dc.plan_call_archive(tmp_path, n_calls=4, exclude_voices=excluded) == specs[:4]
    assert [s["arc"] for s in specs] == [s["arc"] for s in default]
    # flite's "kal" is kal16 under another name
    _, customers = dc.call_speakers(40, exclude_voices=["kal"])
    assert "kal16" not in {c.voice for c in customers}
    # the pool runs out
    every = {s.voice for s in make_speakers(max_speakers(), seed=SEED + 7919)}
    with pytest.raises(ValueError, match="not excluded"):
        dc.plan_call_archive(tmp_path, n_calls=2, exclude_voices=sorted(every)[:-4])


def test_bad_options():
    for kw in (dict(encoding="gsm"), dict(minutes=0.05), dict(n_calls=0)):
        with pytest.raises(ValueError):
            dc.plan_call_archive("/tmp/x", **{"n_calls": 1, **kw})


# --- synthesized calls --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """One 20 s call per script (all six), speakers disjoint from a training manifest's voices."""
    root = tmp_path_factory.mktemp("calls")
    excluded = dc.exclude_voices_from(_training_manifest(root / "train_manifest.csv"))
    m = dc.make_call_archive(
        root / "archive", n_calls=6, minutes=MINUTES, seed=SEED, workers=1, exclude_voices=excluded
    )
    return dict(root=root, excluded=excluded, calls=pd.read_csv(m), segments=pd.read_csv(m.parent / "segments.csv"))


@needs_tools
def test_script_label_patterns(archive):
    calls, segs = archive["calls"], archive["segments"]
    assert calls.customer_arc.tolist() == list(dc.SCRIPT_ORDER)
    cust = segs[segs.channel_name == "customer"].sort_values(["recording_id", "start_s"])
    labels = {
        arc: cust[cust.recording_id == rid].label.tolist() for rid, arc in zip(calls.recording_id, calls.customer_arc)
    }
    assert all(len(v) >= 2 for v in labels.values()), labels
    assert set(labels["calm"]) == {"neutral"}
    assert set(labels["upset"]) == {"angry"}  # one emotion all call, the first turn too
    assert set(labels["grieving"]) == {"sad"}
    assert labels["escalate"][0] == "neutral" and "angry" in labels["escalate"]
    assert set(labels["escalate"]) <= {"neutral", "angry"}
    assert labels["sad"][0] == "neutral" and set(labels["sad"]) <= {"neutral", "sad"}
    assert labels["pleased"][0] == "neutral" and set(labels["pleased"]) <= {"neutral", "happy"}
    assert set(segs[segs.channel_name == "agent"].label) <= {"neutral", "happy"}
    emo = segs.label != "neutral"
    assert (segs.strength[~emo] == 0).all() and segs.strength[emo].between(0.6, 1.0).all()


@needs_tools
def test_speakers_disjoint_from_training_voices(archive):
    calls, excluded = archive["calls"], archive["excluded"]
    voices = set(calls.agent_voice) | set(calls.customer_voice)
    assert voices and not voices & excluded
    assert calls.customer_speaker.is_unique and not set(calls.customer_speaker) & set(calls.agent_speaker)
    assert calls.agent_speaker.nunique() == 3


@needs_tools
def test_calls_and_segments_consistent(archive):
    calls, segs = archive["calls"], archive["segments"]
    assert list(segs.columns) == dc.SEGMENT_COLUMNS
    assert set(segs.recording_id) == set(calls.recording_id) and calls.recording_id.is_unique
    assert segs.groupby("recording_id").size().reindex(calls.recording_id).tolist() == calls.n_segments.tolist()
    assert calls.customer_gain_db.between(-6, 6).all() and calls.agent_gain_db.between(-6, 6).all()
    for rec in calls.itertuples():
        info = sf.info(rec.path)
        assert info.samplerate == 8000 and info.channels == 2 and info.subtype == "ULAW"
        assert info.frames / 8000 == pytest.approx(rec.duration_s, abs=1e-3)
        assert rec.duration_s == pytest.approx(MINUTES * 60, abs=0.01)
        g = segs[segs.recording_id == rec.recording_id].sort_values("segment")
        assert g.segment.tolist() == list(range(len(g))) and (g.path == rec.path).all()
        assert ((g.start_s >= 0) & (g.start_s < g.end_s) & (g.end_s <= rec.duration_s)).all()
        assert g.start_s.is_monotonic_increasing and (g.channel.diff().dropna() != 0).all()  # alternate
        assert g.channel.iloc[0] == 0  # agent first
        assert set(g[g.channel == 0].speaker) == {rec.agent_speaker}
        assert set(g[g.channel == 1].speaker) == {rec.customer_speaker}
        assert (g.channel_name == g.channel.map({0: "agent", 1: "customer"})).all()
        x, _ = sf.read(rec.path, dtype="float32", always_2d=True)
        for c, noise_db in ((0, rec.agent_noise_dbfs), (1, rec.customer_noise_dbfs)):
            gc = g[g.channel == c]
            assert (gc.start_s.to_numpy()[1:] >= gc.end_s.to_numpy()[:-1]).all()  # no overlap per channel
            mask = np.zeros(len(x), bool)
            for s, e in zip(gc.start_s, gc.end_s):
                mask[int(s * 8000) : int(e * 8000)] = True
            # between turns only the line noise, at its level after the channel gain
            outside = 20 * np.log10(np.sqrt(np.mean(x[~mask, c].astype(np.float64) ** 2)))
            assert outside == pytest.approx(noise_db, abs=1.5)
            assert -68.5 <= noise_db <= -38.5
            inside = 20 * np.log10(np.sqrt(np.mean(x[mask, c].astype(np.float64) ** 2)))
            assert inside > outside + 6
    pq = pd.read_parquet(Path(calls.path[0]).parents[1] / "segments.parquet")
    assert pq.shape == segs.shape
    assert pd.read_parquet(Path(calls.path[0]).parents[1] / "calls.parquet").shape == calls.shape


@needs_tools
def test_call_zero_same_bytes_whatever_n_calls(archive, tmp_path):
    m = dc.make_call_archive(
        tmp_path / "one", n_calls=1, minutes=MINUTES, seed=SEED, workers=1, exclude_voices=archive["excluded"]
    )
    one = pd.read_csv(m)
    first = archive["calls"].iloc[0]
    assert Path(one.path[0]).read_bytes() == Path(first.path).read_bytes()
    pd.testing.assert_frame_equal(one.drop(columns="path"), archive["calls"].iloc[:1].drop(columns="path"))
    s1 = pd.read_csv(m.parent / "segments.csv")
    s6 = archive["segments"]
    pd.testing.assert_frame_equal(
        s1.drop(columns="path"), s6[s6.recording_id == "call_000"].drop(columns="path").reset_index(drop=True)
    )


@needs_tools
def test_cli(archive, tmp_path, capsys):
    man = archive["root"] / "train_manifest.csv"
    dc.main(
        [
            str(tmp_path / "cli"),
            "--calls",
            "1",
            "--minutes",
            "0.25",
            "--workers",
            "1",
            "--scripts",
            "upset",
            "--exclude-voices-from",
            str(man),
            "--encoding",
            "pcm16",
        ]
    )
    out = Path(capsys.readouterr().out.strip())
    calls, segs = pd.read_csv(out), pd.read_csv(out.parent / "segments.csv")
    assert calls.customer_arc.tolist() == ["upset"] and calls.encoding.tolist() == ["pcm16"]
    assert sf.info(calls.path[0]).subtype == "PCM_16"
    assert set(segs[segs.channel == 1].label) == {"angry"}
    assert not {calls.agent_voice[0], calls.customer_voice[0]} & archive["excluded"]


@needs_tools
def test_mixed_training_calls_use_other_words_and_any_emotion(tmp_path):
    """``mixed`` calls (training data): every channel has its own label mix, both channels can carry any emotion,
    and ``lines="generic"`` takes none of the call-centre lines the evaluation archive speaks."""
    m = dc.make_call_archive(tmp_path, n_calls=4, minutes=0.75, seed=3, workers=1, scripts="mixed", lines="generic")
    segs = pd.read_csv(m.parent / "segments.csv")
    call_lines = {t for table in (dc.AGENT_LINES, dc.CUSTOMER_LINES) for v in table.values() for t in v}
    assert not any(line in text for text in segs.transcript for line in call_lines)
    assert set(segs.label) == {"neutral", "happy", "angry", "sad"}
    assert set(segs[segs.channel_name == "agent"].label) - {"neutral", "happy"}  # agents are not scripted here
    with pytest.raises(ValueError, match="lines"):
        dc.plan_call_archive(tmp_path, 1, 1.0, lines="poetry")


def test_mixed_mixes_include_channels_dominated_by_any_emotion():
    """Training channels' label mixes (``dominant=0.3``): mostly skewed Dirichlet draws, and about 30 % of them
    held by one label (80-100 %), any of the four, so training sees channels that are angry or sad all call. At
    ``dominant=0`` no extra random draw is made (archives made before the option stay bit-identical)."""
    rng = np.random.default_rng(0)
    mixes = np.array([dc._mixed_mix(rng, 0.3) for _ in range(4000)])
    assert np.allclose(mixes.sum(1), 1.0) and (mixes >= 0).all()
    dominated = mixes.max(1) >= 0.8
    plain = np.array([dc._mixed_mix(np.random.default_rng(0), 0.0) for _ in range(1)])
    assert np.array_equal(plain[0], np.random.default_rng(0).dirichlet(0.4 * np.array([3.0, 1.0, 1.0, 1.0])))
    base = (np.array([dc._mixed_mix(rng, 0.0) for _ in range(4000)]).max(1) >= 0.8).mean()
    assert base + 0.2 <= dominated.mean() <= base + 0.35
    tops = np.bincount(mixes[dominated].argmax(1), minlength=4) / dominated.sum()
    assert (tops > 0.1).all()  # every label dominates some channels


@needs_tools
def test_cue_calls_make_words_matter(archive, tmp_path):
    """``cues=True``: emotional turns are realised by voice and words, voice only, words only (neutral voice) or
    with contradicting words; the audio of a cue-free call is unchanged and carries no cue line."""
    from pipeline.demo import cues as cues

    m = dc.make_call_archive(
        tmp_path / "cues",
        n_calls=6,
        minutes=MINUTES,
        seed=SEED,
        workers=1,
        exclude_voices=archive["excluded"],
        cues=True,
    )
    segs = pd.read_csv(m.parent / "segments.csv")
    emotional = segs[segs.label != "neutral"]
    assert set(emotional.cue) <= set(cues.REALISATIONS) and {"both", "voice", "text"} <= set(emotional.cue)
    assert (segs[segs.label == "neutral"].cue == "none").all()
    assert (segs[segs.cue == "text"].strength == 0).all() and (segs[segs.cue == "both"].strength > 0).all()
    fam = cues.CUE_LINES["calls"]

    def said(text: str, label: str) -> bool:
        return any(line in text for pool in (fam["customer"], fam["agent"]) for line in pool.get(label, ()))

    for r in emotional.itertuples():
        if r.cue in ("both", "text"):
            assert said(r.transcript, r.label), r
        elif r.cue == "contradict":
            assert said(r.transcript, cues.CONTRADICTS[r.label]) and not said(r.transcript, r.label), r
    assert (archive["segments"].cue == "none").all()  # the cue-free archive
    every_cue = {
        t for f in cues.CUE_LINES.values() for pools in (f["customer"], f["agent"]) for p in pools.values() for t in p
    }
    assert not any(line in text for text in archive["segments"].transcript for line in every_cue)
    # the evaluation, training and validation families share no sentence
    flat = {
        k: {t for pools in (f["customer"], f["agent"]) for p in pools.values() for t in p} | set(f["distractor"])
        for k, f in cues.CUE_LINES.items()
    }
    assert set(flat) == {"calls", "training", "validation"}
    assert not (
        flat["calls"] & flat["training"] or flat["calls"] & flat["validation"] or flat["training"] & flat["validation"]
    )
    assert [cues.cue_family(x) for x in ("calls", "service", "training", "generic")] == [
        "calls",
        "validation",
        "training",
        "training",
    ]
