"""Offline model assets: the tiny Qwen2 LLM (transformers + a real vLLM CPU engine) and the tiny speech encoders."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from emoq_model.assets.paths import read_spec
from emoq_model.assets.tiny_encoders import (
    FAMILIES,
    build_tiny_encoder,
    expected_num_frames,
    family_settings,
)
from emoq_model.assets.tiny_llm import (
    DEFAULT_LABELS,
    EOS_TOKEN,
    IM_END,
    IM_START,
    KNOWN_LABELS,
    LABEL_PREFIX,
    MELD_LABELS,
    PAD_TOKEN,
    build_tiny_llm,
    build_tokenizer,
    label_token_ids,
    labels_are_single_tokens,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory) -> Path:
    return build_tiny_llm(tmp_path_factory.mktemp("llm") / "tiny-qwen2")


@pytest.fixture(scope="module")
def tokenizer(llm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(llm_dir)


@pytest.fixture(scope="module")
def hf_model(llm_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(llm_dir, dtype=torch.float32).eval()


# ------------------------------------------------------------------------------------------ LLM, transformers


def test_llm_directory_and_config(llm_dir, tokenizer, hf_model):
    names = {p.name for p in llm_dir.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "emoq_asset.json",
    } <= names
    assert not [p for p in llm_dir.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left behind
    cfg = hf_model.config
    assert type(hf_model).__name__ == "Qwen2ForCausalLM" and cfg.model_type == "qwen2"
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (256, 4, 4, 2)
    assert cfg.vocab_size >= len(tokenizer) and cfg.vocab_size % 64 == 0
    assert cfg.tie_word_embeddings
    assert hf_model.lm_head.weight.data_ptr() == hf_model.model.embed_tokens.weight.data_ptr()
    assert hf_model.dtype == torch.float32
    n_params = sum(p.numel() for p in hf_model.parameters())
    assert 15_000_000 < n_params < 18_000_000, n_params
    gen = json.loads((llm_dir / "generation_config.json").read_text())
    eos_ids = gen["eos_token_id"]
    assert tokenizer.convert_tokens_to_ids(IM_END) in eos_ids and tokenizer.convert_tokens_to_ids(PAD_TOKEN) in eos_ids
    assert cfg.eos_token_id == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    assert cfg.pad_token_id == tokenizer.pad_token_id == 50256

    ids = torch.tensor([tokenizer.encode("hello world, how are you?")])
    with torch.no_grad():
        logits = hf_model(input_ids=ids).logits
        logits_e = hf_model(inputs_embeds=hf_model.get_input_embeddings()(ids)).logits
    assert logits.shape == (1, ids.shape[1], cfg.vocab_size)
    assert torch.allclose(logits, logits_e)


def test_llm_build_is_deterministic_reused_and_forced(llm_dir, tmp_path):
    from safetensors.torch import load_file

    spec = read_spec(llm_dir)
    assert spec["labels"][: len(KNOWN_LABELS)] == list(KNOWN_LABELS)
    mtime = (llm_dir / "model.safetensors").stat().st_mtime_ns
    t0 = time.perf_counter()
    assert build_tiny_llm(llm_dir) == llm_dir  # same spec: reused
    assert time.perf_counter() - t0 < 1.0
    assert (llm_dir / "model.safetensors").stat().st_mtime_ns == mtime

    other = build_tiny_llm(tmp_path / "again", hidden_size=128, num_layers=1, seed=0)
    assert json.loads((other / "config.json").read_text())["hidden_size"] == 128
    forced = build_tiny_llm(tmp_path / "again", hidden_size=128, num_layers=1, seed=0, force=True)
    a = load_file(str(other / "model.safetensors"))
    b = load_file(str(forced / "model.safetensors"))
    assert a.keys() == b.keys() and "lm_head.weight" not in a  # tied: only the embedding is stored
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seed, same weights
    reseeded = build_tiny_llm(tmp_path / "again", hidden_size=128, num_layers=1, seed=1)  # other spec: rebuilt
    c = load_file(str(reseeded / "model.safetensors"))
    assert not torch.equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_tokenizer_specials_and_chat_template(tokenizer):
    assert tokenizer.convert_tokens_to_ids([PAD_TOKEN, IM_START, IM_END]) == [50256, 50257, 50258]
    assert tokenizer.eos_token == IM_END and tokenizer.pad_token == PAD_TOKEN and tokenizer.bos_token is None
    assert tokenizer.encode("hi") == tokenizer.encode("hi", add_special_tokens=False)  # nothing added
    assert sorted(tokenizer.get_vocab().values()) == list(range(len(tokenizer)))

    msgs = [
        {"role": "system", "content": "You recognise emotions."},
        {"role": "user", "content": "How does the speaker feel?"},
    ]
    text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou recognise emotions.<|im_end|>\n"
        "<|im_start|>user\nHow does the speaker feel?<|im_end|>\n<|im_start|>assistant\n"
    )
    prompt_ids = tokenizer.encode(text)
    assert prompt_ids.count(50257) == 3 and prompt_ids.count(50258) == 2

    full = msgs + [{"role": "assistant", "content": "angry"}]
    enc = tokenizer.apply_chat_template(full, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = enc["input_ids"], enc["assistant_masks"]
    angry = label_token_ids(tokenizer, ["angry"])[0]
    # the prompt's tokens are a prefix of the full conversation's; the answer is label + <|im_end|>
    assert ids[: len(prompt_ids)] == prompt_ids
    assert ids[len(prompt_ids) :] == [angry, 50258, tokenizer.encode("\n")[0]]
    assert [i for i, m in zip(ids, mask) if m] == [angry, 50258]
    assert tokenizer.decode(ids, skip_special_tokens=True).strip().endswith("angry")


def test_label_words_are_single_tokens(tokenizer):
    assert LABEL_PREFIX == ""
    for labels in (DEFAULT_LABELS, MELD_LABELS, KNOWN_LABELS):
        ids = label_token_ids(tokenizer, labels)
        assert len(set(ids)) == len(labels)
        assert [tokenizer.decode([i]) for i in ids] == list(labels)
        assert labels_are_single_tokens(tokenizer, labels)
        spaced = label_token_ids(tokenizer, labels, prefix=" ")
        assert [tokenizer.decode([i]) for i in spaced] == [" " + x for x in labels]
    # GPT-2 already had " angry", "happy", "neutral": those ids are untouched; "angry"/"sad" were added
    assert label_token_ids(tokenizer, ["neutral", "happy"]) == [29797, 34191]
    assert all(i >= 50259 for i in label_token_ids(tokenizer, ["angry", "sad", "sadness", "disgust", "fear"]))
    # labels were added as BPE merges, not "added tokens": words containing them tokenize as in GPT-2
    assert tokenizer.tokenize(" fearful") == ["Ġfearful"]
    assert tokenizer.tokenize(" sadly disgusted") == ["Ġsadly", "Ġdisgusted"]
    assert tokenizer.tokenize("angry\nsad") == ["angry", "Ċ", "sad"]
    assert not labels_are_single_tokens(tokenizer, ["frustrated"])
    with pytest.raises(ValueError, match="not single tokens"):
        label_token_ids(tokenizer, ["neutral", "frustrated"])


def test_extra_labels_become_single_tokens():
    tok = build_tokenizer(("frustrated", "excited", "calm"))
    assert labels_are_single_tokens(tok, ("frustrated", "excited", "calm") + KNOWN_LABELS)
    assert labels_are_single_tokens(tok, ("frustrated", "excited"), prefix=" ")
    with pytest.raises(ValueError, match="several words"):
        build_tokenizer(("very happy",))


def test_hf_greedy_answer_is_reproducible(tokenizer, hf_model):
    msgs = [{"role": "user", "content": "How does the speaker feel?"}]
    ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out1 = hf_model.generate(**ids, max_new_tokens=4, do_sample=False)
        out2 = hf_model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert torch.equal(out1, out2) and out1.shape[1] == ids["input_ids"].shape[1] + 4


# ------------------------------------------------------------------------------------------------ LLM, vLLM


@pytest.fixture(scope="module")
def vllm_run(llm_dir, tmp_path_factory):
    """One real vLLM CPU engine start in a subprocess (tests/model/vllm_tiny_llm_check.py); its results as a dict."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed")
    out = tmp_path_factory.mktemp("vllm") / "result.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["EMOQ_TEST_LABELS"] = json.dumps(list(DEFAULT_LABELS))
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "model" / "vllm_tiny_llm_check.py"), str(llm_dir), str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not out.exists():
        pytest.fail(f"vLLM check failed (rc {proc.returncode}):\n{(proc.stdout + proc.stderr)[-6000:]}")
    result = json.loads(out.read_text())
    result["wall_s"] = wall
    print(f"vLLM engine start {result['engine_start_s']:.1f} s, whole subprocess {wall:.1f} s")
    return result


@pytest.mark.slow
def test_vllm_prompt_embeds_match_token_ids(vllm_run):
    by_ids, by_text, by_embeds = vllm_run["by_ids"], vllm_run["by_text"], vllm_run["by_embeds"]
    assert len(by_ids) == len(by_text) == len(by_embeds) >= 8
    assert len({tuple(p) for p in vllm_run["prompts"]}) == len(vllm_run["prompts"])  # different prompts
    for a, b, c in zip(by_ids, by_text, by_embeds):
        assert a["token_ids"] == b["token_ids"] == c["token_ids"]
        assert len(a["token_ids"]) == 6
        for la, lc in zip(a["logprobs"], c["logprobs"]):
            tok = next(iter(set(la) & set(lc)))
            assert abs(la[tok] - lc[tok]) < 1e-4
    assert len({tuple(r["token_ids"]) for r in by_ids}) > 1  # outputs depend on the prompt


@pytest.mark.slow  # a real vLLM engine start (~55 s): CI runs it, the `-m "not slow"` developer loop does not
def test_vllm_matches_transformers(vllm_run, hf_model):
    """vLLM's greedy tokens are HF's argmax (up to float ties) and its logprobs are HF's."""
    for prompt, row in zip(vllm_run["prompts"], vllm_run["by_embeds"]):
        seq = torch.tensor([prompt + row["token_ids"]])
        with torch.no_grad():
            lp = torch.log_softmax(hf_model(input_ids=seq).logits[0].double(), dim=-1)
        for j, tok in enumerate(row["token_ids"]):
            pos = len(prompt) - 1 + j
            assert lp[pos, tok] >= lp[pos].max() - 1e-3
            assert abs(lp[pos, tok].item() - row["logprobs"][j][str(tok)]) < 2e-3


def test_vllm_choice_decoding_returns_only_labels(vllm_run):
    labels = vllm_run["labels"]
    assert labels == list(DEFAULT_LABELS)
    rows = vllm_run["by_choice"]
    assert len(rows) >= 8
    for row in rows:
        assert row["text"] in labels, row
        assert row["finish_reason"] == "stop"


def test_vllm_one_step_label_scores(vllm_run, hf_model):
    """``allowed_token_ids`` + ``logprob_token_ids``: one decode step gives every label's logprob."""
    ids = vllm_run["label_ids"]
    for prompt, row in zip(vllm_run["prompts"], vllm_run["by_allowed"]):
        assert len(row["token_ids"]) == 1 and row["token_ids"][0] in ids
        assert row["text"] in vllm_run["labels"]
        scores = row["logprobs"][0]
        assert set(map(int, scores)) >= set(ids)
        label_lp = np.array([scores[str(i)] for i in ids])
        assert ids[int(label_lp.argmax())] == row["token_ids"][0]
        with torch.no_grad():
            lp = torch.log_softmax(hf_model(input_ids=torch.tensor([prompt])).logits[0, -1].double(), dim=-1)
        np.testing.assert_allclose(label_lp, lp[ids].numpy(), atol=2e-3)


# --------------------------------------------------------------------------------------------------- encoders


@pytest.fixture(scope="module")
def encoder_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("encoders")


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_encoder_frames(family, encoder_root):
    from transformers import AutoFeatureExtractor, AutoModel

    path = build_tiny_encoder(family, encoder_root / family)
    assert build_tiny_encoder(family, encoder_root / family) == path  # reused
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {p.name for p in path.iterdir()}
    model = AutoModel.from_pretrained(path).eval()
    fe = AutoFeatureExtractor.from_pretrained(path)
    settings = family_settings(family)
    assert type(fe).__name__ == "Wav2Vec2FeatureExtractor" and fe.sampling_rate == 16_000
    assert model.config.feat_extract_norm == settings["feat_extract_norm"]
    assert model.config.hidden_size == settings["hidden_size"] and model.config.num_hidden_layers == 2

    rng = np.random.default_rng(0)
    lengths = [16_000, 9_600]
    waves = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]
    inputs = fe(waves, sampling_rate=16_000, padding=True, return_tensors="pt")
    assert ("attention_mask" in inputs) == settings["return_attention_mask"]
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    assert [expected_num_frames(n) for n in lengths] == [49, 29]
    assert out.last_hidden_state.shape == (2, 49, settings["hidden_size"])
    assert len(out.hidden_states) == 3
    assert model._get_feat_extract_output_lengths(torch.tensor(lengths)).tolist() == [49, 29]
    assert expected_num_frames(400) == 1 and expected_num_frames(399) == 0
    assert torch.isfinite(out.last_hidden_state).all()

    if settings["feat_extract_norm"] == "layer":
        # with layer norm + attention mask a padded batch equals the single input on its valid frames
        alone = fe([waves[1]], sampling_rate=16_000, return_tensors="pt")
        with torch.no_grad():
            single = model(**alone).last_hidden_state
        assert single.shape[1] == 29
        torch.testing.assert_close(out.last_hidden_state[1, :29], single[0], atol=1e-4, rtol=1e-4)


def test_tiny_encoder_rejects_unknown_family(tmp_path):
    with pytest.raises(ValueError, match="unknown encoder family"):
        build_tiny_encoder("whisper", tmp_path / "x")
