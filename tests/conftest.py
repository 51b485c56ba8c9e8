import os

# Offline and CPU-friendly defaults for every test process (and the Ray/vLLM workers they spawn).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest


@pytest.fixture(scope="session", autouse=True)
def demo_assets():
    """The offline assets the demo config names (built once into the cache; seconds when present), so that every
    test can load ``emoq_model/configs/demo.yaml`` whatever order tests run in."""
    from emoq_model.assets.tiny_llm import build_tiny_llm
    from emoq_model.assets.whisper_ct2 import build_whisper_tiny_en

    return {"encoder": build_whisper_tiny_en(), "llm": build_tiny_llm()}


@pytest.fixture(scope="module")
def ray_session():
    """A local Ray (4 logical CPUs) for one test module, started fresh and shut down after it."""
    import ray

    from pipeline.ray_env import init_ray

    if ray.is_initialized():
        ray.shutdown()
    init_ray(num_cpus=4)
    yield
    ray.shutdown()
