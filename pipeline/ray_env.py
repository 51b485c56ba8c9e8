"""Connecting to Ray: a running cluster (``ray job submit``, ``RAY_ADDRESS``) or an embedded local instance."""

from __future__ import annotations

import os
import tempfile

import ray


def init_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    object_store_mb: int | None = None,
    log_to_driver: bool = True,
) -> None:
    """Join the cluster at ``address`` / ``RAY_ADDRESS`` if any, else start a local Ray.

    Locally, Ray gets at least 4 logical CPUs: on 2-core machines an actor pool of whole-CPU actors next to a
    streaming producer otherwise deadlocks silently (measured); the logical count only shapes scheduling.
    ``log_to_driver=False``: workers' stdout/stderr stay in Ray's session log dir instead of the console, and a
    local Ray's workers get :data:`pipeline.console.QUIET_ENV` (their libraries' logs and bars turned down).
    """
    if ray.is_initialized():
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    address = address or os.environ.get("RAY_ADDRESS")
    env_vars = {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "EMOQ_CACHE", "VLLM_CPU_KVCACHE_SPACE") if k in os.environ}
    if not log_to_driver:
        from pipeline.console import QUIET_ENV

        env_vars.update({k: os.environ.get(k, v) for k, v in QUIET_ENV.items()})
    env = {"env_vars": env_vars}
    if address:
        # A submitted job already carries its runtime env (working dir, env vars); merging another one fails.
        ray.init(address=address, log_to_driver=log_to_driver)
        return
    os.environ.setdefault("RAY_TMPDIR", os.path.join(tempfile.gettempdir(), "emoq-ray"))
    ncpu = num_cpus or max(4, os.cpu_count() or 1)
    kwargs = {"num_cpus": ncpu, "include_dashboard": False, "runtime_env": env, "log_to_driver": log_to_driver}
    if object_store_mb:
        kwargs["object_store_memory"] = object_store_mb * 1024 * 1024
    ray.init(**kwargs)
