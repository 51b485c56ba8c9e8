"""Prosody tracks (emoq_model.prosody) and the encoder / Former channels they add."""

import numpy as np
import pytest
import torch

from emoq_model.prosody import LOG_F0_REF, PROSODY_DIMS, prosody_tracks

SR = 16000


def _voice(f0: float, seconds: float, level: float = 0.1, seed: int = 0) -> np.ndarray:
    """A band-limited harmonic tone (300-3400 Hz harmonics only, like a telephone line: no energy at F0 itself)."""
    t = np.arange(int(seconds * SR)) / SR
    x = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 40) if 300 <= k * f0 <= 3400)
    x = x / np.abs(x).max() * level
    return (x + np.random.default_rng(seed).normal(0, level * 1e-3, x.size)).astype(np.float32)


def test_pitch_energy_brightness_follow_the_signal():
    low, high = _voice(110.0, 1.0), _voice(220.0, 1.0)
    silence = np.zeros(SR // 2, np.float32)
    n = [49, 49, 74]
    p = prosody_tracks([low, high, np.concatenate([low, silence])], SR, 320, n)
    assert p.shape == (3, 74, PROSODY_DIMS) and p.dtype == torch.float32
    f0 = lambda i, sl: float(torch.exp(p[i, sl, 0].median() + LOG_F0_REF))  # noqa: E731
    assert f0(0, slice(5, 45)) == pytest.approx(110.0, rel=0.03)  # missing fundamental: found from harmonics
    assert f0(1, slice(5, 45)) == pytest.approx(220.0, rel=0.03)
    assert float(p[0, 5:45, 1].mean()) > 0.6  # strongly voiced (the Hann window caps the peak near 0.7)
    loud = prosody_tracks([low * 4], SR, 320, [49])
    assert float(loud[0, 5:45, 2].mean() - p[0, 5:45, 2].mean()) * 20 == pytest.approx(20 * np.log10(4), abs=0.1)
    # silence: unvoiced, F0 filled with the item's median voiced value, padding past the item's frames is zero
    assert float(p[2, 55:70, 1].max()) < 0.45 + 1e-6 or float(p[2, 55:70, 2].max()) * 20 < -100
    assert torch.allclose(p[2, 60:70, 0], p[2, 10, 0].expand(10), atol=0.05)
    assert torch.count_nonzero(p[0, 49:]) == 0
    # a brighter voice (more high harmonics) has a higher brightness channel
    dull = _voice(150.0, 1.0)
    t = np.arange(SR) / SR
    bright = (dull + 0.05 * np.sin(2 * np.pi * 3000 * t)).astype(np.float32)
    q = prosody_tracks([dull, bright], SR, 320, [49, 49])
    assert float(q[1, 5:45, 3].mean()) > float(q[0, 5:45, 3].mean()) + 0.1


def test_encoder_appends_prosody_to_every_layer():
    from emoq_model.assets.tiny_encoders import build_tiny_encoder
    from emoq_model.config import EncoderConfig
    from emoq_model.encoder import SpeechEncoder

    path = str(build_tiny_encoder("hubert"))
    waves = [_voice(140.0, 0.7), _voice(200.0, 0.4)]
    plain = SpeechEncoder(EncoderConfig(path=path, layer="weighted", device="cpu"))
    pros = SpeechEncoder(EncoderConfig(path=path, layer="weighted", device="cpu", prosody=True))
    a, b = plain(waves), pros(waves)
    assert pros.output_size == plain.hidden_size + PROSODY_DIMS == b.hidden.shape[-1]
    assert torch.equal(a.mask, b.mask)
    assert torch.allclose(b.hidden[..., : plain.hidden_size], a.hidden)  # the encoder's own channels unchanged
    assert torch.equal(b.hidden[0, ..., -PROSODY_DIMS:], b.hidden[-1, ..., -PROSODY_DIMS:])  # same in every layer
    n = b.mask.sum(-1).tolist()
    ref = prosody_tracks(waves, pros.sample_rate, pros.frame_hop, n)
    assert torch.allclose(b.hidden[0, :, : max(n), -PROSODY_DIMS:], ref)


def test_former_keeps_prosody_out_of_the_encoder_layernorm():
    from emoq_model.config import FormerConfig
    from emoq_model.former import EmoQFormer

    f = EmoQFormer(
        FormerConfig(num_queries=4, num_layers=1, hidden=32, intermediate=64, text_fusion="none"),
        encoder_dim=24 + PROSODY_DIMS,
        llm_dim=16,
        num_labels=4,
        num_encoder_layers=3,
        prosody_dims=PROSODY_DIMS,
    )
    assert f.encoder_norm.normalized_shape == (24,) and f.prosody_scale.shape == (PROSODY_DIMS,)
    x = torch.randn(3, 2, 7, 24 + PROSODY_DIMS)
    out = f(x, torch.ones(2, 7, dtype=torch.bool))
    assert out.queries.shape == (2, 4, 32)
    x2 = x.clone()
    x2[..., -1] += 5.0  # a prosody channel changes the output (it is not normalised away)
    assert not torch.allclose(f(x2, torch.ones(2, 7, dtype=torch.bool)).pooled, out.pooled)
