"""Explicit prosody tracks beside the encoder frames: pitch, voicing, energy, brightness, energy change.

Why: emotion in speech lives largely in prosody (pitch level and range, loudness, voice quality, tempo), and a small
frozen encoder's frames carry little of it. So the encoder output can get :data:`PROSODY_DIMS` extra channels per
frame (``encoder.prosody: true``), computed from the same waveform at the encoder's frame rate, appended to every
stacked layer (the layer weights then leave them unchanged). They are part of the features from then on: cached,
normalised per speaker / channel and batched like any other channel, so training and labeling see the same values.

Per frame (window ``2 * hop`` samples starting at ``t * hop``):

0. ``log F0 - log 150 Hz`` from the normalised autocorrelation peak in 60-400 Hz; unvoiced frames take the item's
   median voiced value (so per-speaker statistics describe the voice, not the voicing rate),
1. voicing strength (that peak, 0-1),
2. log energy ``dB / 20``,
3. brightness ``10 log10(P(> 2 kHz) / P(300 Hz - 2 kHz)) / 10`` (telephone band: up to 3.4 kHz),
4. energy change ``(dB_t - dB_{t-1}) / 10``.

Everything runs in torch on the encoder's device, batched (one FFT per frame), in float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

PROSODY_DIMS = 5
F0_RANGE_HZ = (60.0, 400.0)
VOICED_PEAK = 0.45  # normalised autocorrelation peak above which a frame counts as voiced
ACTIVE_DB = 30.0  # frames within this many dB of the item's loudest frame can be voiced
LOG_F0_REF = math.log(150.0)


@torch.no_grad()
def prosody_tracks(
    waves: Sequence[np.ndarray], sample_rate: int, hop: int, n_frames: Sequence[int], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``[B, T, PROSODY_DIMS]`` float32 on ``device`` (``T = max(n_frames)``, zeros past each item's frames) for
    1-D waveforms at ``sample_rate``; frame t covers samples ``[t * hop, t * hop + 2 * hop)``."""
    win = 2 * hop
    t_max = max(int(n) for n in n_frames)
    x = torch.zeros(len(waves), (t_max - 1) * hop + win, device=device)
    for i, w in enumerate(waves):
        w = torch.as_tensor(np.asarray(w, dtype=np.float32)[: x.shape[1]], device=device)
        x[i, : w.numel()] = w
    fr = x.unfold(1, win, hop)  # [B, T, win]
    fr = fr - fr.mean(-1, keepdim=True)
    spec = torch.fft.rfft(fr * torch.hann_window(win, device=device), 2 * win)
    power = spec.real.square() + spec.imag.square()
    ac = torch.fft.irfft(power, 2 * win)[..., :win]
    ac = ac / ac[..., :1].clamp_min(1e-12)
    lo, hi = int(sample_rate / F0_RANGE_HZ[1]), min(win - 1, int(sample_rate / F0_RANGE_HZ[0]))
    peak, lag = ac[..., lo : hi + 1].max(-1)
    log_f0 = math.log(sample_rate) - torch.log((lag + lo).float())
    energy_db = 10 * torch.log10(fr.square().mean(-1).clamp_min(1e-10))
    freqs = torch.fft.rfftfreq(2 * win, 1.0 / sample_rate).to(device)
    high = power[..., freqs > 2000].sum(-1)
    mid = power[..., (freqs > 300) & (freqs <= 2000)].sum(-1)
    bright = 10 * torch.log10((high + 1e-10) / (mid + 1e-10))
    valid = torch.arange(t_max, device=device)[None] < torch.as_tensor(list(n_frames), device=device)[:, None]
    loudest = energy_db.masked_fill(~valid, -200.0).max(-1, keepdim=True).values
    voiced = (peak > VOICED_PEAK) & (energy_db > loudest - ACTIVE_DB) & valid
    fill = torch.stack(
        [log_f0[i][voiced[i]].median() if voiced[i].any() else log_f0.new_tensor(LOG_F0_REF) for i in range(len(waves))]
    )
    log_f0 = torch.where(voiced, log_f0, fill[:, None]) - LOG_F0_REF
    delta = torch.diff(energy_db, dim=-1, prepend=energy_db[..., :1])
    out = torch.stack([log_f0, peak.clamp(0, 1), energy_db / 20, bright / 10, delta / 10], -1)
    return out * valid[..., None]
