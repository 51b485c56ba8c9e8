"""The hostile-input matrix: 20 kinds of bad (and good) recordings, built in a folder, each with the error it must
give (None: it decodes). Shared by tests/reliability/test_inputs.py (no model) and test_job.py (through Ray + vLLM).
"""

import os
import struct
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 8000


def voiced(sec: float, sr: int = SR, f0: float = 180.0) -> np.ndarray:
    t = np.arange(int(sec * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * f0 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def speechlike(sec: float, sr: int = SR) -> np.ndarray:
    """Two voiced bursts with quiet around them (VAD finds two segments)."""
    q = lambda s: (0.001 * np.random.default_rng(0).standard_normal(int(s * sr))).astype(np.float32)  # noqa: E731
    return np.concatenate([q(0.5), voiced(1.2, sr), q(0.6), voiced(1.0, sr, 140), q(max(0.2, sec - 3.3))])


def wav_header(frames: int, sr: int = SR, channels: int = 1, bits: int = 16, data_size: int | None = None) -> bytes:
    block = channels * bits // 8
    size = frames * block if data_size is None else data_size
    return (
        b"RIFF"
        + struct.pack("<I", (36 + size) & 0xFFFFFFFF)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, sr, sr * block, block, bits)
        + b"data"
        + struct.pack("<I", size)
    )


def row(path, **kw) -> dict:
    return {
        "recording_id": "r",
        "path": str(path),
        "raw_path": None,
        "transcript": None,
        "channel_names": None,
        "given_segments": None,
        "error": None,
        **kw,
    }


# --------------------------------------------------------------------------------------- the matrix
# name -> (builder(dir) -> path, expected error substring, or None for "decodes and has speech")


def make_good(d):
    p = d / "good.wav"
    sf.write(p, speechlike(4), SR, subtype="PCM_16")
    return p


def make_truncated_header(d):
    p = d / "trunc_header.wav"
    p.write_bytes(make_good(d).read_bytes()[:20])
    return p


def make_truncated_data(d):
    p = d / "trunc_data.wav"
    p.write_bytes(make_good(d).read_bytes()[: 44 + SR])  # header says 4 s, the file holds 0.5 s
    return p


def make_text(d):
    p = d / "notes.wav"
    p.write_text("call notes: customer was happy\n" * 20)
    return p


def make_flac_named_wav(d):
    p = d / "really_flac.wav"
    sf.write(p, speechlike(4), SR, format="FLAC")
    return p


def make_zero_samples(d):
    p = d / "zero_samples.wav"
    p.write_bytes(wav_header(0))
    return p


def make_nan(d):
    p = d / "nan.wav"
    x = speechlike(3)
    x[1000:1010] = np.nan
    sf.write(p, x, SR, subtype="FLOAT")
    return p


def make_inf(d):
    p = d / "inf.wav"
    x = speechlike(3)
    x[5] = np.inf
    sf.write(p, x, SR, subtype="DOUBLE")
    return p


def make_silence(d):
    p = d / "silence.wav"
    sf.write(p, np.zeros(SR * 3, np.float32), SR)
    return p


def make_six_channels(d):
    p = d / "six.wav"
    sf.write(p, np.tile(speechlike(2)[:, None], (1, 6)), SR)
    return p


def make_rate_192k(d):
    p = d / "hires.wav"
    sf.write(p, speechlike(4, 192000), 192000, subtype="PCM_24")
    return p


def make_rate_4k(d):
    p = d / "narrow.wav"
    sf.write(p, speechlike(4, 4000), 4000, subtype="PCM_16")
    return p


def make_rate_2k(d):
    p = d / "toolow.wav"
    sf.write(p, speechlike(4, 2000), 2000, subtype="PCM_16")
    return p


def make_hours_sparse(d):
    """A real 5 h WAV (576 MB of zeros, sparse on disk: costs nothing to make)."""
    p = d / "five_hours.wav"
    frames = 5 * 3600 * 16000
    with open(p, "wb") as f:
        f.write(wav_header(frames, 16000))
        f.truncate(44 + 2 * frames)
    return p


def make_hours_claimed(d):
    """A 1 s WAV whose header claims 5 hours."""
    p = d / "liar.wav"
    p.write_bytes(wav_header(5 * 3600 * SR) + (voiced(1) * 32767).astype("<i2").tobytes())
    return p


def make_directory(d):
    p = d / "folder.wav"
    p.mkdir()
    return p


def make_dangling(d):
    p = d / "dangling.wav"
    p.symlink_to(d / "nowhere.wav")
    return p


def make_fifo(d):
    p = d / "pipe.wav"
    os.mkfifo(p)
    return p


def make_empty(d):
    p = d / "empty.wav"
    p.write_bytes(b"")
    return p


def make_missing(d):
    return d / "never_existed.wav"


MATRIX = {
    "good": (make_good, None),
    "zero_bytes": (make_empty, "empty file (0 bytes)"),
    "truncated_header": (make_truncated_header, "not a readable audio file"),
    "truncated_data": (make_truncated_data, "truncated audio data: the header declares 4.00 s, the file holds 0.50 s"),
    "text_named_wav": (make_text, "not a readable audio file"),
    "flac_named_wav": (make_flac_named_wav, None),
    "zero_samples": (make_zero_samples, "recording has 0 samples"),
    "nan_samples": (make_nan, "NaN or Inf"),
    "inf_samples": (make_inf, "NaN or Inf"),
    "all_silence": (make_silence, "no speech detected"),
    "six_channels": (make_six_channels, "6 channels, more than the limit of 4"),
    "rate_192k": (make_rate_192k, None),
    "rate_4k": (make_rate_4k, None),
    "rate_2k": (make_rate_2k, "sample rate 2000 Hz outside [4000, 384000]"),
    "five_hours_sparse": (make_hours_sparse, "recording is 18000 s, over the limit of 14400 s"),
    "header_claims_hours": (make_hours_claimed, "truncated audio data: the header declares 18000.00 s"),
    "directory": (make_directory, "not a regular file (a directory)"),
    "dangling_symlink": (make_dangling, "broken symbolic link"),
    "fifo": (make_fifo, "not a regular file (a pipe, device or socket)"),
    "missing": (make_missing, "file not found"),
}


def build_matrix(d: Path) -> dict[str, tuple[Path, str | None]]:
    """The bad-input matrix as files under ``d`` (also used by the end-to-end test)."""
    out = {}
    for name, (make, expect) in MATRIX.items():
        sub = d / name
        sub.mkdir(parents=True, exist_ok=True)
        out[name] = (make(sub), expect)
    return out
