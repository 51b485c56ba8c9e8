"""Exponential moving average of a stage's trainable weights (Polyak averaging), used for validation and export.

Why: with a few thousand labelled turns, one epoch's weights are a noisy point on the optimisation path; the best
epoch chosen by validation UA then tends to be a one-epoch peak that carries less well to unseen calls. The average
of the recent path is smoother and generalises better (Polyak & Juditsky 1992; the "EMA model" of image and speech
training recipes). Training itself runs on the raw weights; validation, best-epoch selection and export read the
average (:meth:`WeightEMA.applied`).

The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (TensorFlow's
``ExponentialMovingAverage(num_updates=...)``), so the first steps do not keep the initialisation in the average.

Not ``torch.optim.swa_utils.AveragedModel``: it deep-copies the whole module (here the LLM too, of which a stage
trains only LoRA tensors) and is not part of this run's checkpoint; this keeps one shadow per trained tensor and a
state dict that goes into the checkpoint beside the optimizer's.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch


class WeightEMA:
    """Shadow copies of named parameters, updated after each optimizer step."""

    def __init__(self, named_params: Iterable[tuple[str, torch.nn.Parameter]], decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.params = dict(named_params)
        self.shadow = {n: p.detach().clone() for n, p in self.params.items()}
        self.updates = 0

    def current_decay(self) -> float:
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the parameters' current values (call after ``optimizer.step()``)."""
        self.updates += 1
        w = 1.0 - self.current_decay()
        for n, p in self.params.items():
            self.shadow[n].lerp_(p.detach(), w)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Inside the block the parameters hold the average; the training values come back afterwards."""
        saved = {n: p.detach().clone() for n, p in self.params.items()}
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(self.shadow[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(saved[n])

    def state_dict(self) -> dict:
        return {"updates": self.updates, "shadow": {n: t.detach().cpu() for n, t in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        if set(state["shadow"]) != set(self.shadow):
            diff = sorted(set(state["shadow"]) ^ set(self.shadow))
            raise KeyError(f"EMA state is for other parameters (e.g. {diff[:3]})")
        self.updates = int(state["updates"])
        for n, t in state["shadow"].items():
            self.shadow[n].copy_(t.to(self.shadow[n].device, self.shadow[n].dtype))
