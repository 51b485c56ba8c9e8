"""EmoQFormer shapes, masking and text fusion."""

from __future__ import annotations

import pytest
import torch

from emoq_model.config import FormerConfig
from emoq_model.former import EmoQFormer, LayerWeights

D, LLM, C = 48, 96, 4


def _former(text_fusion="concat", layers=3, **kw):
    torch.manual_seed(0)
    cfg = FormerConfig(
        num_queries=6,
        num_layers=3,
        num_heads=4,
        hidden=32,
        intermediate=64,
        cross_attention_frequency=2,
        text_fusion=text_fusion,
        dropout=0.0,
        **kw,
    )
    return EmoQFormer(
        cfg,
        encoder_dim=D,
        llm_dim=LLM,
        num_labels=C,
        num_encoder_layers=layers,
        text_dim=LLM,
        max_text_tokens=10,
        llm_embed_rms=0.02,
    ).eval()


def _inputs(b=3, t=20, layers=3):
    torch.manual_seed(1)
    frames = torch.randn(layers, b, t, D)
    mask = torch.arange(t)[None] < torch.tensor([20, 13, 5])[:, None]
    text = torch.randn(b, 7, LLM)
    tmask = torch.arange(7)[None] < torch.tensor([7, 2, 0])[:, None]
    return frames, mask, text, tmask


def test_shapes_with_and_without_text():
    f = _former()
    frames, mask, text, tmask = _inputs()
    for out in (f(frames, mask), f(frames, mask, text, tmask)):
        assert out.queries.shape == (3, 6, 32) and out.pooled.shape == (3, 32) and out.logits.shape == (3, C)
        assert f.project(out.queries).shape == (3, 6, LLM)
    # text changes the queries only where there is text
    a, b = f(frames, mask), f(frames, mask, text, tmask)
    assert not torch.allclose(a.queries[0], b.queries[0], atol=1e-4)
    assert torch.allclose(a.queries[2], b.queries[2], atol=1e-5)  # item 2 has no text tokens
    # projector LayerNorm starts at the LLM embedding scale
    assert f.project(a.queries).pow(2).mean().sqrt().item() == pytest.approx(0.02, rel=0.05)


def test_padding_is_masked():
    f = _former()
    frames, mask, text, tmask = _inputs()
    out = f(frames, mask, text, tmask)
    garbage = frames.clone()
    garbage[:, 1, 13:] = 1e3
    text2 = text.clone()
    text2[1, 2:] = 1e3
    out2 = f(garbage, mask, text2, tmask)
    assert torch.allclose(out.queries, out2.queries, atol=1e-5)
    # item alone (unpadded) == item in a padded batch
    single = f(frames[:, 2:3, :5], mask[2:3, :5], text[2:3, :0], tmask[2:3, :0])
    assert torch.allclose(single.queries[0], out.queries[2], atol=1e-5)


def test_layer_weights_and_no_text_module():
    f = _former(text_fusion="none", layers=1)
    assert f.layer_weights is None and f.text_proj is None
    frames, mask, text, tmask = _inputs(layers=1)
    out = f(frames[0], mask, text, tmask)  # text ignored
    assert torch.allclose(out.queries, f(frames[0], mask).queries)
    with pytest.raises(ValueError, match="no layer weights"):
        f(torch.randn(2, 3, 20, D), mask)
    lw = LayerWeights(3)
    x = torch.randn(3, 2, 4, 5)
    assert torch.allclose(lw(x), x.mean(0), atol=1e-6)  # zero logits = uniform average
    assert torch.allclose(lw.weights, torch.full((3,), 1 / 3))


def test_uses_blip2_qformer():
    from transformers import Blip2QFormerModel

    f = _former()
    assert isinstance(f.qformer, Blip2QFormerModel)
    assert f.qformer.config.encoder_hidden_size == D and f.qformer.config.use_qformer_text_input
    n_cross = sum(hasattr(layer, "crossattention") for layer in f.qformer.encoder.layer)
    assert n_cross == 2  # layers 0 and 2 at frequency 2


def test_time_mask_hides_spans_of_valid_frames_only():
    from emoq_model.former import time_mask

    torch.manual_seed(0)
    mask = torch.arange(400)[None] < torch.tensor([400, 120, 1, 0])[:, None]
    out = time_mask(mask, 0.5, 10)
    assert not (out & ~mask).any()  # padding stays padding
    kept = out[0].float().mean().item()
    assert 0.45 < kept < 0.75  # ~0.5 hidden less overlaps (measured 0.62 at seed 0 for T=200)
    assert out[2].sum() == 1 and not out[3].any()  # an item keeps at least one valid frame; padding-only stays so
    hidden = torch.cat([torch.zeros(1), (mask[0] & ~out[0]).float(), torch.zeros(1)])
    starts, ends = torch.nonzero(torch.diff(hidden) > 0).flatten(), torch.nonzero(torch.diff(hidden) < 0).flatten()
    assert len(starts) > 3 and (((ends - starts) >= 10) | (ends == 400)).all()  # whole (or merged) spans


def test_time_mask_only_while_training():
    f = _former(time_mask=0.5)
    frames, mask, _, _ = _inputs()
    a, b = f(frames, mask), f(frames, mask)
    assert torch.equal(a.queries, b.queries)  # eval: deterministic, nothing masked
    f.train()
    torch.manual_seed(3)
    c = f(frames, mask)
    assert not torch.allclose(a.queries, c.queries, atol=1e-4)


def test_stats_frames_are_typed_and_never_time_masked():
    """``former.stats_frames``: the two leading frames get a learned type embedding (the output changes when it
    does) and stay visible under time masking (only later frames are hidden)."""
    from emoq_model.former import time_mask

    f = _former(stats_frames=True)
    assert f.stats_type is not None and tuple(f.stats_type.shape) == (2, D)
    frames, mask, _, _ = _inputs()
    base = f(frames, mask).queries
    with torch.no_grad():
        f.stats_type.add_(1.0)
    assert not torch.allclose(base, f(frames, mask).queries, atol=1e-5)
    # masking: run the Former's own masking path and check the first two frames of every item stay valid
    seen = {}
    real_qformer = f.qformer.forward

    def spy(*a, **kw):
        seen["cross"] = kw["encoder_attention_mask"]
        return real_qformer(*a, **kw)

    f.qformer.forward = spy
    f.train()
    f.cfg.time_mask = 0.9
    for seed in range(5):
        torch.manual_seed(seed)
        f(frames, mask)
        visible = seen["cross"][:, 0, 0] == 0
        assert visible[:, :2].all() and not (visible & ~mask).any()
    torch.manual_seed(0)
    hidden = sum(int((~time_mask(mask, 0.9, 10)[:, :2]).sum()) for _ in range(20))
    assert hidden > 0  # plain masking would have hidden some of them


def test_no_stats_frames_no_parameter():
    assert _former().stats_type is None
