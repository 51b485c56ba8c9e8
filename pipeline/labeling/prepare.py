"""Per-recording preparation inside Ray Data: open, check the header, decode, resample, split channels, segment.

One input row (a recording) yields one output row holding all its speech segments, so that a recording stays
whole through the pipeline and output files only ever contain complete recordings (see ``sink``). A recording
that cannot be used yields the same row with ``error`` set and no segments; it is never dropped.

Memory: a file is checked from its header (size, rate, channels, duration, decoded size) before any sample is
decoded, then decoded and resampled block by block (``audio.decode_file``); only the resampled recording and its
speech segments are ever held whole. Non-regular files (FIFOs, devices) are refused without reading.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field

import numpy as np
import pyarrow.fs as pafs

from emoq_model.io import resolve
from pipeline import audio
from pipeline.labeling import columns as C
from pipeline.labeling.segment import VADConfig, detect_speech, split_long


@dataclass
class PrepareConfig:
    sample_rate: int = 16000  # the encoder's rate
    max_duration_s: float = 4 * 3600.0  # longer recordings are refused from the header, before decoding
    max_bytes: int = 2 * 1024**3  # larger files are refused before reading
    max_decoded_mb: float = 4096.0  # refuse if channels x duration at ``sample_rate`` (float32) is larger
    max_channels: int = 4
    min_sample_rate: int = 4000
    max_sample_rate: int = 384000
    allow_truncated: bool = False  # True: label what a truncated WAV holds instead of refusing it
    vad: VADConfig = field(default_factory=VADConfig)


PREPARED_COLUMNS = C.PREPARED


def _check_regular(st: os.stat_result) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise audio.AudioError("not a regular file (a directory)")
    if not stat.S_ISREG(st.st_mode):  # FIFOs, devices, sockets: reading could block forever or never end
        raise audio.AudioError("not a regular file (a pipe, device or socket)")


def open_source(uri: str, max_bytes: int, raw_path: bytes | None = None):
    """An open, seekable binary file for a recording, after checking it is a regular file within ``max_bytes``.

    Local files are opened directly (``raw_path``: exact bytes of a name that is not UTF-8); URIs through
    pyarrow. Raises :class:`audio.AudioError` with the reason (missing, vanished, broken link, not a file, ...).
    """
    fs, path = resolve(uri) if raw_path is None else (pafs.LocalFileSystem(), None)
    if isinstance(fs, pafs.LocalFileSystem):
        local = raw_path if raw_path is not None else path
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused right after by fstat
            fd = os.open(local, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            if os.path.lexists(local):
                raise audio.AudioError("broken symbolic link (target missing)") from None
            raise audio.AudioError("file not found (missing or vanished)") from None
        except IsADirectoryError:
            raise audio.AudioError("not a regular file (a directory)") from None
        except OSError as e:
            raise audio.AudioError(f"cannot read file: {e.strerror or e}") from None
        try:
            st = os.fstat(fd)
            _check_regular(st)
            os.set_blocking(fd, True)
            size = st.st_size
        except BaseException:
            os.close(fd)
            raise
        f = os.fdopen(fd, "rb")
    else:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise audio.AudioError("file not found (missing or vanished)")
        if info.type != pafs.FileType.File:
            raise audio.AudioError("not a regular file")
        size = info.size
        try:
            f = fs.open_input_file(path)
        except FileNotFoundError:
            raise audio.AudioError("file not found (missing or vanished)") from None
        except OSError as e:
            raise audio.AudioError(f"cannot read file: {e}") from None
    if size == 0:
        f.close()
        raise audio.AudioError("empty file (0 bytes)")
    if size is not None and size > max_bytes:
        f.close()
        raise audio.AudioError(f"file is {size} bytes, over the limit of {max_bytes}")
    return f


def read_bytes(uri: str, max_bytes: int) -> bytes:
    """The whole file (small files only; the pipeline itself streams through :func:`open_source`)."""
    with open_source(uri, max_bytes) as f:
        try:
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
            raise audio.AudioError(
                f"given segment starts at {start} s, after the end of the recording ({duration:.2f} s)"
            )
        out.append((idx, start, end, s.get("transcript", transcript)))
    return out


def check_header(h: audio.Header, cfg: PrepareConfig) -> None:
    """Refuse a recording from its header alone: rate, channels, duration and decoded size limits."""
    if not cfg.min_sample_rate <= h.sample_rate <= cfg.max_sample_rate:
        raise audio.AudioError(f"sample rate {h.sample_rate} Hz outside [{cfg.min_sample_rate}, {cfg.max_sample_rate}]")
    if h.channels > cfg.max_channels:
        raise audio.AudioError(f"{h.channels} channels, more than the limit of {cfg.max_channels}")
    audio.check_duration(h.duration_s, cfg.max_duration_s)
    decoded_mb = h.channels * h.duration_s * cfg.sample_rate * 4 / 2**20
    if decoded_mb > cfg.max_decoded_mb:
        raise audio.AudioError(
            f"{h.channels} channels x {h.duration_s:.0f} s would decode to {decoded_mb:.0f} MB, "
            f"over the limit of {cfg.max_decoded_mb:.0f} MB"
        )
    if h.truncated and not cfg.allow_truncated:
        raise audio.AudioError(h.truncation_message())


def prepare_recording(row: dict, cfg: PrepareConfig) -> dict:
    """Decode and segment one recording (``row`` from :meth:`SourceRecord.to_row`)."""
    out = {k: row.get(k) for k in ("recording_id", "path")}
    out.update(
        channel_names=row.get("channel_names"),
        duration_s=None,
        source_sample_rate=None,
        num_channels=None,
        error=row.get("error"),
    )
    segs: list[tuple[int, float, float, str | None]] = []
    x = None
    try:
        if out["error"]:
            raise audio.AudioError(out["error"])
        with open_source(row["path"], cfg.max_bytes, row.get("raw_path")) as f:
            h = audio.probe_file(f)
            out.update(duration_s=h.duration_s, source_sample_rate=h.sample_rate, num_channels=h.channels)
            check_header(h, cfg)  # nothing decoded yet
            rec = audio.decode_file(
                f, cfg.max_duration_s, target_rate=cfg.sample_rate, allow_truncated=cfg.allow_truncated, header=h
            )
        out["duration_s"] = rec.duration_s
        names = (
            row["channel_names"].split(",")
            if row.get("channel_names")
            else (["mono"] if rec.num_channels == 1 else [f"ch{i}" for i in range(rec.num_channels)])
        )
        if len(names) != rec.num_channels:
            raise audio.AudioError(f"manifest names {len(names)} channels, recording has {rec.num_channels}")
        out["channel_names"] = ",".join(names)
        x = rec.samples  # [channels, frames] at cfg.sample_rate
        sr = cfg.sample_rate
        if row.get("given_segments"):
            segs = _given_segments(row["given_segments"], names, rec.duration_s, row.get("transcript"))
            # split given segments that are too long for the encoder
            segs = [(c, a, b, t) for c, s0, e0, t in segs for a, b in split_long(s0, e0, cfg.vad.max_segment_s)]
        else:
            for c in range(rec.num_channels):
                segs += [(c, s, e, row.get("transcript")) for s, e in detect_speech(x[c], sr, cfg.vad)]
        if not segs:
            out["error"] = "no speech detected"
    except audio.AudioError as e:
        out["error"] = str(e)
        segs = []
    except Exception as e:  # never let one recording stop the job
        out["error"] = f"unexpected {type(e).__name__}: {e}"
        segs = []
    # the segments' samples, copied once into one buffer (the mix of all channels where no channel is named)
    bounds = [(c, int(round(s * cfg.sample_rate)), int(round(e * cfg.sample_rate))) for c, s, e, _ in segs]
    bounds = [(c, a, max(a, min(b, x.shape[1]))) for c, a, b in bounds] if x is not None else []
    lengths = np.array([b - a for _, a, b in bounds], dtype=np.int64)
    buf = np.empty(int(lengths.sum()), np.float32)
    pos = 0
    for c, a, b in bounds:
        buf[pos : pos + b - a] = x[:, a:b].mean(axis=0) if c < 0 else x[c, a:b]
        pos += b - a
    del x
    out["audio"] = buf
    out["seg_offsets"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    out["seg_channel"] = np.array([s[0] for s in segs], dtype=np.int32)
    out["seg_start_s"] = np.array([s[1] for s in segs], dtype=np.float64)
    out["seg_end_s"] = np.array([s[2] for s in segs], dtype=np.float64)
    out["seg_transcript"] = json.dumps([s[3] for s in segs])
    return out


def split_segments(row: dict) -> list[np.ndarray]:
    """The segment waveforms of a prepared row (views into its ``audio``)."""
    off = row["seg_offsets"]
    return [row["audio"][off[i] : off[i + 1]] for i in range(len(off) - 1)]


def _text(v) -> str | None:
    """Ray hands missing strings over as None or NaN; normalise to None."""
    return v if isinstance(v, str) else None


def _bytes(v) -> bytes | None:
    return bytes(v) if isinstance(v, (bytes, bytearray, np.bytes_)) else None


def prepare_batch(batch: dict, cfg: PrepareConfig) -> dict:
    """``map_batches`` function: decode and segment a batch of recordings (numpy dict-of-columns batches)."""
    n = len(batch["recording_id"])
    rows = [
        prepare_recording({k: (_bytes(batch[k][i]) if k == "raw_path" else _text(batch[k][i])) for k in batch}, cfg)
        for i in range(n)
    ]
    return {k: [r[k] for r in rows] for k in PREPARED_COLUMNS}


prepare_batch.columns = C.PREPARE  # what the stage reads and writes (checked at plan time)
