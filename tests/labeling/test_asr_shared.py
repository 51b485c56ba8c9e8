"""Shared-encoder ASR on real speech (the Debian asterisk prompts): Whisper's decoder on the emotion encoder's
real-length states gives the separate ASR stage's transcripts, and a label run with a text bundle writes the
transcript its Former read."""

from __future__ import annotations

import re

import jiwer
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from emoq_model import features as F
from emoq_model.assets.speech_samples import asterisk_sounds_dir, asterisk_transcripts
from emoq_model.assets.whisper_ct2 import build_whisper_tiny_en
from emoq_model.config import EncoderConfig
from emoq_model.encoder import SpeechEncoder
from pipeline.audio import load_mono
from pipeline.labeling.asr import Transcribe, WhisperDecoder, same_checkpoint

N_PROMPTS = 16


def _norm(t: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", t.lower()).split())


@pytest.fixture(scope="module")
def prompts():
    root, refs = asterisk_sounds_dir(), asterisk_transcripts()
    names = sorted(refs)[:N_PROMPTS]
    return names, [load_mono(str(root / f"{n}.wav"), 16000) for n in names], [refs[n] for n in names]


def _padded_window_generate(decoder: WhisperDecoder, states, lengths) -> list[str]:
    """The plain way (what the split attention replaces): stack each item's frames with the silent window's rest
    and let an unmodified Whisper decoder attend to all 1500 frames of each item."""
    import math

    import torch
    from transformers import WhisperForConditionalGeneration
    from transformers.modeling_outputs import BaseModelOutput

    model = WhisperForConditionalGeneration.from_pretrained(build_whisper_tiny_en(), use_safetensors=True).eval()
    sil, w = decoder.silence, decoder.silence.shape[0]
    rows = [torch.cat([states[i, : min(int(n), w)], sil[min(int(n), w) :]]) for i, n in enumerate(lengths)]
    budget = min(decoder.max_new_tokens, 8 + math.ceil(decoder.tokens_per_s * min(max(lengths), w) * decoder.frame_s))
    with torch.inference_mode():
        enc = BaseModelOutput(last_hidden_state=torch.stack(rows))
        ids = model.generate(encoder_outputs=enc, max_new_tokens=budget)
    return [t.strip() for t in decoder.processor.batch_decode(ids, skip_special_tokens=True)]


def test_split_cross_attention_equals_attention_over_the_padded_window():
    """Each decoder layer's cross-attention over [real frames ; shared silent keys] equals Whisper's own attention
    over the stacked 1500-frame window, for items shorter than, and as long as, the window."""
    import torch

    decoder = WhisperDecoder(str(build_whisper_tiny_en()))
    w, d = decoder.silence.shape
    g = torch.Generator().manual_seed(0)
    rows = [torch.randn(n, d, generator=g) for n in (1, 7, 160, w)]
    hidden = torch.randn(len(rows), 3, d, generator=g)
    padded = torch.stack([torch.cat([r, decoder.silence[r.shape[0] :]]) for r in rows])
    with torch.inference_mode():
        for attn in decoder.cross:
            attn.set_items(rows)
            got, _ = attn(hidden)
            want, _ = attn.attn(hidden, key_value_states=padded)
            torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


@pytest.mark.slow
def test_shared_encoder_asr_matches_the_separate_stage(prompts):
    names, waves, refs = prompts
    whisper = str(build_whisper_tiny_en())
    separate = Transcribe(whisper, sample_rate=16000).transcribe(waves)
    enc = SpeechEncoder(EncoderConfig(path=whisper, layer="weighted", whisper_tail_s=0.5))
    out = enc(waves)
    assert out.decoder_states.shape[0] == len(waves)
    assert (out.decoder_lengths > out.mask.sum(-1)).all()  # the silence tail: decoded, not in the Former's frames
    decoder = WhisperDecoder(whisper)
    shared = decoder.transcribe_states(out.decoder_states, out.decoder_lengths.tolist())
    assert shared == _padded_window_generate(decoder, out.decoder_states, out.decoder_lengths.tolist())
    same = [_norm(a) == _norm(b) for a, b in zip(separate, shared)]
    print({n: (a, b) for n, a, b, s in zip(names, separate, shared, same) if not s})
    assert np.mean(same) >= 0.8
    w_sep = jiwer.wer([_norm(r) for r in refs], [_norm(h) or "x" for h in separate])
    w_shared = jiwer.wer([_norm(r) for r in refs], [_norm(h) or "x" for h in shared])
    assert w_shared <= w_sep + 0.05 and w_shared < 0.2, (w_sep, w_shared)


def test_greedy_loop_gives_generates_tokens_as_items_leave_the_batch(prompts):
    """The decoder's own greedy loop (finished items leave the batch) writes exactly what ``generate`` writes for
    the same states, in float32 and bfloat16; prompts of different lengths end at different steps, so the batch
    shrinks on the way (measured on the demo archive's 368 turns: identical transcripts, decoding 28-44 % faster)."""
    names, waves, _ = prompts
    whisper = str(build_whisper_tiny_en())
    out = SpeechEncoder(EncoderConfig(path=whisper, layer="weighted", whisper_tail_s=0.5))(waves[:8])
    lengths = out.decoder_lengths.tolist()
    for dtype in ("float32", "bfloat16"):
        loop = WhisperDecoder(whisper, dtype=dtype)
        assert loop.prefix is not None  # English-only: the own loop applies
        kept: list[int] = []
        select = loop.cross[0].select
        loop.cross[0].select = lambda keep: (kept.append(len(keep)), select(keep))[1]
        got = loop.transcribe_states(out.decoder_states[:8], lengths)
        want = WhisperDecoder(whisper, dtype=dtype, use_generate=True).transcribe_states(
            out.decoder_states[:8], lengths
        )
        assert got == want and all(got), dtype
        assert kept and kept == sorted(kept, reverse=True) and kept[-1] < 8, kept  # the batch shrank


@pytest.mark.slow
def test_bfloat16_decoder_transcribes_like_float32(prompts):
    """The ASR decoder in bfloat16 (``LabelJobConfig.asr_dtype``): the same words on most prompts, no WER loss
    beyond a few points (measured on 200 call turns: WER 0.614 vs 0.611, 85 % identical, 1.5x faster)."""
    import torch

    names, waves, refs = prompts
    whisper = str(build_whisper_tiny_en())
    out = SpeechEncoder(EncoderConfig(path=whisper, layer="weighted", whisper_tail_s=0.5))(waves)
    lengths = out.decoder_lengths.tolist()
    f32 = WhisperDecoder(whisper).transcribe_states(out.decoder_states, lengths)
    half = WhisperDecoder(whisper, dtype="bfloat16")
    assert half.silence.dtype == torch.bfloat16 and next(half.model.parameters()).dtype == torch.bfloat16
    bf16 = half.transcribe_states(out.decoder_states, lengths)
    same = [_norm(a) == _norm(b) for a, b in zip(f32, bf16)]
    assert np.mean(same) >= 0.75, {n: (a, b) for n, a, b, s in zip(names, f32, bf16, same) if not s}
    w32 = jiwer.wer([_norm(r) for r in refs], [_norm(h) or "x" for h in f32])
    w16 = jiwer.wer([_norm(r) for r in refs], [_norm(h) or "x" for h in bf16])
    assert w16 <= w32 + 0.05, (w32, w16)
    with pytest.raises(ValueError, match="dtype"):
        WhisperDecoder(whisper, dtype="int8")


def test_auto_decoder_dtype_is_bfloat16_only_where_the_device_computes_it_natively(monkeypatch):
    """``asr_dtype: auto`` (the labeling and extraction default): bfloat16 on a CPU with avx512_bf16 / amx_bf16 or
    a GPU that supports it, float32 where bfloat16 would be emulated (slower than float32)."""
    from pathlib import Path

    import torch

    from pipeline.labeling.asr import decoder_dtype

    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text().split() if cpuinfo.exists() else []
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    assert decoder_dtype("auto", "cpu") == (torch.bfloat16 if native else torch.float32)
    assert decoder_dtype("auto", torch.device("cpu")) == decoder_dtype("auto", "cpu")
    assert decoder_dtype("float32", "cpu") == torch.float32 and decoder_dtype("bfloat16", "cpu") == torch.bfloat16
    assert decoder_dtype("auto", "mps") == torch.float32
    # a GPU cannot exist here: its capability query is what is mocked
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for supported, want in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda supported=supported: supported)
        assert decoder_dtype("auto", "cuda:0") == want


def test_same_checkpoint(tmp_path):
    import shutil

    whisper = build_whisper_tiny_en()
    copy = tmp_path / "copy"
    shutil.copytree(whisper, copy)
    assert same_checkpoint(str(whisper), str(whisper)) and same_checkpoint(str(whisper), str(copy))
    from emoq_model.assets.tiny_llm import build_tiny_llm

    assert not same_checkpoint(str(whisper), str(build_tiny_llm()))


@pytest.fixture(scope="module")
def text_bundle(tmp_path_factory):
    """An untrained fused bundle on the real Whisper tiny.en encoder (weighted layers, 0.5 s tail) with MiniLM."""
    from emoq_model.assets.text_encoders import build_minilm
    from emoq_model.bundle import save_bundle
    from emoq_model.model import EmoQModel
    from emoq_model.testing import tiny_config

    cfg = tiny_config(
        [
            f"encoder.path={build_whisper_tiny_en()}",
            "encoder.layer=weighted",
            "encoder.whisper_tail_s=0.5",
            "former.text_fusion=concat",
            f"former.text_encoder={build_minilm()}",
            "prompt.include_transcript=false",
        ]
    )
    return str(save_bundle(EmoQModel(cfg), tmp_path_factory.mktemp("tb") / "bundle"))


@pytest.mark.slow
def test_label_job_decodes_transcripts_from_the_shared_encoder(ray_session, text_bundle, prompts, tmp_path):
    from pipeline.labeling.job import LabelJobConfig, StageResources, run
    from pipeline.labeling.sink import segments_dir

    names, _, refs = prompts
    root = asterisk_sounds_dir()
    man = tmp_path / "m.csv"
    pd.DataFrame({"recording_id": names[:4], "path": [str(root / f"{n}.wav") for n in names[:4]]}).to_csv(
        man, index=False
    )
    cfg = LabelJobConfig(
        inputs=[str(man)],
        output=str(tmp_path / "out"),
        bundle=text_bundle,
        batch_recordings=2,
        asr_model=str(build_whisper_tiny_en()),
        encode=StageResources(1, 0.5),
        label=StageResources(1, 0.5),
        engine={"enforce_eager": True, "max_model_len": 512, "max_num_seqs": 64},
    )
    rep = run(cfg, log=lambda *a: None)
    assert rep["labeled"] == 4 and rep["asr"] == "shared"
    df = pq.read_table(segments_dir(str(tmp_path / "out"))).to_pandas()
    heard = " ".join(df.transcript.dropna().map(_norm))
    said = " ".join(_norm(r) for r in refs[:4])
    assert df.transcript.notna().all()
    assert jiwer.wer(said, heard) < 0.3, (said, heard)
    # the default decoder precision (auto: bfloat16 where native) names the labels' model
    assert cfg.asr_dtype == "auto" and df.model_id.str.endswith("+asr.dtype=auto").all()


@pytest.mark.slow
def test_extraction_gives_speed_copies_their_recorded_turns_transcript(ray_session, prompts, tmp_path):
    """Training features with ASR transcripts and speed perturbation: each recorded turn is decoded once (here in
    bfloat16) and, with ``copy_transcripts="recorded"``, its copies take that transcript; by default each copy is
    decoded too; the WER in ``meta.json`` is over the recorded turns."""
    from emoq_model.config import demo_config_path, load_config
    from pipeline.training.extract import extract_features

    names, _, refs = prompts
    root = asterisk_sounds_dir()
    man = tmp_path / "m.csv"
    pd.DataFrame(
        {
            "utt_id": names[:4],
            "path": [str(root / f"{n}.wav") for n in names[:4]],
            "label": ["neutral", "happy", "angry", "sad"],
            "transcript": refs[:4],
            "speaker": "s0",
            "split": "train",
        }
    ).to_csv(man, index=False)
    cfg = load_config(demo_config_path(), ["encoder.whisper_tail_s=0.5"])
    asr = str(build_whisper_tiny_en())
    runs = {}
    for on_copies in (False, True):  # copy_transcripts "recorded", then "asr"
        out = tmp_path / f"f{int(on_copies)}"
        meta = extract_features(
            str(man), str(out), cfg, asr_model=asr, speed_perturb=(0.9, 1.1), asr_dtype="bfloat16",
            copy_transcripts="asr" if on_copies else "recorded", batch_size=4,
        )  # fmt: skip
        idx = F.FeatureCache(str(out)).index().set_index("utt_id")
        assert meta["n_rows"] == 12 and meta["n_errors"] == 0 and meta["asr_dtype"] == "bfloat16"
        runs[on_copies] = meta, idx
    meta, idx = runs[False]
    assert meta["copy_transcripts"] == "recorded"
    for n in names[:4]:
        assert idx.loc[n, "transcript"] and idx.loc[f"{n}~sp0.9", "transcript"] == idx.loc[n, "transcript"]
        assert idx.loc[f"{n}~sp1.1", "transcript"] == idx.loc[n, "transcript"]
    assert jiwer.wer(" ".join(map(_norm, refs[:4])), " ".join(_norm(idx.loc[n, "transcript"]) for n in names[:4])) < 0.3
    meta2, idx2 = runs[True]
    assert meta2["copy_transcripts"] == "asr" and idx2["transcript"].notna().all()
    assert meta2["asr_wer"] == meta["asr_wer"]  # the recorded turns are decoded alike in both runs
    np.testing.assert_array_equal(idx2.loc[names[:4], "n_frames"], idx.loc[names[:4], "n_frames"])


def test_extraction_wer_against_the_manifest():
    from pipeline.training.extract import asr_wer

    manifest = pd.DataFrame(
        {"utt_id": ["a", "b", "c", "d"], "transcript": ["Thank you, so much!", "I am fed up", None, "two words"]}
    )
    index = pd.DataFrame({"utt_id": ["a", "b", "c", "d"], "transcript": ["thank you so much", "i am fed", "x", None]})
    # a: 0 errors / 4 words, b: 1 deletion / 4, c: no reference (skipped), d: nothing heard = 2 errors / 2
    assert asr_wer(manifest, index) == round(3 / 10, 4)
    copies = pd.DataFrame({"utt_id": ["a~sp0.9", "b~sp1.1"], "transcript": ["wrong words", "x"]})
    assert asr_wer(manifest, pd.concat([index, copies])) == round(3 / 10, 4)  # speed copies are not counted
    assert asr_wer(manifest.assign(transcript=None), index) is None
