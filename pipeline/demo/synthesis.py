"""Rendering speech offline: espeak-ng (SSML prosody) or flite, then sox (pitch, EQ, band), numpy gain; levels and
background noise. The one place that synthesizes speech for the project (the corpus and the call archives)."""

from __future__ import annotations

import io
import math
import shutil
import subprocess
from xml.sax.saxutils import escape

import numpy as np
import soundfile as sf

from pipeline.demo.voices import FLITE_VOICES, Prosody, Speaker


def _run(cmd: list[str], data: bytes | None = None) -> bytes:
    p = subprocess.run(cmd, input=data, capture_output=True)
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({p.returncode}): {p.stderr.decode(errors='replace')[-500:]}")
    return p.stdout


def _pct(x: float) -> str:
    return f"{x * 100:+.1f}%"


def _engine_audio(speaker: Speaker, text: str, p: Prosody) -> tuple[np.ndarray, int, float]:
    """Raw engine output (float32 mono, rate) and the pitch shift in cents still to apply with sox."""
    if speaker.engine == "espeak":
        ssml = (
            f'<speak><prosody pitch="{_pct(p.pitch)}" range="{_pct(max(p.range, -0.95))}" '
            f'rate="{_pct(max(p.rate, -0.8))}">{escape(text)}</prosody></speak>'
        )
        wav = _run(["espeak-ng", "-m", "-v", speaker.voice, "--stdout", ssml])
        cents = 0.0
    elif speaker.engine == "flite":
        _, f0, sd, settable = FLITE_VOICES[speaker.voice]
        cmd = ["flite", "-voice", speaker.voice, "--setf", f"duration_stretch={1.0 / max(1 + p.rate, 0.2):.4f}"]
        if settable:
            cmd += [
                "--setf",
                f"int_f0_target_mean={f0 * (1 + p.pitch):.2f}",
                "--setf",
                f"int_f0_target_stddev={sd * max(1 + p.range, 0.05):.2f}",
            ]
            cents = 0.0
        else:  # rms: F0 settings are ignored, shift the pitch afterwards (range stays the voice's own)
            cents = 1200.0 * math.log2(max(1 + p.pitch, 0.2))
        wav = _run(cmd + ["-t", text, "-o", "/dev/stdout"])
    else:
        raise ValueError(f"unknown engine {speaker.engine!r}")
    x, rate = sf.read(io.BytesIO(wav), dtype="float32", always_2d=True)
    return x[:, 0], int(rate), cents


def _frame_rms(x: np.ndarray, rate: int, frame_s: float = 0.01) -> np.ndarray:
    n = max(1, int(rate * frame_s))
    m = len(x) // n
    if m == 0:
        return np.sqrt(np.mean(np.square(x, dtype=np.float64))).reshape(1)
    return np.sqrt(np.mean(np.square(x[: m * n].reshape(m, n), dtype=np.float64), axis=1))


def trim(x: np.ndarray, rate: int, threshold_db: float = -40.0) -> np.ndarray:
    """Cut leading/trailing frames quieter than ``threshold_db`` below the loudest 10 ms frame."""
    e = _frame_rms(x, rate)
    if e.max() <= 0:
        return x
    on = np.nonzero(e >= e.max() * 10 ** (threshold_db / 20))[0]
    n = max(1, int(rate * 0.01))
    return x[on[0] * n : min(len(x), (on[-1] + 1) * n)]


def active_rms(x: np.ndarray, rate: int, threshold_db: float = -30.0) -> float:
    """RMS over the 10 ms frames within ``threshold_db`` of the loudest one (speech level, pauses excluded)."""
    e = _frame_rms(x, rate)
    if e.max() <= 0:
        return 0.0
    act = e[e >= e.max() * 10 ** (threshold_db / 20)]
    return float(np.sqrt(np.mean(act**2)))


def set_active_level(x: np.ndarray, rate: int, dbfs: float) -> np.ndarray:
    """Scale so the active speech RMS is ``dbfs``."""
    r = active_rms(x, rate)
    return x if r <= 0 else (x * (10 ** (dbfs / 20) / r)).astype(np.float32)


def synthesize(
    speaker: Speaker, text: str, prosody: Prosody = Prosody(), *, sample_rate: int = 16000, telephone: bool = False
) -> np.ndarray:
    """Speech for ``text`` by ``speaker`` with ``prosody`` on top of the speaker's neutral baseline.

    Returns float32 mono at ``sample_rate`` (8 kHz and 300-3400 Hz when ``telephone``), trimmed to the speech,
    with the timbre (bass/treble) applied but at an arbitrary level: use :func:`set_active_level` next.
    """
    p = speaker.base.combine(prosody)
    x, rate, cents = _engine_audio(speaker, text, p)
    out_rate = 8000 if telephone else sample_rate
    effects: list[str] = []
    if abs(cents) > 1:
        effects += ["pitch", f"{cents:.1f}"]
    if abs(p.bass_db) > 0.05:
        effects += ["bass", f"{p.bass_db:.2f}", "200"]
    if abs(p.treble_db) > 0.05:
        effects += ["treble", f"{p.treble_db:.2f}", "2000"]
    if telephone:
        effects += ["sinc", "300-3400"]
    effects += ["rate", "-v", str(out_rate)]
    # Headroom before sox: EQ boosts must not clip in its integer pipeline; the level is set afterwards anyway.
    x = x * np.float32(0.25)
    raw = _run(
        [
            "sox",
            "-V1",
            "-D",
            "-t",
            "f32",
            "-r",
            str(rate),
            "-c",
            "1",
            "-",
            "-t",
            "f32",
            "-r",
            str(out_rate),
            "-c",
            "1",
            "-",
        ]
        + effects,
        x.astype("<f4").tobytes(),
    )
    y = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    return trim(y, out_rate)


def make_noise(n: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise: ``white``, ``pink`` (1/f) or ``brown`` (1/f^2)."""
    from scipy.signal import lfilter

    w = rng.standard_normal(n + 2048)
    if kind == "pink":  # Paul Kellet's economy 1/f filter
        w = lfilter(
            [0.049922035, -0.095993537, 0.050612699, -0.004408786], [1.0, -2.494956002, 2.017265875, -0.522189400], w
        )
    elif kind == "brown":
        w = lfilter([1.0], [1.0, -0.995], w)
    elif kind != "white":
        raise ValueError(f"unknown noise kind {kind!r}")
    w = w[2048:]  # drop the filters' start-up transient
    w = w - w.mean()
    return (w / (np.sqrt(np.mean(w**2)) + 1e-12)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------------


def check_tools() -> None:
    missing = [t for t in ("espeak-ng", "flite", "sox") if shutil.which(t) is None]
    if missing:
        raise RuntimeError(f"missing synthesis tools {missing}: apt-get install espeak-ng flite sox libsox-fmt-all")
