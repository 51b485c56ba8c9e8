"""Per-recording preparation inside Ray Data: open, check the header, decode, resample, split channels, segment.

One input row (a recording) yields one output row holding all its speech segments, so that a recording stays
whole through the pipeline and output files only ever contain complete recordings (see ``sink``). A recording
that cannot be used yields the same row with ``error`` set and no segments; it is never dropped.

Reading goes through :func:`pipeline.decode.load_recording`, the one decode path feature extraction uses too: a
file is checked from its header (size, rate, channels, duration, decoded size) before any sample is decoded, then
decoded and resampled block by block; only the resampled recording and its speech segments are ever held whole.
Non-regular files (FIFOs, devices) are refused without reading; a tar shard's member is read through a window.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from pipeline import audio
from pipeline.decode import DecodeLimits, MemberSpan, load_recording
from pipeline.labeling import columns as C
from pipeline.labeling.segment import VADConfig, detect_speech, split_long


@dataclass
class PrepareConfig(DecodeLimits):
    """The decode limits (:class:`~pipeline.decode.DecodeLimits`, shared with feature extraction) and VAD."""

    vad: VADConfig = field(default_factory=VADConfig)


PREPARED_COLUMNS = C.PREPARED


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
        member = MemberSpan.from_json(row["member"]) if row.get("member") else None

        def seen(h: audio.Header) -> None:
            out.update(duration_s=h.duration_s, source_sample_rate=h.sample_rate, num_channels=h.channels)

        _, rec = load_recording(row["path"], cfg, row.get("raw_path"), member, on_header=seen)
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
