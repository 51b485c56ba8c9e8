"""Frozen pretrained text encoder for the Former's text side, and BLIP-2-style Former initialisation from it.

Why: transcript tokens embedded with the LLM's input table carry no lexical meaning when that table is small or
random (the demo LLM), and even a real LLM's input embeddings are context-free. A sentence encoder (any local
BERT-family checkpoint, e.g. all-MiniLM-L6-v2) gives contextual token states whose geometry already groups
"this is the third time I'm calling" with "I'm fed up with this".

* :class:`TextEncoder` -- tokenizer + frozen ``AutoModel``; ``encode(texts)`` -> last hidden states ``[B, S, D]``
  and mask. Loaded with safetensors, ``trust_remote_code`` from config; nothing here depends on which checkpoint.
* :func:`qformer_init_map` / :func:`init_qformer_from_text_encoder` -- BLIP-2 initialises its Q-Former from BERT:
  each Q-Former layer's self-attention and feed-forward (the text branch *and* the query branch) come from the
  corresponding BERT layer; cross-attention layers stay new. Needs equal width, heads and intermediate size.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

from emoq_model.config import resolve_device

# BERT layer parameter -> Q-Former layer parameter(s) (the query branch's feed-forward copies the text branch's)
_LAYER_MAP = {
    "attention.self.query": ("attention.attention.query",),
    "attention.self.key": ("attention.attention.key",),
    "attention.self.value": ("attention.attention.value",),
    "attention.output.dense": ("attention.output.dense",),
    "attention.output.LayerNorm": ("attention.output.LayerNorm",),
    "intermediate.dense": ("intermediate.dense", "intermediate_query.dense"),
    "output.dense": ("output.dense", "output_query.dense"),
    "output.LayerNorm": ("output.LayerNorm", "output_query.LayerNorm"),
}
_TEXT_FFN = ("intermediate.", "output.dense", "output.LayerNorm")  # the text positions' feed-forward (optional)


class TextEncoder(nn.Module):
    """Frozen BERT-family encoder in inference mode: transcripts -> contextual token states."""

    def __init__(
        self,
        path: str,
        device: str = "auto",
        max_tokens: int = 64,
        trust_remote_code: bool = False,
        cache_size: int = 8192,
    ):
        """``cache_size``: transcripts whose states are kept (training sees each one every epoch; the encoder is
        frozen, so its states never change); 0 disables the cache."""
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        self.path = path
        self.config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModel.from_pretrained(path, use_safetensors=True, trust_remote_code=trust_remote_code)
        self.model = model.to(resolve_device(device)).eval().requires_grad_(False)
        self.max_tokens = int(max_tokens)
        self.hidden_size = int(self.config.hidden_size)
        self.cache_size = int(cache_size)
        self._cache: dict[str, torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, texts: Sequence[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, S, D]`` float32 last hidden states and ``[B, S]`` bool mask; a missing/empty transcript is an
        all-False row (S >= 1), so it contributes no text positions."""
        present = [bool(t and t.strip()) for t in texts]
        if not any(present):
            return (
                torch.zeros(len(texts), 1, self.hidden_size, device=self.device),
                torch.zeros(len(texts), 1, dtype=torch.bool, device=self.device),
            )
        todo = sorted({t for t, p in zip(texts, present) if p and t not in self._cache})
        fresh = self._forward(todo) if todo else {}
        if self.cache_size:
            if len(self._cache) + len(fresh) > self.cache_size:
                self._cache.clear()
            self._cache.update(fresh)
        states = [(self._cache.get(t) if t in self._cache else fresh[t]) if p else None for t, p in zip(texts, present)]
        s = max(x.shape[0] for x in states if x is not None)
        out = torch.zeros(len(texts), s, self.hidden_size, device=self.device)
        mask = torch.zeros(len(texts), s, dtype=torch.bool, device=self.device)
        for i, x in enumerate(states):
            if x is not None:
                out[i, : x.shape[0]] = x
                mask[i, : x.shape[0]] = True
        return out, mask

    def _forward(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Each text's valid token states ``[S_i, D]`` (one padded forward pass)."""
        tok = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt").to(
            self.device
        )
        out = self.model(**tok).last_hidden_state.float()
        lengths = tok["attention_mask"].sum(-1).tolist()
        return {t: out[i, : int(n)].clone() for i, (t, n) in enumerate(zip(texts, lengths))}


def qformer_init_map(text_state: dict[str, torch.Tensor], qformer: nn.Module) -> dict[str, str]:
    """``{qformer parameter name: text-encoder tensor name}`` for every tensor BLIP-2-style initialisation copies:
    Q-Former layer ``i``'s self-attention and feed-forwards from text layer ``i`` (``i < num_layers``), the input
    LayerNorm from the embeddings' LayerNorm. Raises ``ValueError`` on missing names or shape mismatches."""
    prefix = "bert." if any(k.startswith("bert.") for k in text_state) else ""
    q_state = qformer.state_dict()
    n_layers = len(qformer.encoder.layer)
    layer_re = re.compile(rf"{re.escape(prefix)}encoder\.layer\.(\d+)\.")
    n_text = 1 + max((int(m.group(1)) for k in text_state if (m := layer_re.match(k))), default=-1)
    if n_layers > n_text:
        raise ValueError(f"the Former has {n_layers} layers, the text encoder only {n_text}")
    out = {
        "layernorm.weight": f"{prefix}embeddings.LayerNorm.weight",
        "layernorm.bias": f"{prefix}embeddings.LayerNorm.bias",
    }
    for i in range(n_layers):
        for src, dsts in _LAYER_MAP.items():
            for dst in dsts:
                for kind in ("weight", "bias"):
                    name = f"encoder.layer.{i}.{dst}.{kind}"
                    if dst.startswith(_TEXT_FFN) and name not in q_state:
                        continue  # a Former without text input has no text-position feed-forward
                    out[name] = f"{prefix}encoder.layer.{i}.{src}.{kind}"
    for dst, src in out.items():
        if src not in text_state:
            raise ValueError(f"text encoder has no tensor {src!r} (needed for {dst!r})")
        if dst not in q_state:
            raise ValueError(f"the Former has no parameter {dst!r}")
        if tuple(text_state[src].shape) != tuple(q_state[dst].shape):
            raise ValueError(
                f"shape mismatch: Former {dst} {tuple(q_state[dst].shape)} vs text encoder {src} "
                f"{tuple(text_state[src].shape)} (set former.hidden / num_heads / intermediate to "
                "the text encoder's sizes)"
            )
    return out


def read_text_encoder_state(path: str) -> dict[str, torch.Tensor]:
    """All tensors of a local checkpoint directory's ``model.safetensors`` (no model instantiation)."""
    from pathlib import Path

    from safetensors.torch import load_file

    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors file (the text encoder is loaded with safetensors only)")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


@torch.no_grad()
def init_qformer_from_text_encoder(qformer: nn.Module, path: str) -> list[str]:
    """Copy the mapped tensors into ``qformer`` (in place); returns the initialised parameter names."""
    state = read_text_encoder_state(path)
    mapping = qformer_init_map(state, qformer)
    params = dict(qformer.named_parameters())
    for dst, src in mapping.items():
        params[dst].copy_(state[src].to(params[dst].dtype))
    return sorted(mapping)
