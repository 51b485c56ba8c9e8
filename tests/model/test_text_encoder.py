"""The Former's pretrained text side: BLIP-2-style initialisation from a BERT-family checkpoint (all-MiniLM-L6-v2)
and transcript embedding by the frozen text encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emoq_model.assets.text_encoders import build_minilm
from emoq_model.config import ConfigError, FormerConfig
from emoq_model.former import EmoQFormer
from emoq_model.model import EmoQFrontEnd, collate_features
from emoq_model.testing import tiny_config
from emoq_model.text_encoder import qformer_init_map, read_text_encoder_state

MINILM = dict(hidden=384, num_heads=12, intermediate=1536)


@pytest.fixture(scope="module")
def minilm() -> str:
    return str(build_minilm())


def _former(minilm_path: str | None, layers: int = 2, text_fusion: str = "concat", **sizes) -> EmoQFormer:
    torch.manual_seed(0)
    cfg = FormerConfig(
        num_queries=4,
        num_layers=layers,
        cross_attention_frequency=1,
        text_fusion=text_fusion,
        dropout=0.0,
        **(sizes or MINILM),
    )
    f = EmoQFormer(cfg, encoder_dim=48, llm_dim=64, num_labels=4, text_dim=384)
    if minilm_path:
        f.init_from_text_encoder(minilm_path)
    return f.eval()


def test_minilm_init_copies_exactly_self_attention_and_feed_forwards(minilm):
    state = read_text_encoder_state(minilm)
    f = _former(minilm, layers=3)
    names = set(qformer_init_map(state, f.qformer))
    q_params = dict(f.qformer.named_parameters())
    # every Q-Former parameter is initialised from the text encoder except the (new) cross-attention layers
    assert set(q_params) - names == {n for n in q_params if ".crossattention." in n}
    assert len(names) == 2 + 3 * 22  # input LayerNorm + per layer: self-attention (10), text and query FFNs (6 each)
    for i in range(3):
        bert = f"encoder.layer.{i}."
        pairs = {
            "attention.attention.query.weight": "attention.self.query.weight",
            "attention.output.LayerNorm.bias": "attention.output.LayerNorm.bias",
            "intermediate.dense.weight": "intermediate.dense.weight",
            "intermediate_query.dense.weight": "intermediate.dense.weight",
            "output_query.dense.bias": "output.dense.bias",
            "output_query.LayerNorm.weight": "output.LayerNorm.weight",
        }
        for dst, src in pairs.items():
            assert torch.equal(q_params[bert + dst].detach(), state[bert + src]), (dst, src)
    assert torch.equal(q_params["layernorm.weight"].detach(), state["embeddings.LayerNorm.weight"])
    assert torch.equal(f.text_proj.weight.detach(), torch.eye(384))  # text enters in the encoder's own space
    fresh = _former(None, layers=3)
    for n in q_params:
        if ".crossattention." in n:
            assert torch.equal(q_params[n].detach(), dict(fresh.qformer.named_parameters())[n].detach())


def test_minilm_init_refuses_mismatched_sizes(minilm):
    with pytest.raises(ValueError, match="shape mismatch"):
        _former(minilm, hidden=256, num_heads=4, intermediate=1536)
    with pytest.raises(ValueError, match="only 6"):
        _former(minilm, layers=7)
    with pytest.raises(ConfigError, match="must match"):
        tiny_config([f"former.text_encoder={minilm}", "former.init_from_text_encoder=true"])


def _front(minilm, overrides=()):
    cfg = tiny_config(
        [
            "former.text_fusion=concat",
            f"former.text_encoder={minilm}",
            "former.init_from_text_encoder=true",
            "former.hidden=384",
            "former.num_heads=12",
            "former.intermediate=1536",
            "former.num_layers=2",
            "former.dropout=0.0",
            "prompt.include_transcript=false",
            "llm.device=cpu",
            *overrides,
        ]
    )
    from emoq_model.llm import load_input_embeddings, load_tokenizer

    return EmoQFrontEnd(cfg, load_tokenizer(cfg.llm), load_input_embeddings(cfg.llm)).eval(), cfg


def _items(cfg, transcripts, seed=0):
    from emoq_model.model import encoder_dims

    width, layers = encoder_dims(cfg)
    g = np.random.default_rng(seed)
    shape = (lambda t: (layers, t, width)) if cfg.encoder.layer == "weighted" else (lambda t: (t, width))
    return [
        {"frames": g.standard_normal(shape(t)).astype(np.float32), "transcript": tx}
        for t, tx in zip((20, 13, 9), transcripts)
    ]


def _prompts(front, items):
    with torch.no_grad():
        return front.prompt_embeds(collate_features(items)).embeds


def test_text_fusion_follows_the_transcript_and_nothing_else(minilm):
    front, cfg = _front(minilm)
    assert front.text_encoder is not None and front.former.text_proj.in_features == 384
    a = _prompts(front, _items(cfg, ["this is the third time I am calling", "thank you so much", None]))
    b = _prompts(front, _items(cfg, ["this is the third time I am calling", "I am fed up with this", None]))
    assert torch.allclose(a[0], b[0], atol=1e-5)  # same transcript, same frames: same prompt (batch-independent)
    assert torch.allclose(a[2], b[2], atol=1e-5)  # no transcript: same prompt
    assert (a[1] - b[1]).abs().max() > 1e-3  # the transcript changed: the prompt changed
    # same transcripts, other speech: the prompt changes (speech is used) ...
    c = _prompts(front, _items(cfg, ["this is the third time I am calling", "thank you so much", None], seed=1))
    assert (a[0] - c[0]).abs().max() > 1e-3
    # ... unless the Former is the text-only ablation
    text_only, cfg = _front(minilm, ["former.use_speech=false"])
    d = _prompts(text_only, _items(cfg, ["this is the third time I am calling", "thank you so much", None]))
    e = _prompts(text_only, _items(cfg, ["this is the third time I am calling", "thank you so much", None], seed=1))
    assert torch.allclose(d[0], e[0], atol=1e-5) and torch.allclose(d[1], e[1], atol=1e-5)


def test_speech_only_former_ignores_transcripts(minilm):
    front, cfg = _front(minilm, ["former.text_fusion=none"])
    assert front.text_encoder is None  # only the initialisation came from it
    a = _prompts(front, _items(cfg, ["this is the third time I am calling", "thank you so much", None]))
    b = _prompts(front, _items(cfg, ["completely different words", None, "and more"]))
    for x, y in zip(a, b):
        assert torch.allclose(x, y, atol=1e-5)


def test_text_encoder_cache_gives_the_uncached_states(minilm):
    from emoq_model.text_encoder import TextEncoder

    texts = ["this is the third time I am calling", None, "thank you so much", "", "I am fed up"]
    cached, plain = TextEncoder(minilm, "cpu"), TextEncoder(minilm, "cpu", cache_size=0)
    a, ma = cached.encode(texts)
    b, mb = cached.encode(list(reversed(texts)))  # from the cache, other batch and padding
    c, mc = plain.encode(texts)
    assert torch.equal(ma, mc) and ma.sum(-1).tolist()[1] == ma.sum(-1).tolist()[3] == 0
    assert torch.allclose(a[ma], c[mc], atol=1e-5)
    assert torch.allclose(b.flip(0)[mb.flip(0)], c[mc], atol=1e-5)
    assert len(cached._cache) == 3 and not plain._cache
