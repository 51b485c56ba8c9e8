"""Per-recording preparation inside Ray Data: read bytes, decode, resample, split channels, segment.

One input row (a recording) yields one output row holding all its speech segments, so that a recording stays
whole through the pipeline and output files only ever contain complete recordings (see ``sink``). A recording
that cannot be used yields the same row with ``error`` set and no segments; it is never dropped.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow.fs as pafs

from pipeline import audio
from pipeline.segment import VADConfig, detect_speech, split_long
from pipeline.sources import resolve


@dataclass
class PrepareConfig:
    sample_rate: int = 16000  # the encoder's rate
    max_duration_s: float = 4 * 3600.0  # longer recordings are refused before decoding
    max_bytes: int = 2 * 1024**3
    max_channels: int = 4
    min_sample_rate: int = 4000
    max_sample_rate: int = 384000
    vad: VADConfig = field(default_factory=VADConfig)


PREPARED_COLUMNS = (
    "recording_id", "path", "channel_names", "duration_s", "source_sample_rate", "num_channels", "error",
    "audio", "seg_offsets", "seg_channel", "seg_start_s", "seg_end_s", "seg_transcript",
)


def read_bytes(uri: str, max_bytes: int) -> bytes:
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise audio.AudioError("file not found (missing or vanished)")
    if info.type != pafs.FileType.File:
        raise audio.AudioError("not a regular file")
    if info.size is not None and info.size > max_bytes:
        raise audio.AudioError(f"file is {info.size} bytes, over the limit of {max_bytes}")
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except OSError as e:
        raise audio.AudioError(f"cannot read file: {e}") from None


def _given_segments(text: str, names: list[str], duration: float, transcript: str | None):
    """(channel index or -1 for the mix, start, end, transcript) from a manifest's JSON segment list."""
    out = []
    for s in json.loads(text):
        if isinstance(s, (list, tuple)):
            s = {"start": s[0], "end": s[1]}
        ch = s.get("channel")
        if ch is None:
            idx = 0 if len(names) == 1 else -1
        elif isinstance(ch, int) and 0 <= ch < len(names):
            idx = ch
        elif str(ch) in names:
            idx = names.index(str(ch))
        else:
            raise audio.AudioError(f"given segment names channel {ch!r}, recording has {names}")
        start, end = float(s["start"]), min(float(s["end"]), duration)
        if start >= duration:
            raise audio.AudioError(f"given segment starts at {start} s, after the end of the recording ({duration:.2f} s)")
        out.append((idx, start, end, s.get("transcript", transcript)))
    return out


def prepare_recording(row: dict, cfg: PrepareConfig) -> dict:
    """Decode and segment one recording (``row`` from :meth:`SourceRecord.to_row`)."""
    out = {k: row.get(k) for k in ("recording_id", "path")}
    out.update(channel_names=row.get("channel_names"), duration_s=None, source_sample_rate=None, num_channels=None,
               error=row.get("error"))
    segs: list[tuple[int, float, float, str | None]] = []
    pieces: list[np.ndarray] = []
    try:
        if out["error"]:
            raise audio.AudioError(out["error"])
        data = read_bytes(row["path"], cfg.max_bytes)
        rec = audio.decode(data, cfg.max_duration_s)
        out.update(duration_s=rec.duration_s, source_sample_rate=rec.sample_rate, num_channels=rec.num_channels)
        if not cfg.min_sample_rate <= rec.sample_rate <= cfg.max_sample_rate:
            raise audio.AudioError(f"sample rate {rec.sample_rate} Hz outside [{cfg.min_sample_rate}, {cfg.max_sample_rate}]")
        if rec.num_channels > cfg.max_channels:
            raise audio.AudioError(f"{rec.num_channels} channels, more than the limit of {cfg.max_channels}")
        names = row["channel_names"].split(",") if row.get("channel_names") else (
            ["mono"] if rec.num_channels == 1 else [f"ch{i}" for i in range(rec.num_channels)])
        if len(names) != rec.num_channels:
            raise audio.AudioError(f"manifest names {len(names)} channels, recording has {rec.num_channels}")
        out["channel_names"] = ",".join(names)
        x = audio.resample(rec.samples, rec.sample_rate, cfg.sample_rate)
        sr = cfg.sample_rate
        if row.get("given_segments"):
            segs = _given_segments(row["given_segments"], names, rec.duration_s, row.get("transcript"))
            # split given segments that are too long for the encoder
            segs = [(c, a, b, t) for c, s0, e0, t in segs for a, b in split_long(s0, e0, cfg.vad.max_segment_s)]
        else:
            for c in range(rec.num_channels):
                segs += [(c, s, e, row.get("transcript")) for s, e in detect_speech(x[c], sr, cfg.vad)]
        for c, s, e, _ in segs:
            sig = x.mean(axis=0) if c < 0 else x[c]
            pieces.append(sig[int(round(s * sr)): int(round(e * sr))])
        if not segs:
            out["error"] = "no speech detected"
    except audio.AudioError as e:
        out["error"] = str(e)
        segs, pieces = [], []
    except Exception as e:  # never let one recording stop the job
        out["error"] = f"unexpected {type(e).__name__}: {e}"
        segs, pieces = [], []
    lengths = np.array([len(p) for p in pieces], dtype=np.int64)
    out["audio"] = np.concatenate(pieces).astype(np.float32) if pieces else np.zeros(0, np.float32)
    out["seg_offsets"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    out["seg_channel"] = np.array([s[0] for s in segs], dtype=np.int32)
    out["seg_start_s"] = np.array([s[1] for s in segs], dtype=np.float64)
    out["seg_end_s"] = np.array([s[2] for s in segs], dtype=np.float64)
    out["seg_transcript"] = json.dumps([s[3] for s in segs])
    return out


def split_segments(row: dict) -> list[np.ndarray]:
    """The segment waveforms of a prepared row (views into its ``audio``)."""
    off = row["seg_offsets"]
    return [row["audio"][off[i]: off[i + 1]] for i in range(len(off) - 1)]


def _text(v) -> str | None:
    """Ray hands missing strings over as None or NaN; normalise to None."""
    return v if isinstance(v, str) else None


def prepare_batch(batch: dict, cfg: PrepareConfig) -> dict:
    """``map_batches`` function: decode and segment a batch of recordings (numpy dict-of-columns batches)."""
    n = len(batch["recording_id"])
    rows = [prepare_recording({k: _text(batch[k][i]) for k in batch}, cfg) for i in range(n)]
    return {k: [r[k] for r in rows] for k in PREPARED_COLUMNS}
