"""The soft-prompt builder: chat format, label masking, training == serving prefix, HF loss equivalence."""

from __future__ import annotations

import pytest
import torch

from emoq_model.model import EmoQModel, collate_features
from emoq_model.prompt import IGNORE_INDEX, build_prompt_embeds, pad_prompts
from emoq_model.testing import synthetic_items, tiny_config


@pytest.fixture(scope="module")
def model():
    cfg = tiny_config(["former.text_fusion=concat", "prompt.include_transcript=true", "llm.device=cpu"])
    return EmoQModel(cfg)


@pytest.fixture(scope="module")
def batch(model):
    items = synthetic_items(6, 4, width=48, layers=3, transcripts=True, seed=1)
    items[1]["transcript"] = " ".join(["word"] * 40)  # longer than max_transcript_tokens (16)
    return collate_features(items)


def test_fixed_parts_follow_the_chat_template(model):
    tok, p = model.tokenizer, model.prompt
    q = "QQQ"
    user = p.cfg.instruction.replace("{labels}", ", ".join(model.label_names)) + p.cfg.speech_intro + q
    chat = tok.apply_chat_template(
        [
            {"role": "system", "content": p.cfg.system},
            {"role": "user", "content": user},
            {"role": "assistant", "content": "angry"},
        ],
        tokenize=False,
    )
    ours = tok.decode(p.prefix_ids) + q + tok.decode(p.suffix_ids) + tok.decode([p.label_ids[2], p.end_id])
    assert chat.rstrip("\n") == ours
    assert p.end_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert p.label_ids == [tok.encode(n, add_special_tokens=False)[0] for n in model.label_names]
    assert p.prefix_ids[:1] == tok.encode("<|im_start|>", add_special_tokens=False)  # fixed instruction first


def test_training_and_serving_sequences(model, batch):
    with torch.no_grad():
        serve = model.prompt_embeds(batch)
        train = model.prompt_embeds(batch, targets=batch.labels)
    ids = model.prompt.transcript_ids(batch.transcripts, len(batch))
    assert len(ids[1]) == 16 and ids[0] == []  # truncated; item 0 has no transcript
    q = model.former.num_queries
    for i in range(len(batch)):
        n = serve.prompt_lengths[i]
        extra = len(model.prompt.transcript_intro_ids) + len(ids[i]) if ids[i] else 0
        assert n == model.prompt.fixed_length + q + extra == serve.embeds[i].shape[0]
        assert train.prompt_lengths[i] == n and train.embeds[i].shape[0] == n + 2
        assert torch.equal(train.embeds[i][:n], serve.embeds[i])  # same function, same prompt
        lab = train.labels[i]
        assert (lab[:n] == IGNORE_INDEX).all()
        assert lab[n:].tolist() == [model.prompt.label_ids[int(batch.labels[i])], model.prompt.end_id]
        # the fixed parts are the LLM's own token embeddings; the queries sit right after the prefix
        emb = model.embed.weight
        k = len(model.prompt.prefix_ids)
        assert torch.equal(serve.embeds[i][:k], emb[model.prompt.prefix_ids])
        assert torch.equal(serve.embeds[i][n - len(model.prompt.suffix_ids) :], emb[model.prompt.suffix_ids])
        if ids[i]:
            assert torch.equal(
                serve.embeds[i][k + q + len(model.prompt.transcript_intro_ids) :][: len(ids[i])], emb[ids[i]]
            )
    assert serve.labels is None and all(e.dim() == 2 for e in serve.embeds)  # vLLM prompt_embeds: [T, H]


def test_transcripts_can_stay_out_of_the_prompt(model, batch):
    q = model.former.project(model.run_former(batch).queries).detach()
    ids = model.prompt.transcript_ids(batch.transcripts, len(batch))
    with_text = build_prompt_embeds(model.prompt, model.embed, q, ids)
    model.prompt.cfg.include_transcript = False
    try:
        without = build_prompt_embeds(model.prompt, model.embed, q, ids)
    finally:
        model.prompt.cfg.include_transcript = True
    assert all(n == model.prompt.fixed_length + q.shape[1] for n in without.prompt_lengths)
    assert with_text.prompt_lengths[1] > without.prompt_lengths[1]


def test_answer_loss_equals_hf_labels_loss(model, batch):
    """stage 2's LM loss (logits only at the answer positions) == HF's loss with the masked labels."""
    model.set_stage(2)
    try:
        with torch.no_grad():
            ours = model.stage_step(batch, 2)["lm"]
            x, mask, labels = pad_prompts(model.prompt_embeds(batch, targets=batch.labels))
            hf = model.llm(inputs_embeds=x, attention_mask=mask, labels=labels).loss
    finally:
        model.set_stage(1)
    assert torch.allclose(ours, hf, atol=1e-5), (ours, hf)
