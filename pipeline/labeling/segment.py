"""Speech segmentation: an energy-based voice-activity detector with min/max segment lengths.

Works per channel on mono float32 audio. Frame energies (dB) are compared against a threshold adapted to the
recording (noise floor + margin, never below an absolute floor), smoothed with hangover, then merged into
segments: gaps shorter than ``min_gap_s`` are bridged, segments shorter than ``min_speech_s`` dropped and ones
longer than ``max_segment_s`` split evenly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class VADConfig:
    frame_s: float = 0.02
    min_speech_s: float = 0.3  # shorter bursts are dropped (clicks, breaths)
    min_gap_s: float = 0.35  # pauses shorter than this do not split a turn
    max_segment_s: float = 12.0  # longer speech is split evenly
    min_segment_s: float = 0.5  # final segments shorter than this are padded out to it when possible
    pad_s: float = 0.1  # context added on both sides
    margin_db: float = 12.0  # speech must be this much above the noise floor ...
    floor_db: float = -55.0  # ... and above this absolute level (dBFS)
    noise_percentile: float = 10.0


def frame_energy_db(x: np.ndarray, frame: int, chunk_frames: int = 1 << 14) -> np.ndarray:
    """Per-frame RMS level in dBFS (non-overlapping frames), computed in chunks of ``chunk_frames`` frames so that
    the float64 working copy stays small (a few MB) however long the channel is."""
    n = len(x) // frame
    out = np.empty(n, dtype=np.float32)
    for i in range(0, n, chunk_frames):
        j = min(n, i + chunk_frames)
        fr = x[i * frame : j * frame].reshape(j - i, frame).astype(np.float64)
        out[i:j] = 20 * np.log10(np.sqrt(np.mean(fr * fr, axis=1) + 1e-20))
    return out


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index pairs of True runs."""
    if not mask.any():
        return []
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


def detect_speech(x: np.ndarray, sample_rate: int, cfg: VADConfig | None = None) -> list[tuple[float, float]]:
    """Speech segments of a mono signal as ``(start_s, end_s)`` pairs, in order, non-overlapping."""
    cfg = cfg or VADConfig()
    frame = max(1, int(round(cfg.frame_s * sample_rate)))
    db = frame_energy_db(x, frame)
    if db.size == 0:
        return []
    noise = float(np.percentile(db, cfg.noise_percentile))
    thr = max(noise + cfg.margin_db, cfg.floor_db)
    speech = db > thr
    # Bridge short gaps, then drop short bursts.
    gap = int(round(cfg.min_gap_s / cfg.frame_s))
    runs = _runs(speech)
    merged: list[list[int]] = []
    for s, e in runs:
        if merged and s - merged[-1][1] <= gap:
            merged[-1][1] = e
        else:
            merged.append([s, e])
    min_len = int(round(cfg.min_speech_s / cfg.frame_s))
    dur = len(x) / sample_rate
    out: list[tuple[float, float]] = []
    for s, e in merged:
        if e - s < min_len:
            continue
        start = max(0.0, s * cfg.frame_s - cfg.pad_s)
        end = min(dur, e * cfg.frame_s + cfg.pad_s)
        if out and start < out[-1][1]:  # padding made neighbours touch
            start = out[-1][1]
        out.extend(split_long(start, end, cfg.max_segment_s))
    return out


def split_long(start: float, end: float, max_len: float) -> list[tuple[float, float]]:
    """Split ``[start, end)`` into the fewest equal pieces no longer than ``max_len``."""
    n = max(1, int(np.ceil((end - start) / max_len - 1e-9)))
    step = (end - start) / n
    return [(start + i * step, start + (i + 1) * step) for i in range(n)]


def overlap_scores(pred: list[tuple[float, float]], ref: list[tuple[float, float]]) -> dict[str, float]:
    """Time-based precision, recall and F1 of predicted speech against reference speech (seconds)."""

    def total(segs: list[tuple[float, float]]) -> float:
        return float(sum(e - s for s, e in segs))

    inter = 0.0
    for ps, pe in pred:
        for rs, re_ in ref:
            inter += max(0.0, min(pe, re_) - max(ps, rs))
    p = inter / total(pred) if pred else 0.0
    r = inter / total(ref) if ref else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f}
