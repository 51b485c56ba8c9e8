"""What a training run is, besides the model: :class:`TrainSettings` (data, scaling, recovery, protocol) and the
checkpoint file names. Failure injection for tests: ``fail_once = {"stage", "epoch", "rank", "marker", "how"}`` (or
``EMOQ_FAIL_ONCE=stage:epoch:rank:marker[:exit|raise]``, read by the driver) makes that rank die (``os._exit``) or
raise after the first step of that epoch, once (the marker file records that it happened)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from emoq_model.errors import ConfigError

STATE_FILE = "train_state.json"
CURRENT_FILE = "current.safetensors"
OPTIM_FILE = "optimizer.pt"
BEST_FILE = "best_stage{stage}.safetensors"
BUNDLE_DIR = "bundle"
METRICS_FILE = "metrics.jsonl"


@dataclass
class TrainSettings:
    """Everything about a training run that is not the model (the model is an :class:`EmoQConfig`)."""

    features: str  # feature cache directory (jobs/extract_features.py)
    storage_path: str  # Ray Train storage (shared storage / URI on multi-node clusters)
    name: str  # run name: reuse it (same storage_path) to resume an interrupted run
    stages: tuple[int, ...] = (1, 2)  # 1,2 | 1 | 2 (stage 2 alone: from init_bundle's Former or a fresh one)
    bundle_out: str | None = None  # copy the exported bundle here (default <storage>/<name>/bundle)
    merge_llm: bool = True  # also export the LoRA-merged LLM (vLLM serves it ~6x faster than base + LoRA on CPU)
    num_workers: int = 2  # Ray Train workers (DDP ranks)
    data: str = "memory"  # memory: each rank loads its share once | stream: Ray Data streams the rows every epoch
    shuffle_buffer: int = 256  # stream: rows in each rank's seeded local shuffle buffer (blocks are shuffled too)
    min_workers: int | None = None  # elastic: after losing nodes, go on from the last checkpoint with this many
    use_gpu: bool = False  # one GPU per worker (or gpus_per_worker)
    cpus_per_worker: float = 0.5  # fractional: 2 x 1-CPU workers hang silently on 2-core machines (measured)
    gpus_per_worker: float = 1.0  # with use_gpu
    resources_per_worker: dict[str, float] | None = None  # overrides the two above when given
    threads_per_worker: int | None = None  # torch threads (default: node CPUs / local workers)
    max_failures: int = 2  # worker-failure retries, each from the latest checkpoint
    num_to_keep: int = 2  # checkpoints kept (the latest is always kept)
    feature_norm: str = "speaker"  # none | speaker | utterance
    norm_groups: str = "channels"  # population of per-speaker statistics (emoq_model.features.NORM_GROUPS)
    norm_min_frames: int = 500  # a group with fewer frames uses the global statistics
    train_split: str = "train"  # cache split trained on
    val_split: str = "val"  # cache split that picks the best epoch and fits the calibration
    context: bool = False  # fit conversation context (emoq_model.context) on the validation turns of calls
    eval_batch_size: int = 64  # validation batch per worker
    warmup_frac: float = 0.05  # linear warm-up share of each stage's steps (then cosine decay)
    grad_clip: float = 1.0  # gradient-norm clip (0: off)
    init_bundle: str | None = None  # start from this bundle's Former (e.g. stage 2 alone after a stage-1 run)
    limit_train: int | None = None  # use only N training rows (smoke tests)
    fail_once: dict[str, Any] | None = None  # failure injection (tests)
    allow_changed_resume: bool = False  # resume a run whose config or feature cache changed since its checkpoint
    verbose: bool = True  # per-epoch lines from rank 0

    def __post_init__(self):
        self.stages = tuple(int(s) for s in self.stages)
        if (
            not self.stages
            or any(s not in (1, 2) for s in self.stages)
            or list(self.stages) != sorted(set(self.stages))
        ):
            raise ConfigError(f"stages must be (1,), (2,) or (1, 2), got {self.stages}")
        if self.num_workers < 1:
            raise ConfigError("num_workers must be >= 1")
        if self.data not in ("memory", "stream"):
            raise ConfigError(f"data must be memory or stream, got {self.data!r}")
        if self.min_workers is not None and not 1 <= self.min_workers <= self.num_workers:
            raise ConfigError(f"min_workers must be in [1, num_workers={self.num_workers}], got {self.min_workers}")
        if self.feature_norm not in ("none", "speaker", "utterance"):
            raise ConfigError(f"feature_norm must be none, speaker or utterance, got {self.feature_norm!r}")
        from emoq_model.features import NORM_GROUPS

        if self.norm_groups not in NORM_GROUPS:
            raise ConfigError(f"norm_groups must be one of {NORM_GROUPS}, got {self.norm_groups!r}")

    def scaling_config(self):
        from ray.train import ScalingConfig

        res = dict(self.resources_per_worker) if self.resources_per_worker else None
        if res is None:
            res = {"CPU": self.cpus_per_worker}
            if self.use_gpu:
                res["GPU"] = self.gpus_per_worker
        n = self.num_workers
        if self.min_workers is not None and self.min_workers < n:  # Ray Train elastic: a (min, max) worker range
            n = (self.min_workers, self.num_workers)
        return ScalingConfig(num_workers=n, use_gpu=self.use_gpu, resources_per_worker=res)

    @property
    def run_dir(self) -> str:
        from emoq_model.io import join

        return join(self.storage_path, self.name)


def fail_once_from_env(value: str | None = None) -> dict | None:
    """``EMOQ_FAIL_ONCE=stage:epoch:rank:marker[:exit|raise]`` -> the ``fail_once`` dict."""
    value = value if value is not None else os.environ.get("EMOQ_FAIL_ONCE")
    if not value:
        return None
    parts = value.split(":")
    if len(parts) < 4:
        raise ConfigError("EMOQ_FAIL_ONCE must be stage:epoch:rank:marker[:exit|raise]")
    return {
        "stage": int(parts[0]),
        "epoch": int(parts[1]),
        "rank": int(parts[2]),
        "marker": parts[3],
        "how": parts[4] if len(parts) > 4 else "exit",
    }
