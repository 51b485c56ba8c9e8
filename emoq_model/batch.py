"""A batch of encoder features for the Former: what training, evaluation and labeling hand to the model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["EmoQBatch", "collate_features"]


@dataclass
class EmoQBatch:
    """Encoder features of a batch: ``frames`` ``[B, T, D]`` or stacked ``[L, B, T, D]``, ``mask`` ``[B, T]``
    (True = valid), ``labels`` ``[B]`` label indices (None at inference), ``transcripts`` (None or per item)."""

    frames: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor | None = None
    transcripts: list[str | None] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.mask.shape[0])

    def to(self, device) -> EmoQBatch:
        return EmoQBatch(
            self.frames.to(device),
            self.mask.to(device),
            None if self.labels is None else self.labels.to(device),
            self.transcripts,
            self.meta,
        )


def collate_features(items: Sequence[Mapping[str, Any]], label_names: Sequence[str] | None = None) -> EmoQBatch:
    """Batch precomputed features. Each item: ``frames`` (``[T, D]`` or ``[L, T, D]`` array/tensor of valid frames),
    optional ``label`` (index, or name when ``label_names`` is given; None for unlabeled), optional
    ``transcript``."""
    if not items:
        raise ValueError("empty batch")
    frames = [
        torch.as_tensor(np.asarray(it["frames"]) if not torch.is_tensor(it["frames"]) else it["frames"]) for it in items
    ]
    stacked = frames[0].dim() == 3
    if any(f.dim() != frames[0].dim() or f.shape[-1] != frames[0].shape[-1] for f in frames):
        raise ValueError("all items need frames of the same rank and width")
    t = max(f.shape[-2] for f in frames)
    lead = tuple(frames[0].shape[:-2])
    x = frames[0].new_zeros(*lead, len(frames), t, frames[0].shape[-1])
    mask = torch.zeros(len(frames), t, dtype=torch.bool)
    for i, f in enumerate(frames):
        if stacked:
            x[:, i, : f.shape[-2]] = f
        else:
            x[i, : f.shape[-2]] = f
        mask[i, : f.shape[-2]] = True
    labels = None
    raw = [it.get("label") for it in items]
    if all(r is not None for r in raw):
        if label_names is not None:
            index = {n: i for i, n in enumerate(label_names)}
            raw = [index[r] if isinstance(r, str) else int(r) for r in raw]
        labels = torch.tensor([int(r) for r in raw], dtype=torch.long)
    transcripts = [it.get("transcript") for it in items]
    return EmoQBatch(x, mask, labels, transcripts if any(transcripts) else None)
