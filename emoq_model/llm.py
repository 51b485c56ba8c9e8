"""LLM side: tokenizer, causal LM (local directory only), LoRA, the frozen input-embedding table, answer logits."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from emoq_model.config import LLMConfig, LoraConfig, resolve_device, resolve_dtype


def load_tokenizer(cfg: LLMConfig):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(cfg.path, trust_remote_code=cfg.trust_remote_code)


def load_causal_lm(cfg: LLMConfig, device: str | None = None, dtype: torch.dtype | None = None):
    """``AutoModelForCausalLM`` from ``cfg.path`` (frozen, eval) on the configured device / dtype."""
    from transformers import AutoModelForCausalLM

    device = device or resolve_device(cfg.device)
    dtype = dtype or resolve_dtype(cfg.dtype, cfg.device)
    kwargs = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
    # safetensors only, as vLLM (load_format="safetensors") and load_input_embeddings read it
    model = AutoModelForCausalLM.from_pretrained(
        cfg.path, dtype=dtype, trust_remote_code=cfg.trust_remote_code, use_safetensors=True, **kwargs
    )
    return model.to(device).eval().requires_grad_(False)


def peft_lora_config(cfg: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        modules_to_save=None,
        bias="none",
        task_type="CAUSAL_LM",
    )


def attach_lora(model, cfg: LoraConfig, adapter_dir: str | Path | None = None):
    """Wrap ``model`` with a LoRA adapter: new (B = 0, so the LLM is unchanged) or loaded from ``adapter_dir``."""
    from peft import PeftModel, get_peft_model

    if adapter_dir is not None:
        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
    return get_peft_model(model, peft_lora_config(cfg))


def input_embedding_name(cfg: LLMConfig) -> str:
    """Parameter name of the input embedding table in the checkpoint (model built on the meta device)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    hf = AutoConfig.from_pretrained(cfg.path, trust_remote_code=cfg.trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf, trust_remote_code=cfg.trust_remote_code)
    emb = model.get_input_embeddings()
    return next(n for n, p in model.named_parameters() if p is emb.weight)


def load_input_embeddings(cfg: LLMConfig, device: str | None = None, dtype: torch.dtype | None = None) -> nn.Embedding:
    """Only the LLM's input embedding table (frozen), read from its safetensors files, for building prompt
    embeddings without loading the LLM (serving: vLLM holds the LLM)."""
    from safetensors import safe_open

    device = device or resolve_device(cfg.device)
    dtype = dtype or resolve_dtype(cfg.dtype, cfg.device)
    name = input_embedding_name(cfg)
    root = Path(cfg.path)
    index = root / "model.safetensors.index.json"
    if index.is_file():
        files = [root / json.loads(index.read_text())["weight_map"][name]]
    else:
        files = sorted(root.glob("*.safetensors"))
    for f in files:
        with safe_open(str(f), framework="pt") as sf:
            if name in sf.keys():
                w = sf.get_tensor(name)
                return nn.Embedding.from_pretrained(w.to(device=device, dtype=dtype), freeze=True)
    raise FileNotFoundError(f"{name} not found in the safetensors files of {cfg.path}")


def answer_logits(
    llm, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """Next-token logits ``[N, V]`` at ``positions`` ``[N, 2]`` (batch index, time index) of a right-padded batch;
    only the needed positions go through the LM head (``logits_to_keep`` with indices)."""
    keep, inverse = torch.unique(positions[:, 1], return_inverse=True)
    out = llm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, logits_to_keep=keep, use_cache=False)
    return out.logits[positions[:, 0], inverse].float()
