"""Bundle round trip (LoRA and merged), serving front end, and HF vs real vLLM parity on the same weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from emoq_model.bundle import load_bundle, read_meta, save_bundle
from emoq_model.model import EmoQModel, collate_features
from emoq_model.serving import CPU_BLOCK_SIZE, engine_kwargs, label_scores, save_features
from emoq_model.steps import make_optimizer
from emoq_model.testing import SHORT_PROMPT, synthetic_items, tiny_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A briefly trained model (both stages, so the Former, projector and LoRA all differ from init), its bundle
    (with a merged LLM) and a held-out batch."""
    model = EmoQModel(
        tiny_config([*SHORT_PROMPT, "former.text_fusion=concat", "prompt.include_transcript=true", "llm.device=cpu"])
    )
    model.set_class_counts([4, 4, 4, 4])
    train = collate_features(synthetic_items(16, 4, width=48, layers=3, transcripts=True, seed=0, frames=(8, 24)))
    for stage, steps in ((1, 5), (2, 12)):
        model.set_stage(stage)
        opt = make_optimizer(model, stage)
        for g in opt.param_groups:
            g["lr"] = 3e-3
        for _ in range(steps):
            opt.zero_grad()
            model(train, stage)["loss"].backward()
            opt.step()
    model.eval()
    test = collate_features(synthetic_items(12, 4, width=48, layers=3, transcripts=True, seed=7, frames=(8, 24)))
    bundle = save_bundle(model, tmp_path_factory.mktemp("b") / "bundle", merge_llm=True)
    return model, bundle, test


def test_bundle_layout(trained):
    model, bundle, _ = trained
    names = {p.name for p in bundle.iterdir()}
    assert {"config.yaml", "bundle.json", "former.safetensors", "adapter", "llm_merged"} <= names
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (bundle / "adapter").iterdir()}
    assert not list(bundle.rglob("*.bin")) and not list(bundle.rglob("*.pt"))
    cfg = json.loads((bundle / "adapter" / "adapter_config.json").read_text())
    assert cfg["modules_to_save"] is None and cfg["r"] == model.cfg.lora.r
    meta = read_meta(bundle)
    assert meta["labels"] == model.label_names and meta["label_token_ids"] == model.label_token_ids
    assert meta["llm_path"] == model.cfg.llm.path and Path(meta["llm_path"]).is_absolute()


def test_round_trip_predictions(trained):
    model, bundle, test = trained
    want = model.predict_proba(test)
    loaded = load_bundle(bundle, device="cpu")
    got = loaded.predict_proba(test)
    assert torch.allclose(got, want, atol=1e-6) and torch.equal(got.argmax(-1), want.argmax(-1))
    # serving front end (embedding table only, no LLM): the very same prompt embeddings
    front = load_bundle(bundle, device="cpu", load_llm=False)
    assert not hasattr(front, "llm")
    with torch.no_grad():
        a, b = front.prompt_embeds(test), model.prompt_embeds(test)
    assert all(torch.equal(x, y) for x, y in zip(a.embeds, b.embeds))
    # merged LLM (no LoRA) predicts the same
    from transformers import AutoModelForCausalLM

    from emoq_model.llm import answer_logits
    from emoq_model.prompt import pad_prompts

    merged = AutoModelForCausalLM.from_pretrained(bundle / "llm_merged", dtype=torch.float32).eval()
    x, mask, _ = pad_prompts(b)
    pos = torch.stack([torch.arange(len(test)), torch.tensor(b.prompt_lengths) - 1], 1)
    with torch.no_grad():
        p = torch.softmax(answer_logits(merged, x, mask, pos)[:, model.label_token_ids], -1)
    assert torch.allclose(p, want, atol=1e-5)


def test_copy_base_bundle_is_self_contained(trained, tmp_path):
    model, _, test = trained
    bundle = save_bundle(model, tmp_path / "copied", copy_base=True)
    meta = read_meta(bundle)
    assert meta["llm_path"] == str(bundle / "llm") and meta["encoder_path"] == str(bundle / "encoder")
    assert "${bundle}/llm" in (bundle / "config.yaml").read_text()
    front = load_bundle(bundle, device="cpu", load_llm=False)
    with torch.no_grad():
        assert torch.equal(front.prompt_embeds(test).embeds[0], model.prompt_embeds(test).embeds[0])


def _serve(bundle: Path, feats: Path, out: Path, modes: str, dtype: str) -> dict:
    """``python -m emoq_model.serving`` (a real vLLM CPU engine in its own process); its JSON result."""
    env = dict(
        os.environ,
        VLLM_CPU_KVCACHE_SPACE="1",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    cmd = [sys.executable, "-m", "emoq_model.serving", str(bundle), str(feats), str(out), "--modes", modes]
    run = subprocess.run([*cmd, "--dtype", dtype], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_vllm_parity(trained, tmp_path):
    """Same bundle through HF predict_proba and through a real vLLM engine (CPU, LoRA, prompt embeddings)."""
    pytest.importorskip("vllm")
    model, bundle, test = trained
    want = model.predict_proba(test).numpy()
    feats, out = tmp_path / "feats.safetensors", tmp_path / "vllm.json"
    save_features(feats, test)
    kw = engine_kwargs(bundle)
    assert kw["enable_lora"] is False and kw["enable_prompt_embeds"]  # merged bundle -> no LoRA needed ...
    kw = engine_kwargs(bundle, use_merged=False)
    assert kw["enable_lora"] and kw["max_lora_rank"] >= model.cfg.lora.r  # ... but the test serves the adapter
    res = _serve(bundle, feats, out, "tokens,choice", "float32")
    tokens, choice = res["modes"]["tokens"], res["modes"]["choice"]
    got = np.array(tokens["probs"])
    print(
        f"vLLM engine {res['engine_s']:.1f} s, generate {res['generate_s']:.2f} s; max |p_vllm - p_hf| = "
        f"{np.abs(got - want).max():.2e}; HF labels {want.argmax(1).tolist()}"
    )
    assert np.array_equal(got.argmax(1), want.argmax(1))
    assert np.allclose(got, want, atol=1e-3)
    assert tokens["generated"] == [model.label_token_ids[i] for i in want.argmax(1)]
    # grammar-constrained choice: where vLLM emitted a whole label token, it is the HF argmax
    ids = model.label_token_ids
    agree = [g == ids[k] for g, k in zip(choice["generated"], want.argmax(1)) if g in ids]
    assert agree and all(agree), choice["generated"]
    # ... and the mask keeps the ratios between label tokens: where all labels came back, same probabilities
    cp = np.array(choice["probs"])
    full = (cp > 0).all(1)
    assert full.any() and np.allclose(cp[full], want[full], atol=1e-3)


@pytest.mark.slow
def test_vllm_bfloat16_agrees_with_float32(trained, tmp_path):
    """The LLM precision option (the engine's ``dtype=bfloat16``) runs on the real engine and gives the float32
    label probabilities within its stated tolerance: 0.02 absolute, and the same argmax wherever float32's top two
    labels are further apart than twice that (measured: 0.005)."""
    pytest.importorskip("vllm")
    from emoq_model.config import native_bf16

    if not native_bf16("cpu"):
        pytest.skip("no native bfloat16 on this CPU (avx512_bf16 / amx_bf16): auto serves float32 here")
    model, bundle, test = trained
    want = model.predict_proba(test).numpy()
    feats = tmp_path / "feats.safetensors"
    save_features(feats, test)
    res = _serve(bundle, feats, tmp_path / "bf16.json", "tokens", "bfloat16")
    got = np.array(res["modes"]["tokens"]["probs"])
    print(f"vLLM bfloat16: max |p_bf16 - p_fp32| = {np.abs(got - want).max():.2e}")
    assert np.abs(got - want).max() < 0.02
    top2 = np.sort(want, 1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.04
    assert clear.any() and np.array_equal(got.argmax(1)[clear], want.argmax(1)[clear])


def test_engine_caches_the_prompt_prefix_on_cpu(trained):
    """On CPU the engine gets KV blocks that the default prompt's fixed prefix fills at least once (vLLM's CPU
    default, 128 tokens, is longer than the prefix, so prefix caching never hit); GPUs keep vLLM's default."""
    from emoq_model.config import LabelConfig, PromptConfig
    from emoq_model.prompt import PromptBuilder

    model, bundle, _ = trained
    kw = engine_kwargs(bundle)
    if torch.cuda.is_available():
        assert "block_size" not in kw
    else:
        assert kw["block_size"] == CPU_BLOCK_SIZE
    prefix = PromptBuilder(model.tokenizer, PromptConfig(), LabelConfig()).prefix_ids
    assert len(prefix) >= CPU_BLOCK_SIZE, f"the default prompt's fixed prefix is {len(prefix)} tokens"
    assert engine_kwargs(bundle, block_size=128)["block_size"] == 128  # the caller's choice wins


def test_label_scores_from_logprobs():
    """Mapping of vLLM outputs (duck-typed) to probabilities: renormalised over labels, missing = 0."""
    from types import SimpleNamespace as NS

    def out(gen, lp):
        return NS(outputs=[NS(token_ids=[gen], logprobs=[{t: NS(logprob=v) for t, v in lp.items()}])])

    outs = [out(11, {10: np.log(0.1), 11: np.log(0.3), 12: np.log(0.1)}), out(12, {12: np.log(0.5), 99: -0.1})]
    s = label_scores(outs, [10, 11, 12])
    assert np.allclose(s.probs[0], [0.2, 0.6, 0.2]) and np.allclose(s.probs[1], [0, 0, 1])
    assert s.index.tolist() == [1, 2] and np.allclose(s.confidence, [0.6, 1.0])
    assert np.allclose(s.label_mass, [0.5, 0.5]) and s.labels(["a", "b", "c"]) == ["b", "c"]
