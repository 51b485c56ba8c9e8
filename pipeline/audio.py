"""Audio I/O in one place: decode bytes or files to float32 arrays and resample.

soundfile (libsndfile) handles WAV (PCM, float, µ-law, A-law, GSM 6.10), FLAC, OGG/Vorbis/Opus and MP3; PyAV is
used, when installed, for anything else. A GPU install with a matching torchaudio could swap in here.
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr


class AudioError(ValueError):
    """A recording that cannot be decoded or is unusable; the message is user-facing."""


@dataclass
class Audio:
    """Decoded audio: ``samples`` is float32 ``[channels, frames]``."""

    samples: np.ndarray
    sample_rate: int

    @property
    def num_channels(self) -> int:
        return int(self.samples.shape[0])

    @property
    def num_frames(self) -> int:
        return int(self.samples.shape[1])

    @property
    def duration_s(self) -> float:
        return self.num_frames / float(self.sample_rate)


def probe(data: bytes) -> sf._SoundFileInfo:
    """Header information (rate, channels, frames, format) without decoding the samples."""
    try:
        return sf.info(io.BytesIO(data))
    except Exception as e:  # libsndfile raises several types
        raise AudioError(f"not a readable audio file: {_reason(e)}") from None


def _reason(e: Exception) -> str:
    """libsndfile's message without the object repr it starts with."""
    return re.sub(r"^Error opening <[^>]*>: ", "", str(e)).strip()


def _decode_pyav(data: bytes, reason: str) -> Audio:
    try:
        import av  # optional dependency
    except ImportError:
        raise AudioError(f"not a readable audio file ({reason}; PyAV not installed for other formats)") from None
    try:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.audio[0]
            chunks = [f.to_ndarray().astype(np.float32) for f in container.decode(stream)]
            rate = stream.rate
        if not chunks:
            raise AudioError("audio stream has no frames")
        arr = np.concatenate(chunks, axis=1)
        if arr.ndim == 1:
            arr = arr[None]
        return Audio(np.ascontiguousarray(arr), int(rate))
    except AudioError:
        raise
    except Exception as e:
        raise AudioError(f"not a readable audio file: {e}") from None


def decode(data: bytes, max_duration_s: float | None = None) -> Audio:
    """Decode an in-memory audio file. Raises :class:`AudioError` with a clear reason on bad input."""
    if not data:
        raise AudioError("empty file (0 bytes)")
    try:
        info = sf.info(io.BytesIO(data))
    except Exception as e:
        return _validate(_decode_pyav(data, _reason(e)), max_duration_s)
    if max_duration_s is not None and info.frames / max(info.samplerate, 1) > max_duration_s:
        raise AudioError(f"recording is {info.frames / info.samplerate:.0f} s, over the limit of {max_duration_s:.0f} s")
    try:
        arr, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as e:
        raise AudioError(f"truncated or corrupt audio data: {_reason(e)}") from None
    return _validate(Audio(np.ascontiguousarray(arr.T), int(rate)), max_duration_s)


def _validate(audio: Audio, max_duration_s: float | None) -> Audio:
    if audio.num_frames == 0:
        raise AudioError("recording has 0 samples")
    if audio.sample_rate <= 0:
        raise AudioError(f"invalid sample rate {audio.sample_rate}")
    if max_duration_s is not None and audio.duration_s > max_duration_s:
        raise AudioError(f"recording is {audio.duration_s:.0f} s, over the limit of {max_duration_s:.0f} s")
    if not np.isfinite(audio.samples).all():
        raise AudioError("samples contain NaN or Inf")
    return audio


def load(path: str, max_duration_s: float | None = None) -> Audio:
    """Read and decode a local audio file."""
    with open(path, "rb") as f:
        return decode(f.read(), max_duration_s)


def resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling (soxr, high quality) of ``[frames]`` or ``[channels, frames]`` float32."""
    if rate_in == rate_out:
        return samples.astype(np.float32, copy=False)
    if samples.ndim == 1:
        return soxr.resample(samples, rate_in, rate_out, quality="HQ").astype(np.float32, copy=False)
    out = soxr.resample(np.ascontiguousarray(samples.T), rate_in, rate_out, quality="HQ")
    return np.ascontiguousarray(np.asarray(out, dtype=np.float32).reshape(-1, samples.shape[0]).T)


def load_mono(path: str, rate: int = 16000) -> np.ndarray:
    """Convenience: a file as mono float32 at ``rate`` (channels averaged)."""
    audio = load(path)
    return resample(audio.samples.mean(axis=0), audio.sample_rate, rate)
