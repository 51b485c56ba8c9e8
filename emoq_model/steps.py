"""The two training stages: what each trains, train/eval modes, one step's loss, the optimizer.

* Stage 1 (EmoQ-Former pre-training): the Former (queries, Q-Former, layer weights, encoder LayerNorm, transcript
  projection) and the aux head, with MAL. The projector and the LLM are not used.
* Stage 2 (LLM fine-tuning): the projector and the LoRA adapters with the LM loss on the answer (label token +
  end-of-turn) plus ``label_ce_weight`` x the cross-entropy over the label tokens only (the classification
  objective that constrained decoding and ``predict_proba`` use) plus ``distill_weight`` x KL(aux head || LLM
  label distribution): the stage-1 aux head, trained on the same data, is the teacher, so the LLM answer can start
  from the Former's accuracy instead of relearning it from a few epochs of LoRA (off by default: on the demo calls
  it validated at the same UA as without, 0.613 vs 0.619); with ``train.stage2.former_trainable`` also the Former,
  and with ``mal_weight > 0`` MAL as an auxiliary loss (aux head included); with ``train.stage2.former_augment``
  the frozen Former keeps its training-mode noise (dropout, time masking), so the LLM learns from query outputs
  like those of unseen audio.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from emoq_model.batch import EmoQBatch
from emoq_model.prompt import IGNORE_INDEX, pad_prompts

# ``model`` below is an emoq_model.model.EmoQModel (typed as nn.Module: this module is imported by that one)

STAGES = (1, 2)


def _check(stage: int) -> None:
    if stage not in STAGES:
        raise ValueError(f"stage must be 1 or 2, got {stage}")


def trainable_named_parameters(model: nn.Module, stage: int) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) pairs that ``stage`` trains; everything else stays frozen."""
    _check(stage)
    s2 = model.cfg.train.stage2
    out = []
    dead = {f"former.{n}" for n in model.former.unused_parameter_names()}
    for name, p in model.former.named_parameters(prefix="former"):
        if name in dead:
            continue
        is_proj = name.startswith("former.projector.")
        is_aux = name.startswith("former.aux_head.")
        if stage == 1:
            keep = not is_proj
        else:
            keep = is_proj or (s2.former_trainable and (not is_aux or s2.mal_weight > 0))
        if keep:
            out.append((name, p))
    if stage == 2:
        out += [(f"llm.{n}", p) for n, p in model.llm.named_parameters() if "lora_" in n]
    return out


def apply_modes(model: nn.Module, stage: int) -> None:
    """Train/eval modes of the parts (dropout): trained parts in train mode, frozen parts in eval."""
    s2 = model.cfg.train.stage2
    nn.Module.train(model, True)
    model.former.train(stage == 1 or s2.former_trainable or s2.former_augment)
    model.llm.train(stage == 2)


def set_stage(model: nn.Module, stage: int) -> None:
    """Freeze all but the stage's parameters and set modes. Build the optimizer / DDP wrapper afterwards."""
    _check(stage)
    model.requires_grad_(False)
    for p in model.parameters():
        p.grad = None  # no stale gradients from the previous stage
    for _, p in trainable_named_parameters(model, stage):
        p.requires_grad_(True)
    model.stage = stage
    apply_modes(model, stage)


def stage1_step(model: nn.Module, batch: EmoQBatch) -> dict[str, torch.Tensor]:
    """MAL on the Former output."""
    if batch.labels is None:
        raise ValueError("stage 1 needs labels")
    fo = model.run_former(batch)
    out = model.mal(fo.pooled, fo.logits, batch.labels)
    out["acc_aux"] = (fo.logits.argmax(-1) == batch.labels).float().mean().detach()
    return out


def stage2_step(model: nn.Module, batch: EmoQBatch) -> dict[str, torch.Tensor]:
    """LM loss on the answer tokens + ``label_ce_weight`` x label-restricted CE (+ ``mal_weight`` x MAL when the
    Former trains)."""
    from emoq_model.llm import answer_logits

    if batch.labels is None:
        raise ValueError("stage 2 needs labels")
    s2 = model.cfg.train.stage2
    text = model._text(batch)
    with torch.set_grad_enabled(s2.former_trainable and torch.is_grad_enabled()):
        fo = model.run_former(batch, text)
    prompts = model.prompt_embeds(batch, targets=batch.labels, former_out=fo)
    x, mask, labels = pad_prompts(prompts)
    tgt = labels[:, 1:]
    pos = (tgt != IGNORE_INDEX).nonzero()  # [N, 2]: logits at t predict labels[t + 1]
    logits = answer_logits(model.llm, x, mask, pos)
    # per-example weights: 1, or the class's focal alpha (class_balanced), normalised to mean 1 over the batch
    if s2.class_balanced and bool(torch.isnan(model.mal.alpha).any()):
        raise RuntimeError("train.stage2.class_balanced with loss.alpha='auto': call set_class_counts first")
    w = model.mal.alpha[batch.labels.to(model.mal.alpha.device)] if s2.class_balanced else torch.ones(len(batch.labels))
    w = (w / w.mean()).to(logits.device)
    lm = (F.cross_entropy(logits, tgt[pos[:, 0], pos[:, 1]], reduction="none") * w[pos[:, 0]]).mean()
    out = {"lm": lm.detach()}
    total = s2.lm_weight * lm
    if s2.mal_weight > 0:
        mal = model.mal(fo.pooled, fo.logits, batch.labels)
        total = total + s2.mal_weight * mal["loss"]
        out.update({k: v for k, v in mal.items() if k != "loss"})
    # the answer's label token, restricted to the label set: accuracy, and the label-only cross-entropy
    first = torch.tensor(prompts.prompt_lengths, device=pos.device) - 1
    rows = (pos[:, 1] == first[pos[:, 0]]).nonzero().squeeze(1)
    label_logits = logits[rows][:, model.prompt.label_ids]
    target = batch.labels[pos[rows, 0]]
    label_ce = (F.cross_entropy(label_logits, target, reduction="none") * w[pos[rows, 0]]).mean()
    out["label_ce"] = label_ce.detach()
    if s2.label_ce_weight > 0:
        total = total + s2.label_ce_weight * label_ce
    out["acc"] = (label_logits.argmax(-1) == target).float().mean().detach()
    if s2.distill_weight > 0:  # the LLM starts from what the Former's aux head knows, then adds to it
        teacher = torch.softmax(fo.logits.detach().float()[pos[rows, 0]], -1)
        distill = F.kl_div(torch.log_softmax(label_logits.float(), -1), teacher, reduction="batchmean")
        out["distill"] = distill.detach()
        total = total + s2.distill_weight * distill
    out["loss"] = total
    return out


def make_optimizer(model: nn.Module, stage: int) -> torch.optim.Optimizer:
    """AdamW over the stage's parameters with the configured lr / weight decay (no decay on norms, biases,
    queries and layer weights); in stage 2 the Former's stage-1 weights at ``lr x former_lr_scale``."""
    sc = model.cfg.train.stage1 if stage == 1 else model.cfg.train.stage2
    scale = sc.former_lr_scale if stage == 2 else 1.0
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in trainable_named_parameters(model, stage):
        no_decay = p.dim() < 2 or name.endswith("queries")
        carried = scale != 1.0 and name.startswith("former.") and not name.startswith("former.projector.")
        groups.setdefault((no_decay, carried), []).append(p)
    return torch.optim.AdamW(
        [
            {
                "params": params,
                "weight_decay": 0.0 if no_decay else sc.weight_decay,
                "lr": sc.lr * (scale if carried else 1.0),
            }
            for (no_decay, carried), params in sorted(groups.items())
        ],
        lr=sc.lr,
    )
