"""Channel-statistics resampling: training examples normalised with the statistics of a label-skewed part of their
channel instead of the whole channel (``train.stage*.stats_resample``).

Why: labeling normalises a segment by the statistics of its channel, and a call channel's emotion mix is whatever
the call was: a customer angry all call, an agent neutral throughout, an upset customer calming down. Training
channels have one mix each, so the model sees each channel's frames against one baseline only, and learns to read
"different from this channel's average" as the emotion. A channel that is one emotion all call then looks like
anyone's average (measured: archive angry recall 0.07-0.16 against 0.39 on validation). Resampling shows each
training turn against many baselines of its own voice -- its channel's statistics over a random subset of the
channel's turns whose label mix is drawn from a Dirichlet, as :func:`emoq_model.features.simulated_channels`
draws channels from isolated clips -- with the label unchanged, so the model must read the emotion from what
survives any mix: the frames relative to the subset's baseline together with the statistics frames that say how
that baseline sits against the training speakers' (``former.stats_frames``).

Labels only choose which turns a subset holds; the statistics never see them. Validation and labeling normalise
by the whole channel, unchanged. The frames are stored normalised by the whole channel, so a resampled item is an
affine map of them (``x_sub = x_full * std_full / std_sub + (mean_full - mean_sub) / std_sub``): no raw frames are
kept and the map costs one multiply-add per value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from emoq_model.features import N_STATS_FRAMES, FeatureNorm, GroupStats, StatsAccumulator, subset_stats


@dataclass
class Baseline:
    """One alternative baseline of a channel, as the affine map from its whole-channel normalisation."""

    scale: np.ndarray  # [L, D]: std_full / std_sub
    shift: np.ndarray  # [L, D]: (mean_full - mean_sub) / std_sub
    lead: np.ndarray | None  # [L, N_STATS_FRAMES, D]: the subset's statistics frames (former.stats_frames)
    utt_ids: list[str]  # the turns whose statistics these are


def skewed_subsets(
    utt_ids: Sequence[str],
    labels: Sequence[str],
    k: int,
    rng: np.random.Generator,
    concentration: float = 0.4,
    min_fraction: float = 0.3,
) -> list[list[str]]:
    """``k`` subsets of one channel's turns, each with a label mix from a symmetric Dirichlet(``concentration``)
    (small: one label dominates, as in a call that is one emotion throughout) and a size uniform between
    ``min_fraction`` of the channel and all of it (at least 2 turns), drawn without replacement."""
    ids = np.asarray(utt_ids, dtype=object)
    labs = np.asarray(labels, dtype=object)
    names = sorted(set(labs.tolist()))
    out = []
    for _ in range(k):
        w = dict(zip(names, rng.dirichlet([concentration] * len(names))))
        p = np.array([w[lab] for lab in labs], dtype=np.float64) + 1e-6
        n = int(round(rng.uniform(min_fraction, 1.0) * len(ids)))
        n = min(len(ids), max(2, n))
        out.append(sorted(ids[rng.choice(len(ids), size=n, replace=False, p=p / p.sum())].tolist()))
    return out


class ChannelResampler:
    """Per training channel, ``k`` alternative baselines drawn once (seeded); :meth:`apply` re-normalises a batch's
    items with one of them, each with probability ``p``."""

    def __init__(
        self,
        norm: FeatureNorm,
        groups: Mapping[str, str],
        labels: Mapping[str, str],
        full: Mapping[str, GroupStats],
        utterances: Mapping[str, StatsAccumulator],
        k: int = 8,
        seed: int = 0,
    ):
        """``groups``/``labels``: utt_id -> channel / label of the training turns; ``full``: each channel's whole
        statistics (what the stored items were normalised with); ``utterances``: each turn's own moments."""
        self.groups = dict(groups)
        members: dict[str, list[str]] = {}
        for u in sorted(self.groups):
            if u in utterances:
                members.setdefault(self.groups[u], []).append(u)
        rng = np.random.default_rng([int(seed), 7919])
        self.baselines: dict[str, list[Baseline]] = {}
        for g in sorted(members):
            ids = members[g]
            if len(ids) < 3 or g not in full:
                continue
            mean_f, std_f = norm.effective(full[g])
            alts = []
            for subset in skewed_subsets(ids, [labels[u] for u in ids], k, rng):
                mean_s, std_s = norm.effective(subset_stats(utterances, subset))
                lead = norm.statistics_frames(mean_s, std_s) if norm.stats_frames else None
                scale = (std_f.astype(np.float64) / std_s).astype(np.float32)
                shift = ((mean_f.astype(np.float64) - mean_s) / std_s).astype(np.float32)
                alts.append(Baseline(scale, shift, lead, subset))
            self.baselines[g] = alts
        self.n_lead = N_STATS_FRAMES if norm.stats_frames else 0

    def __len__(self) -> int:
        return len(self.baselines)

    def renormalise(self, frames: np.ndarray, b: Baseline) -> np.ndarray:
        """Whole-channel-normalised frames (``[L, T, D]`` or ``[T, D]``, statistics frames first when the model
        reads them) -> the same frames against baseline ``b``, in the input dtype."""
        squeeze = frames.ndim == 2
        x = frames[None] if squeeze else frames
        body = x[:, self.n_lead :].astype(np.float32) * b.scale[:, None, :] + b.shift[:, None, :]
        if b.lead is not None:
            body = np.concatenate([b.lead, body], axis=1)
        body = body.astype(frames.dtype)
        return body[0] if squeeze else body

    def apply(self, items: list[dict], p: float, rng: np.random.Generator) -> list[dict]:
        """Copies of ``items``, each re-normalised against one of its channel's baselines with probability ``p``
        (items of channels without baselines stay as they are). Draws nothing from ``rng`` when ``p`` is 0."""
        if p <= 0 or not self.baselines:
            return items
        out = []
        for it in items:
            alts = self.baselines.get(self.groups.get(it["utt_id"], ""))
            if not alts or rng.random() >= p:
                out.append(it)
                continue
            out.append({**it, "frames": self.renormalise(it["frames"], alts[int(rng.integers(len(alts)))])})
        return out
