"""MAL: SupCon and focal loss against independent references; distributed SupCon over 2 gloo processes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from emoq_model.config import LossConfig
from emoq_model.losses import MALoss, class_balanced_alpha, focal_loss


def ref_supcon(z: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    """Khosla et al. 2020, L_out: mean over anchors that have a positive of -mean_p log softmax_{a != i}."""
    z = F.normalize(z, dim=1)
    sim = z @ z.T / tau
    n = len(y)
    eye = torch.eye(n, dtype=torch.bool)
    pos = (y[:, None] == y[None, :]) & ~eye
    logits = sim.masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    per_anchor = -(log_prob.masked_fill(~pos, 0).sum(1)) / pos.sum(1).clamp(min=1)
    has = pos.any(1)
    return per_anchor[has].mean()


def ref_focal(logits, y, gamma, alpha):
    p = torch.softmax(logits, -1)
    out = []
    for i in range(len(y)):
        pt = p[i, y[i]]
        out.append(-alpha[y[i]] * (1 - pt) ** gamma * torch.log(pt))
    return torch.stack(out).mean()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_supcon_matches_reference(seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(24, 16, generator=g)
    y = torch.randint(0, 4, (24,), generator=g)
    y[0] = 5  # an anchor without positives is skipped by both
    loss = MALoss(LossConfig(focal_weight=0.0, temperature=0.2), num_labels=6)
    got = loss(z, torch.zeros(24, 6), y)
    want = ref_supcon(z, y, 0.2)
    assert torch.allclose(got["loss"], want, atol=1e-5) and torch.allclose(got["supcon"], want, atol=1e-5)


@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_focal_matches_reference(gamma):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(32, 4, generator=g) * 3
    y = torch.randint(0, 4, (32,), generator=g)
    alpha = torch.tensor([0.5, 1.0, 2.0, 4.0])
    assert torch.allclose(focal_loss(logits, y, gamma, alpha), ref_focal(logits, y, gamma, alpha), atol=1e-6)
    if gamma == 0.0:  # gamma 0, no alpha = cross-entropy
        assert torch.allclose(focal_loss(logits, y, 0.0, None), F.cross_entropy(logits, y), atol=1e-6)


def test_alpha_and_weighted_sum():
    a = class_balanced_alpha([10, 30, 60, 0])
    assert torch.allclose(a[:3], torch.tensor([100 / 40, 100 / 120, 100 / 240]))
    assert a[3] == a.max()
    assert torch.allclose(class_balanced_alpha([5, 5, 5]), torch.ones(3))
    with pytest.raises(ValueError):
        class_balanced_alpha([0, 0])
    g = torch.Generator().manual_seed(4)
    z, logits = torch.randn(16, 8, generator=g), torch.randn(16, 4, generator=g)
    y = torch.arange(16) % 4
    mal = MALoss(LossConfig(supcon_weight=0.5, focal_weight=2.0, gamma=2.0, temperature=0.1), num_labels=4)
    with pytest.raises(RuntimeError, match="set_class_counts"):
        mal(z, logits, y)
    mal.set_class_counts([1, 2, 3, 4])
    out = mal(z, logits, y)
    want = 0.5 * ref_supcon(z, y, 0.1) + 2.0 * ref_focal(logits, y, 2.0, class_balanced_alpha([1, 2, 3, 4]))
    assert torch.allclose(out["loss"], want, atol=1e-5)


def test_distributed_supcon_sees_all_ranks(tmp_path):
    """Two gloo ranks, each with its half of the batch: the DDP-style loss equals the single-process loss on the
    whole batch (value and gradient after DDP's averaging). Rank 0 holds only classes 0/1 and rank 1 only 2/3, so
    without gathering no rank would see the other's negatives and the local loss differs clearly."""
    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    from emoq_model.testing import ddp_supcon_worker

    g = torch.Generator().manual_seed(5)
    emb = torch.randn(16, 8, generator=g)
    labels = torch.tensor([0, 1] * 4 + [2, 3] * 4)
    mp.spawn(ddp_supcon_worker, args=(2, str(tmp_path / "init"), str(tmp_path), emb, labels), nprocs=2, join=True)
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]

    full = emb.clone().requires_grad_(True)
    want = ref_supcon(full, labels, 0.1)
    want.backward()
    for r, out in enumerate(ranks):
        assert torch.allclose(out["metric"], want.detach(), atol=1e-5)  # reported value: the global loss
        assert torch.allclose(out["loss"] / 2, want.detach(), atol=1e-5)  # backward value: world x global
        assert torch.allclose(out["grad"] / 2, full.grad[r * 8 : (r + 1) * 8], atol=1e-5)  # DDP averages by 2
        local = ref_supcon(emb[r * 8 : (r + 1) * 8], labels[r * 8 : (r + 1) * 8], 0.1)
        assert abs(float(local) - float(want.detach())) > 0.1
