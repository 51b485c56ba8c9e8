"""Two-stage training on Ray Train from a feature cache: settings -> driver -> per-worker loop (data, checkpoint)."""

from pipeline.training.driver import check_cache_matches, run_training
from pipeline.training.settings import TrainSettings, fail_once_from_env
from pipeline.training.worker import train_loop_per_worker

__all__ = ["TrainSettings", "run_training", "check_cache_matches", "fail_once_from_env", "train_loop_per_worker"]
