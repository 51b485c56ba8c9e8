"""A worker's training data: its shard of the feature cache, normalised as labeling normalises, as lists of items
for ``collate_features``; batching and modality dropout.

Two ways to feed the training rows (``TrainSettings.data``):

* ``memory`` (default): every worker reads **its shard** of the cached features straight from the Parquet cache
  once (per-rank split of a seeded permutation of the training rows, padded by wrap-around so that all ranks run
  the same number of steps, like ``DistributedSampler``) and keeps it in RAM; epoch orders are seeded per (seed,
  stage, epoch, rank), so a resumed run continues bit for bit.
* ``stream``: the driver hands Ray Train a Ray Data dataset of the cache's training rows (file order re-shuffled
  at every epoch from the run's seed: a global shuffle at file granularity that streams); each rank iterates its
  ``ray.train.get_dataset_shard("train")`` every epoch through a seeded local shuffle buffer, decoding and
  normalising batch by batch. A rank's memory is the buffer plus a few blocks, whatever the cache's size. The
  streaming split balances blocks across ranks dynamically (same row count per rank), so runs are reproducible
  in distribution, not bit for bit.

The validation rows are split rank-strided, kept in memory (they are scored every epoch), and the predictions
gathered. Frames are normalised once at load time (:class:`emoq_model.features.FeatureNorm`): per-speaker statistics
over the population labeling normalises over (``norm_groups="channels"``: call channels, or label-skewed simulated
channels of an isolated-utterance corpus), in training and validation alike, so the validation score that picks the
best epoch is the deployment-faithful one; global statistics of the training speakers are the fallback saved with
the bundle.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from pipeline.training.settings import TrainSettings


class WorkerData:
    """The worker's share of the feature cache, normalised, as lists of items for ``collate_features``."""

    def __init__(self, s: TrainSettings, cfg, rank: int, world: int, shard=None, recorded_shard=None):
        """``shard`` / ``recorded_shard`` (``data="stream"``): this rank's Ray Data shards of all training rows and
        of the recorded ones (no speed-perturbed copies; only when a stage trains on those)."""
        from emoq_model import features as F

        cache = F.FeatureCache(s.features)
        self.shard, self.recorded_shard = shard, recorded_shard
        self.dtype, self.shuffle_buffer = cache.dtype, s.shuffle_buffer
        self.names = list(cfg.labels.names)
        self.stacked = cache.stacked
        import hashlib

        self.meta_sha256 = hashlib.sha256(F.read_text(F.join(s.features, F.META_FILE)).encode()).hexdigest()
        names = list(cfg.labels.names)
        index = cache.index(["utt_id", "label", "speaker", "split", "error"])
        ok = index["error"].isna()
        unknown = index[ok & ~index["label"].isin(names) & index["split"].isin([s.train_split, s.val_split])]
        if len(unknown):
            raise ValueError(
                f"{len(unknown)} rows have labels outside {names}, e.g. {unknown['label'].unique()[:5].tolist()}"
            )
        train = index[ok & (index["split"] == s.train_split)].reset_index(drop=True)
        val = index[ok & (index["split"] == s.val_split)].reset_index(drop=True)
        if s.limit_train:
            train = train.iloc[np.random.default_rng([cfg.seed, 7]).permutation(len(train))[: s.limit_train]]
            train = train.reset_index(drop=True)
        if len(train) == 0:
            raise ValueError(f"{s.features}: no usable rows in split {s.train_split!r}")
        self.n_errors = int((~ok).sum())
        self.counts = [int((train["label"] == n).sum()) for n in names]
        self.n_train, self.n_val = len(train), len(val)
        # per-rank shard of a seeded permutation, padded by wrap-around to equal length; the recorded rows only
        # (no speed-perturbed copies) the same way from the same permutation, for a stage that trains on those
        perm = np.random.default_rng([cfg.seed, 11]).permutation(len(train))
        ids = train["utt_id"].to_numpy()
        recorded = perm[[not F.is_speed_copy(u) for u in ids[perm]]]
        mine_recorded = rank_share(recorded, rank, world)
        train_ids = ids[rank_share(perm, rank, world)].tolist() if shard is None else []
        # loaded only when a stage trains without the copies
        recorded_ids = ids[mine_recorded].tolist() if shard is None and cfg.train.recorded_only else []
        # stream: the split gives every rank the same number of rows (the remainder is dropped)
        self.n_per_rank = len(train_ids) if shard is None else len(train) // world
        self.n_recorded_per_rank = len(mine_recorded) if shard is None else len(recorded) // world
        val_ids = val["utt_id"].to_numpy()[rank::world].tolist() if len(val) else []
        rows = {it["utt_id"]: it for it in cache.load(utt_ids=set(train_ids) | set(recorded_ids) | set(val_ids))}
        # normalisation: per-speaker statistics over the protocol's groups (s.norm_groups: call channels, real or
        # simulated, in train and val alike -- the population labeling normalises over), computed over whole
        # groups whatever this rank's share; global stats of the training speakers as the small-group fallback
        self.norm = F.FeatureNorm(
            s.feature_norm,
            group_key="norm_group",
            min_frames=s.norm_min_frames,
            stats_frames=cfg.former.stats_frames,  # the Former reads its channel's statistics too
        )
        stats, self.groups, utterances = {}, {}, None
        resampling = s.feature_norm == "speaker" and any(
            x.stats_resample > 0 for x in (cfg.train.stage1, cfg.train.stage2)
        )
        if self.norm.enabled:
            speaker_stats = cache.speaker_stats()
            if s.feature_norm == "speaker":
                self.groups = F.norm_groups(cache, pd.concat([train, val]), s.norm_groups, cfg.seed)
                for u, it in rows.items():
                    it["norm_group"] = self.groups[u]
                utterances = {} if resampling else None  # each turn's moments, for statistics of channel subsets
                stats = F.group_stats(cache, self.groups, utterances)
            spk_train = set(train["speaker"].astype(str))
            pool = [v for k, v in speaker_stats.items() if k in spk_train]
            self.norm.global_stats = F.pooled_stats(pool) if pool else None
        # train.stage*.stats_resample: alternative baselines of every training channel, the same on every rank
        self.resampler = None
        if resampling:  # per-speaker normalisation: the statistics pass above filled ``utterances``
            from pipeline.training.resample import ChannelResampler

            every = train["utt_id"].astype(str)  # every rank's training rows: baselines over whole channels
            self.resampler = ChannelResampler(
                self.norm,
                {u: self.groups[u] for u in every},
                dict(zip(every, train["label"].astype(str))),
                stats,
                utterances,
                seed=cfg.seed,
            )
            del utterances
        if self.norm.enabled and s.feature_norm == "speaker":  # groups without statistics: over all their rows
            missing = [it for it in rows.values() if str(it.get("norm_group")) not in stats]
            if missing:
                stats.update(F.compute_group_stats(missing, key="norm_group"))
        self.stats = stats
        # normalised and stored as float16 a chunk at a time, each raw row released as it is replaced: the float32
        # normalised copy of the whole share never exists (measured on the demo: 8.1 GiB peak private per worker)
        items, ids = {}, list(rows)
        for i in range(0, len(ids), 256):
            chunk = ids[i : i + 256]
            for u, it in zip(chunk, self.norm.apply([rows.pop(u) for u in chunk], stats)):
                items[u] = self._prepare(it, names)
        self.train = [items[u] for u in train_ids]  # duplicates (padding) share the arrays
        self.train_recorded = [items[u] for u in recorded_ids]
        self.val = [items[u] for u in val_ids]

    def resample(self, items: list[dict], p: float, rng: np.random.Generator) -> list[dict]:
        """``train.stage*.stats_resample``: items re-normalised against part of their channel with probability ``p``
        (:mod:`pipeline.training.resample`); unchanged, drawing nothing, when ``p`` is 0."""
        if p <= 0:
            return items
        if self.resampler is None:
            raise ValueError(
                "train.stage*.stats_resample needs per-speaker feature normalisation (--feature-norm speaker)"
            )
        return self.resampler.apply(items, p, rng)

    def rows_per_rank(self, recorded_only: bool = False) -> int:
        """Training rows this rank sees per epoch (all, or the recorded rows without speed-perturbed copies)."""
        return self.n_recorded_per_rank if recorded_only else self.n_per_rank

    def epoch_batches(self, bs: int, rng: np.random.Generator, recorded_only: bool = False):
        """This rank's training batches for one epoch (lists of items), in an order drawn from ``rng``;
        ``recorded_only``: without the speed-perturbed copies."""
        if self.shard is None:
            yield from batches(self.train_recorded if recorded_only else self.train, bs, rng)
            return
        from emoq_model.features import decode_frames

        shard = self.shard
        if recorded_only:
            if self.recorded_shard is None:
                raise ValueError("recorded_only needs the driver's 'train_recorded' dataset (data=stream)")
            shard = self.recorded_shard
        seed = int(rng.integers(2**31 - 1))
        for table in shard.iter_batches(
            batch_size=bs,
            batch_format="pyarrow",
            prefetch_batches=2,
            local_shuffle_buffer_size=max(bs, self.shuffle_buffer),
            local_shuffle_seed=seed,
        ):
            rows = table.drop_columns(["frames"]).to_pylist()
            frames = table.column("frames")
            for i, it in enumerate(rows):  # frames decoded in place from the Arrow buffer (no copy)
                it["frames"] = decode_frames(
                    frames[i].as_buffer(), (it["n_layers"], it["n_frames"], it["dim"]), self.dtype
                )
                it["norm_group"] = self.groups.get(it["utt_id"])
            # kept as they come (float32 after normalisation, the stored float16 without): collate converts in torch;
            # the in-memory path stores float16 to halve its RAM
            yield [self._prepare(it, self.names, None) for it in self.norm.apply(rows, self.stats)]

    def _prepare(self, it: dict, names: list[str], dtype=np.float16) -> dict:
        """One row as ``collate_features`` takes it; ``dtype`` None keeps the frames' dtype."""
        from emoq_model.features import model_frames

        frames = model_frames(np.asarray(it["frames"], dtype=dtype), self.stacked)
        return {
            "utt_id": it["utt_id"],
            "frames": frames,
            "label": names.index(it["label"]),
            "transcript": it.get("transcript"),
            "speaker": it.get("speaker"),
            "path": it.get("path"),  # the recording: calibration's out-of-fold ECE holds out whole recordings
            "start_s": it.get("start_s"),  # the turn's place in its call: validation fits conversation context
            "end_s": it.get("end_s"),
        }


def collate(items: list[dict]):
    from emoq_model.features import float32_tensor
    from emoq_model.model import collate_features

    return collate_features([{**it, "frames": float32_tensor(it["frames"])} for it in items])


def drop_transcripts(items: list[dict], p: float, rng: np.random.Generator) -> list[dict]:
    """Modality dropout: each item's transcript is removed with probability ``p`` (copies; the data stay)."""
    if p <= 0:
        return items
    keep = rng.random(len(items)) >= p
    return [it if k else {**it, "transcript": None} for it, k in zip(items, keep)]


def rank_share(order: np.ndarray, rank: int, world: int) -> np.ndarray:
    """Rank ``rank``'s strided share of ``order``, padded by wrap-around so that every rank gets as many rows
    (``DistributedSampler``'s way: all ranks run the same number of steps)."""
    per_rank = math.ceil(len(order) / world)
    if per_rank * world > len(order) and len(order):
        order = np.concatenate([order, np.resize(order, per_rank * world - len(order))])
    return order[rank::world]


def batches(items: list, bs: int, rng: np.random.Generator | None = None):
    order = rng.permutation(len(items)) if rng is not None else np.arange(len(items))
    for i in range(0, len(items), bs):
        yield [items[j] for j in order[i : i + bs]]
