"""Small helpers for tests and smoke checks: tiny configurations, synthetic features, a DDP loss worker."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from emoq_model.config import EmoQConfig, load_config

TINY_FORMER = [
    "former.num_queries=8",
    "former.num_layers=2",
    "former.num_heads=4",
    "former.hidden=64",
    "former.intermediate=128",
    "former.cross_attention_frequency=1",
    "former.dropout=0.0",
]

SHORT_PROMPT = ["prompt.system=", "prompt.instruction=Emotion ({labels})?"]
"""A short instruction without system turn: fewer prompt tokens for training-loop tests."""


def tiny_config(overrides: Sequence[str] = (), encoder_family: str = "wav2vec2") -> EmoQConfig:
    """Defaults + a tiny Former on the tiny Qwen2 LLM (float32) and a tiny random encoder (built on demand)."""
    from emoq_model.assets.tiny_encoders import build_tiny_encoder
    from emoq_model.assets.tiny_llm import build_tiny_llm

    llm = build_tiny_llm()
    enc = build_tiny_encoder(encoder_family)
    base = [
        f"llm.path={llm}",
        f"encoder.path={enc}",
        "llm.dtype=float32",
        "encoder.dtype=float32",
        "lora.r=4",
        "lora.alpha=8",
        "lora.dropout=0.0",
        "prompt.max_transcript_tokens=16",
        *TINY_FORMER,
    ]
    return load_config(None, base + list(overrides))


def synthetic_items(
    n: int,
    num_labels: int,
    width: int,
    layers: int = 0,
    seed: int = 0,
    frames: tuple[int, int] = (12, 40),
    transcripts: bool = False,
    signal: float = 1.0,
) -> list[dict]:
    """Feature items for :func:`emoq_model.model.collate_features`: Gaussian frames with a class-dependent mean
    (``signal`` scales it), labels cycling over the classes; ``layers`` > 0 gives stacked ``[L, T, D]`` frames."""
    g = np.random.default_rng(seed)
    centers = g.standard_normal((num_labels, width)).astype(np.float32)
    words = ["well", "okay", "really", "no", "yes", "the", "call", "today"]
    items = []
    for i in range(n):
        y = i % num_labels
        t = int(g.integers(frames[0], frames[1] + 1))
        shape = (layers, t, width) if layers else (t, width)
        x = g.standard_normal(shape).astype(np.float32) + signal * centers[y]
        text = None
        if transcripts and i % 3:
            text = " ".join(g.choice(words, size=int(g.integers(2, 8))))
        items.append({"frames": x, "label": y, "transcript": text})
    return items


def ddp_supcon_worker(
    rank: int, world: int, init_file: str, out_dir: str, emb: torch.Tensor, labels: torch.Tensor
) -> None:
    """gloo process group; rank r takes its contiguous slice of (emb, labels), computes the MAL SupCon term with
    :class:`~emoq_model.losses.MALoss` (which wraps in ``DistributedLossWrapper``) and writes the loss, the
    backward gradient of its slice and the reported metric to ``out_dir/rank{r}.safetensors``."""
    import torch.distributed as dist
    from safetensors.torch import save_file

    from emoq_model.config import LossConfig
    from emoq_model.losses import MALoss

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        n = emb.shape[0] // world
        local = emb[rank * n : (rank + 1) * n].clone().requires_grad_(True)
        y = labels[rank * n : (rank + 1) * n]
        loss = MALoss(LossConfig(focal_weight=0.0, alpha="none"), num_labels=int(labels.max()) + 1)
        out = loss(local, torch.zeros(n, 2), y)
        out["loss"].backward()
        save_file(
            {
                "loss": out["loss"].detach().reshape(1),
                "metric": out["supcon"].reshape(1),
                "grad": local.grad.contiguous(),
            },
            os.path.join(out_dir, f"rank{rank}.safetensors"),
        )
    finally:
        dist.destroy_process_group()
