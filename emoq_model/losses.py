"""MAL (multi-objective affective loss): supervised contrastive + focal loss.

* SupCon: ``pytorch_metric_learning.losses.SupConLoss`` on L2-normalised mean-pooled queries; under
  ``torch.distributed`` with world size > 1 it is wrapped in ``DistributedLossWrapper`` so every rank's anchors see
  positives/negatives from all ranks. The wrapper returns ``world_size`` x the loss of the gathered batch; DDP's
  gradient averaging then gives exactly the gradient of the global-batch loss. The reported (detached) metric is
  divided back.
* Focal: ``-alpha_y (1 - p_y)^gamma log p_y`` averaged over the batch, on the aux-head logits, per-class
  ``alpha`` from class frequencies (:func:`class_balanced_alpha`) or given.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from emoq_model.config import LossConfig


def class_balanced_alpha(counts: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Per-class focal alpha ``N / (C * n_c)`` (1 for every class of a balanced set); unseen classes get the
    largest seen weight."""
    n = torch.as_tensor(counts, dtype=torch.float32)
    if n.dim() != 1 or n.numel() < 1 or bool((n < 0).any()) or float(n.sum()) <= 0:
        raise ValueError(f"class counts must be non-negative with a positive total, got {counts}")
    alpha = n.sum() / (n.numel() * n.clamp(min=1))
    seen = n > 0
    alpha[~seen] = alpha[seen].max()
    return alpha


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: torch.Tensor | None = None
) -> torch.Tensor:
    """Multi-class focal loss, mean over the batch. ``alpha``: per-class weights ``[C]`` or None."""
    logp = F.log_softmax(logits.float(), dim=-1).gather(1, target[:, None]).squeeze(1)
    loss = -((1.0 - logp.exp()).clamp(min=0) ** gamma) * logp
    if alpha is not None:
        loss = loss * alpha.to(loss.device)[target]
    return loss.mean()


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class MALoss(nn.Module):
    """``supcon_weight * SupCon(normalize(pooled)) + focal_weight * focal(logits)``.

    ``alpha="auto"`` needs :meth:`set_class_counts` before the first call. Returns a dict with ``loss`` (for
    backward) and detached ``supcon`` / ``focal`` metrics.
    """

    def __init__(self, cfg: LossConfig, num_labels: int):
        super().__init__()
        from pytorch_metric_learning.losses import SupConLoss

        self.cfg = cfg
        self.num_labels = num_labels
        self.supcon = SupConLoss(temperature=cfg.temperature)
        if isinstance(cfg.alpha, str):
            alpha = torch.ones(num_labels) if cfg.alpha == "none" else torch.full((num_labels,), float("nan"))
        else:
            alpha = torch.tensor(cfg.alpha, dtype=torch.float32)
        self.register_buffer("alpha", alpha, persistent=False)

    def set_class_counts(self, counts: Sequence[int] | torch.Tensor) -> None:
        """Set focal alpha from training-set class counts (only for ``alpha="auto"``)."""
        if len(counts) != self.num_labels:
            raise ValueError(f"{len(counts)} class counts for {self.num_labels} labels")
        if self.cfg.alpha == "auto":
            self.alpha.copy_(class_balanced_alpha(counts))

    def _supcon(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
        world = _world_size()
        if world > 1:
            from pytorch_metric_learning.utils.distributed import DistributedLossWrapper

            return DistributedLossWrapper(self.supcon)(emb, labels), world
        return self.supcon(emb, labels), 1

    def forward(self, pooled: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        labels = labels.to(pooled.device).long()
        out: dict[str, torch.Tensor] = {}
        total = pooled.new_zeros(())
        if self.cfg.supcon_weight > 0:
            sc, world = self._supcon(F.normalize(pooled.float(), dim=-1), labels)
            total = total + self.cfg.supcon_weight * sc
            out["supcon"] = sc.detach() / world
        if self.cfg.focal_weight > 0:
            if bool(torch.isnan(self.alpha).any()):
                raise RuntimeError("loss.alpha='auto': call set_class_counts(train class counts) before training")
            fl = focal_loss(logits, labels, self.cfg.gamma, self.alpha)
            total = total + self.cfg.focal_weight * fl
            out["focal"] = fl.detach()
        out["loss"] = total
        return out
