"""Two-stage EmoQ training on Ray Train (``TorchTrainer``, DDP) from a feature cache: the driver side.

:func:`run_training` checks the cache against the config, builds the ``TorchTrainer`` (``ScalingConfig`` from
:class:`TrainSettings`; ``RunConfig(name, storage_path)`` with ``FailureConfig(max_failures)`` and
``CheckpointConfig``), runs :func:`pipeline.training.worker.train_loop_per_worker` on every worker and copies the
exported bundle out of the final checkpoint.

* recovery: a worker failure restarts the worker group from the latest checkpoint (``max_failures``); rerunning
  with the same ``name`` + ``storage_path`` resumes an interrupted run (Ray Train V2: ``ray.train.get_checkpoint()``).
* every epoch: a line in ``<storage>/<name>/metrics.jsonl`` and a checkpoint (current weights, optimizer +
  scheduler, history, the best weights so far per stage).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path

from emoq_model.io import join, publish_dir
from pipeline import faults
from pipeline.training.checkpoint import check_resume, run_identity
from pipeline.training.settings import BUNDLE_DIR, METRICS_FILE, STATE_FILE, TrainSettings, fail_once_from_env
from pipeline.training.worker import train_loop_per_worker


def check_cache_matches(cache, cfg) -> None:
    """The cache must hold what the configured Former expects: same layer choice, width and layer count."""
    from emoq_model.model import encoder_dims

    cm = cache.meta.get("encoder", {})
    for key in ("layer", "weighted_layers", "whisper_real_length", "whisper_tail_s", "prosody"):
        if key in cm and cm[key] != getattr(cfg.encoder, key):
            raise ValueError(
                f"feature cache {cache.root} was extracted with encoder.{key}={cm[key]!r}, the config "
                f"says {getattr(cfg.encoder, key)!r}: re-extract or fix the config"
            )
    width, n_layers = encoder_dims(cfg)
    if (cache.dim, cache.n_layers) != (width, n_layers):
        raise ValueError(
            f"feature cache {cache.root} holds {cache.n_layers} x {cache.dim} features, the config's "
            f"encoder gives {n_layers} x {width}"
        )


def training_rows(settings: TrainSettings, seed: int, recorded_only: bool = False):
    """``data="stream"``: the cache's usable training rows as a Ray Data dataset, read lazily from its Parquet
    shards in a file order re-drawn from ``seed`` at every execution (every epoch): a global shuffle at file
    granularity that streams (the workers' local shuffle buffer mixes within). Ray Train splits it across the
    workers (``streaming_split(equal=True)``: the same number of rows per rank).

    Measured on the 10k-row benchmark cache (``bench/train_streaming.py``), each choice against the one it
    replaced: ``randomize_block_order`` is an all-to-all step that reads the whole epoch into the object store
    before the first batch (first batch after 5 s, with a file shuffle after 1 s); one block per file
    (``override_num_blocks``) instead of Ray's split into >= 200 blocks reads an epoch 3x faster; the split and
    error filter in the Parquet scan; and Ray Data's V1 Parquet reader: the V2 one (the default in Ray 2.60)
    starts every execution with a listing task that waits ~4 s. ``recorded_only``: without the speed-perturbed
    copies (``train.stage*.speed_copies=false``)."""
    import warnings

    import pyarrow.compute as pc
    import pyarrow.dataset as pds
    import ray.data

    from emoq_model import features as F

    columns = [c for c in F.FEATURE_COLUMNS if c not in ("path", "num_samples", "duration_s", "start_s", "end_s")]
    n_files = len(F.FeatureCache(settings.features).files)
    rows = (pds.field("split") == settings.train_split) & pds.field("error").is_null()
    if recorded_only:
        rows = rows & ~pc.match_substring(pds.field("utt_id"), F.SPEED_COPY_TAG)
    ctx = ray.data.DataContext.get_current()
    v2, ctx.use_datasource_v2 = ctx.use_datasource_v2, False  # read when the dataset is created
    try:
        with warnings.catch_warnings():
            # error rows and other splits never reach a worker: filtered in the Parquet scan (V1's `filter`,
            # deprecated in favour of Dataset.filter(expr=...), which V1 does not push down: 5.1 vs 3.5 s per
            # 10k-row epoch, measured)
            warnings.filterwarnings(
                "ignore", message="The `filter` argument is deprecated", category=DeprecationWarning
            )
            return ray.data.read_parquet(
                F.join(settings.features, F.SHARDS_DIR),
                columns=columns,
                filter=rows,
                shuffle=ray.data.FileShuffleConfig(seed=seed, reseed_after_execution=True),
                override_num_blocks=max(1, n_files),
            )
    finally:
        ctx.use_datasource_v2 = v2


def stream_datasets(cfg, settings: TrainSettings) -> dict:
    """Ray Train's datasets for ``data="stream"``: all training rows, and the recorded rows alone when a stage
    trains without the speed-perturbed copies."""
    out = {"train": training_rows(settings, cfg.seed)}
    if cfg.train.recorded_only:
        out["train_recorded"] = training_rows(settings, cfg.seed, recorded_only=True)
    return out


def run_training(cfg, settings: TrainSettings) -> dict:
    """Train (Ray must be initialised), copy the bundle to ``settings.bundle_out`` and return a summary:
    ``bundle``, ``run_dir``, ``metrics_file``, ``history``, ``best``, ``seconds``."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from emoq_model import features as F

    check_cache_matches(F.FeatureCache(settings.features), cfg)  # fail early on a missing / mismatched cache
    if cfg.former.stats_frames and settings.feature_norm != "speaker":
        from emoq_model.errors import ConfigError

        raise ConfigError(
            "former.stats_frames needs per-speaker normalisation (--feature-norm speaker), "
            f"got {settings.feature_norm!r}"
        )
    meta_sha = hashlib.sha256(F.read_text(F.join(settings.features, F.META_FILE)).encode()).hexdigest()
    check_resume(settings.run_dir, run_identity(cfg.to_dict(), meta_sha), settings.allow_changed_resume)
    if settings.fail_once is None:
        settings.fail_once = fail_once_from_env()
    t0 = time.perf_counter()
    run_config = ray.train.RunConfig(
        name=settings.name,
        storage_path=settings.storage_path,
        failure_config=ray.train.FailureConfig(max_failures=settings.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=settings.num_to_keep),
        worker_runtime_env={
            "env_vars": {
                k: os.environ[k]
                for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "EMOQ_CACHE", "TOKENIZERS_PARALLELISM", faults.ENV)
                if k in os.environ
            }
        },
    )
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.to_dict(), "settings": dataclasses.asdict(settings)},
        scaling_config=settings.scaling_config(),
        run_config=run_config,
        datasets=stream_datasets(cfg, settings) if settings.data == "stream" else None,
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    ckpt = result.checkpoint
    if ckpt is None:
        raise RuntimeError("training finished without a checkpoint")
    out = settings.bundle_out or join(settings.run_dir, BUNDLE_DIR)
    with ckpt.as_directory() as d:
        src = os.path.join(d, BUNDLE_DIR)
        if not os.path.isdir(src):
            raise RuntimeError(f"the final checkpoint {ckpt.path} holds no bundle")
        history = json.loads(Path(d, STATE_FILE).read_text())["history"]
        best = json.loads(Path(d, STATE_FILE).read_text())["best"]
        out = publish_dir(src, out)
    return {
        "bundle": out,
        "run_dir": settings.run_dir,
        "metrics_file": join(settings.run_dir, METRICS_FILE),
        "history": history,
        "best": best,
        "seconds": round(time.perf_counter() - t0, 2),
        "checkpoint": ckpt.path,
    }
