"""The library's entry points, one function per job (the CLIs in ``jobs/`` parse arguments and call these).

Each starts a local Ray when none is running (or joins ``RAY_ADDRESS``), like the CLIs do.
"""

from __future__ import annotations

import os
from typing import Any


def label_corpus(inputs: str | list[str], output: str, bundle: str, address: str | None = None, **options: Any) -> dict:
    """Label every recording of ``inputs`` (files, folders, globs, manifests; local or URIs) into ``output``
    (Parquet segments + ``summary.parquet`` + ``report.json``) with ``bundle``; returns the run report.
    ``options``: any :class:`pipeline.labeling.job.LabelJobConfig` field (``batch_recordings=4``,
    ``asr_model=...``, ``encode=StageResources(...)``)."""
    from pipeline.labeling.job import LabelJobConfig, run
    from pipeline.ray_env import init_ray

    cfg = LabelJobConfig(
        inputs=[inputs] if isinstance(inputs, str) else list(inputs), output=output, bundle=bundle, **options
    )
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    init_ray(address)
    return run(cfg)


def train(
    features: str,
    storage_path: str,
    name: str,
    config=None,
    overrides: list[str] | None = None,
    address: str | None = None,
    **settings: Any,
) -> dict:
    """Two-stage training on Ray Train from a feature cache; returns the summary (``bundle``, ``history``,
    ``best``, ``metrics_file``). ``config``: an :class:`emoq_model.EmoQConfig` or a YAML path (default: the demo
    config); ``overrides``: ``key=value`` strings; ``settings``: any :class:`pipeline.training.TrainSettings`
    field (``num_workers=2``, ``bundle_out=...``, ``stages=(1, 2)``)."""
    from emoq_model.config import EmoQConfig, demo_config_path, load_config
    from pipeline.ray_env import init_ray
    from pipeline.training import TrainSettings, run_training

    cfg = config if isinstance(config, EmoQConfig) else load_config(config or demo_config_path(), overrides or [])
    s = TrainSettings(features=features, storage_path=storage_path, name=name, **settings)
    init_ray(address)
    return run_training(cfg, s)


def extract_features(
    manifest: str,
    out_dir: str,
    config=None,
    overrides: list[str] | None = None,
    address: str | None = None,
    **options: Any,
) -> dict:
    """Run the frozen encoder once over a labelled manifest into a feature cache; returns its ``meta.json``."""
    from emoq_model.config import EmoQConfig, demo_config_path, load_config
    from pipeline.ray_env import init_ray
    from pipeline.training.extract import extract_features as _extract

    cfg = (
        config
        if isinstance(config, EmoQConfig)
        else load_config(config or demo_config_path(), overrides or [], check_assets=False)
    )
    init_ray(address)
    return _extract(manifest, out_dir, cfg, **options)
