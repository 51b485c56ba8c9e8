"""Audio I/O in one place: decode bytes or files to float32 arrays and resample.

soundfile (libsndfile) handles WAV (PCM, float, µ-law, A-law, GSM 6.10), FLAC, OGG/Vorbis/Opus and MP3; PyAV is
used, when installed, for anything else. A GPU install with a matching torchaudio could swap in here.

Memory safety: files are decoded from a (seekable) file object in blocks, never read whole into memory first. The
header is checked before any sample is decoded (:func:`probe_file`): a recording whose header says it is longer
than ``max_duration_s`` is refused without decoding, a WAV whose header promises more data than the file holds is
reported as truncated, and the block-wise decode stops as soon as it passes the limit (for formats whose header
understates the length). Resampling is streamed block by block (``soxr.ResampleStream``; identical output to a
one-shot ``soxr.resample``), so only the output array is ever held whole.
"""

from __future__ import annotations

import io
import math
import os
import re
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

from emoq_model.errors import EmoQError

BLOCK_FRAMES = 1 << 16  # frames per decode block
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".oga", ".au", ".aiff", ".aif", ".gsm", ".m4a", ".webm")


class AudioError(EmoQError, ValueError):
    """A recording that cannot be decoded or is unusable; the message is user-facing."""


@dataclass
class Audio:
    """Decoded audio: ``samples`` is float32 ``[channels, frames]`` at ``sample_rate``.

    ``source_rate`` / ``source_frames`` describe the file before resampling (equal to the above when not resampled).
    """

    samples: np.ndarray
    sample_rate: int
    source_rate: int | None = None
    source_frames: int | None = None

    @property
    def num_channels(self) -> int:
        return int(self.samples.shape[0])

    @property
    def num_frames(self) -> int:
        return int(self.samples.shape[1])

    @property
    def duration_s(self) -> float:
        if self.source_rate and self.source_frames is not None:
            return self.source_frames / float(self.source_rate)
        return self.num_frames / float(self.sample_rate)


@dataclass
class Header:
    """What the file's header says, read without decoding samples."""

    sample_rate: int
    channels: int
    frames: int  # frames libsndfile will deliver (0 if unknown/empty)
    format: str
    subtype: str
    declared_frames: int | None = None  # WAV: frames the data chunk declares (more than ``frames`` if truncated)

    @property
    def duration_s(self) -> float:
        return self.frames / float(self.sample_rate) if self.sample_rate > 0 else 0.0

    @property
    def truncated(self) -> bool:
        return self.declared_frames is not None and self.declared_frames > self.frames

    def truncation_message(self) -> str:
        declared = self.declared_frames / float(self.sample_rate) if self.sample_rate > 0 else float("nan")
        return f"truncated audio data: the header declares {declared:.2f} s, the file holds {self.duration_s:.2f} s"


def _reason(e: Exception) -> str:
    """libsndfile's message without the object repr it starts with."""
    return re.sub(r"^Error opening <[^>]*>: |^Error opening '[^']*': ", "", str(e)).strip()


def probe(data: bytes) -> sf._SoundFileInfo:
    """Header information (rate, channels, frames, format) of in-memory bytes without decoding the samples."""
    try:
        return sf.info(io.BytesIO(data))
    except Exception as e:  # libsndfile raises several types
        raise AudioError(f"not a readable audio file: {_reason(e)}") from None


def _wav_declared_bytes(f) -> tuple[int, int] | None:
    """(declared, available) bytes of a RIFF/WAVE ``data`` chunk, None if not a plain WAV or size unknown."""
    f.seek(0, os.SEEK_END)
    end = f.tell()
    f.seek(0)
    head = f.read(12)
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
        return None
    order = "little" if head[:4] == b"RIFF" else "big"
    pos = 12
    for _ in range(10000):  # bounded walk over the chunk list
        if pos + 8 > end:
            return None
        f.seek(pos)
        ck = f.read(8)
        if len(ck) < 8:
            return None
        size = int.from_bytes(ck[4:], order)
        if ck[:4] == b"data":
            if size == 0 or size >= 0x7FFF0000:  # placeholders of streamed / unfinished WAVs (espeak-ng --stdout
                return None  # writes 0x7FFFFFFF, others 0 or 0xFFFFFFFF): length unknown, not truncated
            return size, end - pos - 8
        pos += 8 + size + (size & 1)
    return None


def probe_file(f) -> Header:
    """Header of an open, seekable binary file object (nothing is decoded). Raises :class:`AudioError`."""
    try:
        f.seek(0)
        info = sf.info(f)
    except Exception as e:
        raise AudioError(f"not a readable audio file: {_reason(e)}") from None
    h = Header(int(info.samplerate), int(info.channels), max(0, int(info.frames)), info.format, info.subtype)
    if info.format in ("WAV", "WAVEX") and h.frames > 0:
        try:
            sizes = _wav_declared_bytes(f)
        except OSError:
            sizes = None
        if sizes is not None:
            declared, available = sizes
            if declared > available and available > 0:
                h.declared_frames = int(round(h.frames * declared / available))
    f.seek(0)
    return h


def check_duration(seconds: float, max_duration_s: float | None, what: str = "recording") -> None:
    if max_duration_s is not None and seconds > max_duration_s:
        raise AudioError(f"{what} is {seconds:.0f} s, over the limit of {max_duration_s:.0f} s")


class _Buffer:
    """Growable ``[channels, frames]`` float32 buffer (one allocation when the size estimate is right)."""

    def __init__(self, channels: int, capacity: int):
        self.a = np.empty((channels, max(capacity, 1)), np.float32)
        self.n = 0

    def add(self, block: np.ndarray) -> None:  # block: [frames, channels]
        k = block.shape[0]
        if self.n + k > self.a.shape[1]:
            grown = np.empty((self.a.shape[0], max(2 * self.a.shape[1], self.n + k)), np.float32)
            grown[:, : self.n] = self.a[:, : self.n]
            self.a = grown
        self.a[:, self.n : self.n + k] = block.T
        self.n += k

    def result(self) -> np.ndarray:
        if self.a.shape[1] - self.n > 1024:  # a large over-estimate: give the memory back
            return np.ascontiguousarray(self.a[:, : self.n])
        return self.a[:, : self.n]


def decode_file(
    f,
    max_duration_s: float | None = None,
    target_rate: int | None = None,
    allow_truncated: bool = False,
    header: Header | None = None,
) -> Audio:
    """Decode an open, seekable binary file object block by block, optionally resampling to ``target_rate``.

    Refuses (with :class:`AudioError`) before decoding when the header is over ``max_duration_s`` or (unless
    ``allow_truncated``) promises more data than the file holds; stops decoding once over the limit.
    """
    try:
        h = header or probe_file(f)
    except AudioError as e:
        f.seek(0)
        return _validate(_decode_pyav(f, str(e), max_duration_s, target_rate), max_duration_s)
    if h.sample_rate <= 0:
        raise AudioError(f"invalid sample rate {h.sample_rate}")
    check_duration(h.duration_s, max_duration_s)
    if h.truncated and not allow_truncated:
        raise AudioError(h.truncation_message())
    rate_out = int(target_rate or h.sample_rate)
    max_frames = None if max_duration_s is None else int(math.floor(max_duration_s * h.sample_rate)) + 1
    stream = (
        soxr.ResampleStream(h.sample_rate, rate_out, h.channels, dtype="float32", quality="HQ")
        if rate_out != h.sample_rate
        else None
    )
    buf = _Buffer(h.channels, int(math.ceil(h.frames * rate_out / h.sample_rate)) + 64)
    n_in = 0
    f.seek(0)
    try:
        with sf.SoundFile(f) as snd:
            while True:
                block = snd.read(BLOCK_FRAMES, dtype="float32", always_2d=True)
                if block.shape[0] == 0:
                    break
                n_in += block.shape[0]
                if max_frames is not None and n_in > max_frames:
                    raise AudioError(
                        f"recording is longer than the limit of {max_duration_s:.0f} s "
                        f"(header said {h.duration_s:.0f} s)"
                    )
                if not np.isfinite(block).all():
                    raise AudioError("samples contain NaN or Inf")
                buf.add(stream.resample_chunk(block) if stream else block)
            if stream is not None:
                buf.add(stream.resample_chunk(np.zeros((0, h.channels), np.float32), last=True))
    except AudioError:
        raise
    except Exception as e:
        raise AudioError(f"truncated or corrupt audio data: {_reason(e)}") from None
    if n_in == 0:
        raise AudioError("recording has 0 samples" + (" (empty or truncated stream)" if h.frames == 0 else ""))
    return _validate(Audio(buf.result(), rate_out, h.sample_rate, n_in), max_duration_s)


def _decode_pyav(src, reason: str, max_duration_s: float | None = None, target_rate: int | None = None) -> Audio:
    """Fallback decoder for formats libsndfile does not know (``src``: bytes or a binary file object)."""
    try:
        import av  # optional dependency
    except ImportError:
        raise AudioError(f"{reason} (PyAV not installed for other formats)") from None
    try:
        with av.open(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src) as container:
            if not container.streams.audio:
                raise AudioError("no audio stream")
            stream = container.streams.audio[0]
            rate = int(stream.rate)
            limit = None if max_duration_s is None else max_duration_s * rate
            chunks, n = [], 0
            for frame in container.decode(stream):
                a = frame.to_ndarray().astype(np.float32)
                a = a[None] if a.ndim == 1 else a
                n += a.shape[1]
                if limit is not None and n > limit:
                    raise AudioError(f"recording is longer than the limit of {max_duration_s:.0f} s")
                chunks.append(a)
        if not chunks:
            raise AudioError("recording has 0 samples")
        arr = np.ascontiguousarray(np.concatenate(chunks, axis=1))
        if not np.isfinite(arr).all():
            raise AudioError("samples contain NaN or Inf")
        out = resample(arr, rate, target_rate) if target_rate and target_rate != rate else arr
        return Audio(np.ascontiguousarray(out), int(target_rate or rate), rate, arr.shape[1])
    except AudioError:
        raise
    except Exception as e:
        raise AudioError(f"not a readable audio file: {e}") from None


def decode(
    data: bytes, max_duration_s: float | None = None, target_rate: int | None = None, allow_truncated: bool = False
) -> Audio:
    """Decode an in-memory audio file. Raises :class:`AudioError` with a clear reason on bad input."""
    if not data:
        raise AudioError("empty file (0 bytes)")
    return decode_file(io.BytesIO(data), max_duration_s, target_rate, allow_truncated)


def _validate(audio: Audio, max_duration_s: float | None) -> Audio:
    if audio.num_frames == 0:
        raise AudioError("recording has 0 samples")
    if audio.sample_rate <= 0:
        raise AudioError(f"invalid sample rate {audio.sample_rate}")
    check_duration(audio.duration_s, max_duration_s)
    if not np.isfinite(audio.samples).all():
        raise AudioError("samples contain NaN or Inf")
    return audio


def load(
    path: str | bytes | os.PathLike,
    max_duration_s: float | None = None,
    target_rate: int | None = None,
    allow_truncated: bool = False,
) -> Audio:
    """Read and decode a local audio file (streamed from disk; ``FileNotFoundError`` if it does not exist)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise AudioError("empty file (0 bytes)")
        return decode_file(f, max_duration_s, target_rate, allow_truncated)


def resample(samples: np.ndarray, rate_in: float, rate_out: float) -> np.ndarray:
    """Band-limited resampling (soxr, high quality) of ``[frames]`` or ``[channels, frames]`` float32; rates need
    not be integers (speed perturbation resamples by a factor)."""
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
