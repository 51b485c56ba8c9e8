"""Conversation context: a segment's probabilities also draw on the same channel's other segments of the call.

Why: emotion in a call persists (an upset customer stays upset for minutes, a calm agent stays calm) while one
2-4 s segment is ambiguous (angry and happy share arousal, flat sadness sounds neutral). Conversational emotion
recognition models context for that reason (DialogueRNN, DialogueGCN on IEMOCAP/MELD). This is the lightest such
model, and it is *fitted*, not set: each segment's log-probabilities are averaged with those of its channel's other
segments, weighted by ``weight * exp(-|dt| / tau_s)`` (``dt`` between segment midpoints) and by each segment's
duration, so a turn that voice activity detection cut into three segments weighs as much as one uncut turn. The
segment itself has weight 1 (times its duration). ``weight = 0`` switches it off (the bundle default).

``(weight, tau_s)`` are chosen on the validation calls (:func:`fit_context`: a grid, validation UA), and the
calibration temperature is fitted after it; nothing comes from test data. Applied where probabilities leave the
model: the labeling stage (per recording and channel) and ``jobs/evaluate.py`` on call turns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)  # the grid fit_context searches (0 = no context)
TAUS_S = (5.0, 10.0, 20.0, 40.0, 80.0)


@dataclass(frozen=True)
class ChannelContext:
    """How much a segment's label leans on its channel's other segments (see the module docstring)."""

    weight: float = 0.0  # weight of another segment at dt = 0, relative to the segment itself (0: off)
    tau_s: float = 20.0  # time constant of the exponential decay with the distance between segment midpoints (s)

    def __post_init__(self):
        if not (self.weight >= 0.0 and np.isfinite(self.weight)):
            raise ValueError(f"context weight must be a finite number >= 0, got {self.weight}")
        if not self.tau_s > 0.0:
            raise ValueError(f"context tau_s must be > 0, got {self.tau_s}")

    @property
    def active(self) -> bool:
        return self.weight > 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> ChannelContext:
        return cls(**{k: float(v) for k, v in (d or {}).items() if k in ("weight", "tau_s")})

    def apply(
        self,
        probs: np.ndarray,
        groups: Sequence,
        start_s: Sequence[float],
        end_s: Sequence[float],
    ) -> np.ndarray:
        """Probabilities (rows sum to 1) after context; ``groups`` names each row's channel of its recording.
        Rows of different groups never mix; a group of one row is unchanged."""
        p = np.asarray(probs, dtype=np.float64)
        if not self.active or len(p) == 0:
            return p
        logp = np.log(np.clip(p, 1e-12, None))
        start, end = np.asarray(start_s, dtype=np.float64), np.asarray(end_s, dtype=np.float64)
        mid, dur = (start + end) / 2.0, np.clip(end - start, 1e-3, None)
        out = logp.copy()
        keys = np.asarray([str(g) for g in groups], dtype=object)
        for key in dict.fromkeys(keys.tolist()):
            idx = np.flatnonzero(keys == key)
            if idx.size < 2:
                continue
            k = self.weight * np.exp(-np.abs(mid[idx, None] - mid[None, idx]) / self.tau_s)
            np.fill_diagonal(k, 1.0)
            k *= dur[None, idx]
            out[idx] = (k @ logp[idx]) / k.sum(1, keepdims=True)
        out -= out.max(1, keepdims=True)
        e = np.exp(out)
        return e / e.sum(1, keepdims=True)


def unweighted_recall(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Mean recall over the classes present in ``y`` (UA)."""
    rec = [float((pred[y == c] == c).mean()) for c in range(n_classes) if (y == c).any()]
    return float(np.mean(rec)) if rec else 0.0


def fit_context(
    probs: np.ndarray,
    y: np.ndarray,
    groups: Sequence,
    start_s: Sequence[float],
    end_s: Sequence[float],
    weights: Sequence[float] = WEIGHTS,
    taus_s: Sequence[float] = TAUS_S,
) -> tuple[ChannelContext, list[dict]]:
    """The grid point with the best UA of ``y`` (validation labels) after context; ties go to the weaker context
    (smaller weight, then shorter tau). Returns it and every grid point's UA. Rows without times (NaN) make no
    context: off."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y, dtype=int)
    start, end = np.asarray(start_s, dtype=np.float64), np.asarray(end_s, dtype=np.float64)
    if len(y) == 0 or not (np.isfinite(start).all() and np.isfinite(end).all()):
        return ChannelContext(), []
    grid, best, best_ua = [], ChannelContext(), unweighted_recall(y, p.argmax(1), p.shape[1])
    grid.append({"weight": 0.0, "tau_s": None, "ua": best_ua})
    for w in sorted(x for x in weights if x > 0):
        for tau in sorted(taus_s):
            c = ChannelContext(float(w), float(tau))
            ua = unweighted_recall(y, c.apply(p, groups, start, end).argmax(1), p.shape[1])
            grid.append({"weight": float(w), "tau_s": float(tau), "ua": ua})
            if ua > best_ua + 1e-9:
                best, best_ua = c, ua
    return best, grid
