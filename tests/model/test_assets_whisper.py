"""Real Whisper tiny.en converted from CTranslate2: loads cleanly, transcribes real speech, tokenizer round-trips."""

from __future__ import annotations

import hashlib
import re
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from emoq_model.assets.whisper_ct2 import build_whisper_tiny_en, read_ct2_model

# Asterisk prompts of 2-5 s with plain words only (no digits, no elided "..." openings).
PROMPTS = [
    "tt-weasels",
    "vm-mismatch",
    "conf-enteringno",
    "vm-starmain",
    "demo-nomatch",
    "confbridge-pin",
    "vm-rec-name",
    "vm-dialout",
    "vm-nobox",
    "conf-getchannel",
]


@pytest.fixture(scope="session")
def whisper_dir() -> Path:
    t0 = time.perf_counter()
    path = build_whisper_tiny_en()
    print(f"\nwhisper tiny.en ready in {time.perf_counter() - t0:.1f} s at {path}")
    return path


@pytest.fixture(scope="session")
def whisper(whisper_dir: Path):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    model, info = WhisperForConditionalGeneration.from_pretrained(whisper_dir, output_loading_info=True)
    return model.eval(), WhisperProcessor.from_pretrained(whisper_dir), info


@pytest.fixture(scope="session")
def asterisk():
    from emoq_model.assets.speech_samples import asterisk_sounds_dir, asterisk_transcripts

    return asterisk_sounds_dir(), asterisk_transcripts()


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower().replace("-", " ")).split())


def test_ct2_parser_reads_synthetic_file(tmp_path: Path) -> None:
    def s(x: str) -> bytes:
        b = x.encode() + b"\0"
        return struct.pack("<H", len(b)) + b

    w = np.arange(6, dtype=np.float16).reshape(2, 3)
    bf16 = (np.array([1.5, -2.0], np.float32).view(np.uint32) >> 16).astype("<u2")
    blob = struct.pack("<I", 6) + s("WhisperSpec") + struct.pack("<II", 3, 3)
    blob += s("a/weight") + struct.pack("<BIIBI", 2, 2, 3, 4, w.nbytes) + w.tobytes()
    blob += s("b") + struct.pack("<BIBI", 1, 2, 5, bf16.nbytes) + bf16.tobytes()
    blob += s("n") + struct.pack("<BBI", 0, 2, 2) + struct.pack("<h", 6)
    blob += struct.pack("<I", 1) + s("c/weight") + s("a/weight")
    (tmp_path / "model.bin").write_bytes(blob)
    spec, v = read_ct2_model(tmp_path / "model.bin")
    assert spec == "WhisperSpec" and set(v) == {"a/weight", "b", "n", "c/weight"}
    np.testing.assert_array_equal(v["a/weight"], w)
    np.testing.assert_array_equal(v["b"], [1.5, -2.0])
    assert int(v["n"]) == 6 and v["c/weight"] is v["a/weight"]


def test_loads_without_missing_or_unexpected_keys(whisper) -> None:
    model, _, info = whisper
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    cfg = model.config
    assert (cfg.d_model, cfg.encoder_layers, cfg.decoder_layers, cfg.vocab_size) == (384, 4, 4, 51864)
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    assert model.model.decoder.layers[0].self_attn.k_proj.bias is None
    assert model.generation_config.no_timestamps_token_id == 50362


def test_conversion_is_deterministic(whisper_dir: Path, tmp_path: Path) -> None:
    again = build_whisper_tiny_en(tmp_path / "w", force=True)
    names = sorted(p.name for p in whisper_dir.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        a, b = (hashlib.sha256((d / name).read_bytes()).hexdigest() for d in (whisper_dir, again))
        assert a == b, name


def test_tokenizer_round_trips(whisper) -> None:
    tok = whisper[1].tokenizer
    text = " Please enter your password, followed by the pound key. Ça coûte 5€!"
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text
    full = tok(text).input_ids
    assert full[:2] == [50257, 50362] and full[-1] == 50256 and full[2:-1] == ids
    assert tok.decode(full, skip_special_tokens=True) == text
    assert len(tok) == 51864 and tok.convert_tokens_to_ids("<|0.00|>") == 50363


def test_transcribes_real_speech(whisper, asterisk) -> None:
    import jiwer

    from pipeline.audio import load_mono

    model, processor, _ = whisper
    sounds, transcripts = asterisk
    audio = [load_mono(str(sounds / f"{name}.wav"), 16000) for name in PROMPTS]  # 8 kHz -> 16 kHz
    assert all(1.5 < len(a) / 16000 < 6 for a in audio)
    feats = processor.feature_extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
    t0 = time.perf_counter()
    with torch.inference_mode():
        ids = model.generate(feats, num_beams=1, do_sample=False)
    elapsed = time.perf_counter() - t0
    hyps = [_normalise(h) for h in processor.batch_decode(ids, skip_special_tokens=True)]
    refs = [_normalise(transcripts[name]) for name in PROMPTS]
    wer = jiwer.wer(refs, hyps)
    print(f"\nWER {wer:.3f} over {len(PROMPTS)} Asterisk prompts ({elapsed:.1f} s greedy decode)")
    for name, r, h in zip(PROMPTS, refs, hyps):
        print(f"  {name}: ref={r!r} hyp={h!r}")
    assert wer < 0.25
