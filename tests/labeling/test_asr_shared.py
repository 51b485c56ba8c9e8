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


@pytest.mark.slow
def test_shared_encoder_asr_matches_the_separate_stage(prompts):
    names, waves, refs = prompts
    whisper = str(build_whisper_tiny_en())
    separate = Transcribe(whisper, sample_rate=16000).transcribe(waves)
    enc = SpeechEncoder(EncoderConfig(path=whisper, layer="weighted", whisper_tail_s=0.5))
    out = enc(waves)
    assert out.decoder_states.shape[0] == len(waves)
    assert (out.decoder_lengths > out.mask.sum(-1)).all()  # the silence tail: decoded, not in the Former's frames
    shared = WhisperDecoder(whisper).transcribe_states(out.decoder_states, out.decoder_lengths.tolist())
    same = [_norm(a) == _norm(b) for a, b in zip(separate, shared)]
    print({n: (a, b) for n, a, b, s in zip(names, separate, shared, same) if not s})
    assert np.mean(same) >= 0.8
    w_sep = jiwer.wer([_norm(r) for r in refs], [_norm(h) or "x" for h in separate])
    w_shared = jiwer.wer([_norm(r) for r in refs], [_norm(h) or "x" for h in shared])
    assert w_shared <= w_sep + 0.05 and w_shared < 0.2, (w_sep, w_shared)


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


def test_extraction_wer_against_the_manifest():
    from pipeline.training.extract import asr_wer

    manifest = pd.DataFrame(
        {"utt_id": ["a", "b", "c", "d"], "transcript": ["Thank you, so much!", "I am fed up", None, "two words"]}
    )
    index = pd.DataFrame({"utt_id": ["a", "b", "c", "d"], "transcript": ["thank you so much", "i am fed", "x", None]})
    # a: 0 errors / 4 words, b: 1 deletion / 4, c: no reference (skipped), d: nothing heard = 2 errors / 2
    assert asr_wer(manifest, index) == round(3 / 10, 4)
    assert asr_wer(manifest.assign(transcript=None), index) is None
