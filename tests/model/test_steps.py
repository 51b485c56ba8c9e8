"""Both training stages learn a small fixed batch, and gradients reach exactly the stage's parameters."""

from __future__ import annotations

import pytest
import torch

from emoq_model.model import EmoQModel, collate_features
from emoq_model.steps import make_optimizer, trainable_named_parameters
from emoq_model.testing import SHORT_PROMPT, synthetic_items, tiny_config

STEPS = 20


def _batch(n=8, seed=0):
    return collate_features(synthetic_items(n, 4, width=48, layers=3, transcripts=True, seed=seed, frames=(8, 24)))


def _grad_names(model) -> set[str]:
    named = dict(model.former.named_parameters(prefix="former"))
    named.update({f"llm.{n}": p for n, p in model.llm.named_parameters()})
    for n, p in named.items():
        if not p.requires_grad:
            assert p.grad is None, f"frozen {n} got a gradient"
    return {n for n, p in named.items() if p.grad is not None and bool(p.grad.abs().sum() > 0)}


def _train(model, batch, stage, key="loss", steps=STEPS):
    model.set_stage(stage)
    opt = make_optimizer(model, stage)
    for g in opt.param_groups:
        g["lr"] = 3e-3
    losses = []
    for step in range(steps):
        opt.zero_grad()
        out = model(batch, stage)
        out["loss"].backward()
        if step == steps - 1:  # (LoRA A gets zero gradients at step 1: B starts at 0)
            got = _grad_names(model)
        opt.step()
        losses.append(float(out[key].detach()))
    return losses, got, out


@pytest.fixture(scope="module")
def model():
    m = EmoQModel(tiny_config([*SHORT_PROMPT, "former.text_fusion=concat", "prompt.include_transcript=true"]))
    m.set_class_counts([3, 3, 3, 3])
    return m


def test_stage1_learns_and_only_trains_the_former(model):
    batch = _batch()
    losses, got, out = _train(model, batch, 1)
    print(f"stage 1 MAL: {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert losses[-1] < 0.5 * losses[0]
    want = {n for n, _ in trainable_named_parameters(model, 1)}
    assert got == want
    assert all(n.startswith("former.") and not n.startswith("former.projector") for n in want)
    assert {
        "former.queries",
        "former.layer_weights.logits",
        "former.text_proj.weight",
        "former.aux_head.weight",
    } <= want
    assert not model.llm.training and model.former.training


def test_stage2_learns_and_only_trains_projector_and_lora(model):
    batch = _batch(seed=1)
    before = {n: p.detach().clone() for n, p in model.former.named_parameters() if "projector" not in n}
    losses, got, out = _train(model, batch, 2, key="lm")
    print(f"stage 2 LM loss: {losses[0]:.3f} -> {losses[-1]:.3f}, label accuracy {float(out['acc']):.2f}")
    assert losses[-1] < 0.8 * losses[0]
    want = {n for n, _ in trainable_named_parameters(model, 2)}
    assert got == want
    assert {n for n in want if not n.startswith("former.projector.")} == {n for n in want if "lora_" in n}
    assert any("lora_A" in n for n in want) and any("lora_B" in n for n in want)
    assert all(torch.equal(p, before[n]) for n, p in model.former.named_parameters() if n in before)
    assert not model.former.training and model.llm.training
    probs = model.predict_proba(batch)
    assert probs.shape == (len(batch), 4) and torch.allclose(probs.sum(-1), torch.ones(len(batch)))


def test_stage2_with_trainable_former_and_mal():
    m = EmoQModel(
        tiny_config(
            [
                *SHORT_PROMPT,
                "former.text_fusion=concat",
                "train.stage2.former_trainable=true",
                "train.stage2.mal_weight=0.5",
                "loss.alpha=none",
            ]
        )
    )
    batch = _batch(n=8, seed=2)
    _, got, out = _train(m, batch, 2, steps=2)
    assert {"lm", "label_ce", "supcon", "focal", "acc", "loss"} <= set(out)
    want = {n for n, _ in trainable_named_parameters(m, 2)}
    assert got == want
    assert "former.aux_head.weight" in want and "former.queries" in want and "former.projector.0.weight" in want


def test_stage2_distills_the_aux_head_into_the_llm():
    """The distillation term is KL(aux head || LLM label distribution): zero exactly when the LLM's label
    distribution equals the (frozen) aux head's, and gone with distill_weight=0."""
    import torch.nn.functional as F

    from emoq_model.steps import stage2_step

    m = EmoQModel(tiny_config([*SHORT_PROMPT, "loss.alpha=none", "train.stage2.distill_weight=1.0"]))
    m.set_stage(2)
    batch = _batch(n=6, seed=4)
    out = stage2_step(m, batch)
    with torch.no_grad():
        teacher = torch.softmax(m.run_former(batch).logits, -1)
        student = m.predict_proba(batch)
    want = F.kl_div(torch.log(student), teacher, reduction="batchmean")
    assert float(out["distill"]) == pytest.approx(float(want), rel=1e-3, abs=1e-5)
    m0 = EmoQModel(tiny_config([*SHORT_PROMPT, "train.stage2.distill_weight=0"]))
    m0.set_stage(2)
    assert "distill" not in stage2_step(m0, batch)


def test_stage2_class_balanced_weights_each_example_by_its_class_alpha():
    """``class_balanced``: the label cross-entropy is the alpha-weighted mean (weights normalised to mean 1), so a
    rare class counts as much as a frequent one; off, it is the plain mean. Without class counts it refuses."""
    import torch.nn.functional as F

    from emoq_model.steps import stage2_step

    batch = _batch(n=8, seed=5)
    m = EmoQModel(tiny_config([*SHORT_PROMPT, "train.stage2.class_balanced=true"]))
    m.eval()  # no dropout: both passes see the same network
    m.stage = 2
    with pytest.raises(RuntimeError, match="set_class_counts"):
        stage2_step(m, batch)
    m.set_class_counts([6, 1, 1, 1])  # neutral frequent: alpha 0.375 vs 2.25
    with torch.no_grad():
        got = float(stage2_step(m, batch)["label_ce"])
        logits = torch.log(m.predict_proba(batch))
    per = F.cross_entropy(logits, batch.labels, reduction="none")
    w = m.mal.alpha[batch.labels]
    assert got == pytest.approx(float((per * w / w.mean()).mean()), rel=1e-3)
    assert len(set(batch.labels.tolist())) > 1 and float(w.max() / w.min()) == pytest.approx(6.0)
    m.cfg.train.stage2.class_balanced = False
    with torch.no_grad():
        assert float(stage2_step(m, batch)["label_ce"]) == pytest.approx(float(per.mean()), rel=1e-3)


def test_stage2_former_augment_keeps_the_frozen_former_in_train_mode():
    m = EmoQModel(tiny_config([*SHORT_PROMPT, "train.stage2.former_augment=true"]))
    m.set_class_counts([3, 3, 3, 3])
    m.set_stage(2)
    assert m.former.training  # dropout and time masking on, while its weights stay frozen
    assert not m.former.queries.requires_grad and m.former.projector[0].weight.requires_grad
    plain = EmoQModel(tiny_config(SHORT_PROMPT))
    plain.set_stage(2)
    assert not plain.former.training


def test_stage2_former_lr_scale_slows_only_the_carried_former_weights():
    """``train.stage2.former_lr_scale``: the Former's stage-1 weights at lr x scale, the projector and LoRA at lr;
    at 1.0 one rate for all (the optimizer as before: two groups, decay and no decay)."""
    base = [*SHORT_PROMPT, "train.stage2.former_trainable=true", "train.stage2.mal_weight=1.0", "train.stage2.lr=0.01"]
    m = EmoQModel(tiny_config([*base, "train.stage2.former_lr_scale=0.1"]))
    m.set_stage(2)
    opt = make_optimizer(m, 2)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    named = dict(trainable_named_parameters(m, 2))
    assert len(lr_of) == len(named)  # every trained parameter once
    for n, p in named.items():
        carried = n.startswith("former.") and not n.startswith("former.projector.")
        assert lr_of[id(p)] == pytest.approx(0.001 if carried else 0.01), n
    assert any(n.startswith("former.qformer.") for n in named) and any("lora_" in n for n in named)
    plain = EmoQModel(tiny_config(base))
    plain.set_stage(2)
    groups = make_optimizer(plain, 2).param_groups
    assert len(groups) == 2 and {g["lr"] for g in groups} == {0.01}
