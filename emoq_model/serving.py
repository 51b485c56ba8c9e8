"""vLLM serving of a bundle: engine arguments, LoRA request, requests from prompt embeddings, label scores.

The prompt embeddings come from the same :func:`emoq_model.prompt.build_prompt_embeds` as in training (via
``load_bundle(dir, load_llm=False).prompt_embeds(batch)``). One decode step per request, restricted to the label
tokens:

* ``mode="tokens"`` (default, exact): ``allowed_token_ids`` = label tokens, ``logprob_token_ids`` = label tokens;
  the returned (raw) log-probabilities of the label tokens, renormalised, are the softmax over the label logits,
  i.e. exactly HF ``predict_proba``; their un-normalised sum (``label_mass``) says how much the LLM put on labels.
* ``mode="choice"``: ``StructuredOutputsParams(choice=labels)`` with ``logprobs=max(len(labels), 20)`` (after the
  grammar mask, which also admits tokens that merely start a label); a label missing from the returned top-k gets
  probability 0, and the generated token may be such a label prefix.

vLLM spawns engine processes: callers need an ``if __name__ == "__main__":`` guard, and on CPU
``VLLM_CPU_KVCACHE_SPACE`` (GiB). ``python -m emoq_model.serving BUNDLE FEATURES OUT`` runs a bundle on saved
features (used by the parity test).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from emoq_model.bundle import read_meta

# KV-cache block size for engines on CPU. vLLM's CPU backend defaults to 128-token blocks, longer than the prompt's
# fixed instruction prefix (47 tokens with the demo template), and prefix caching reuses whole blocks only, so no
# request ever hit the cache. 32 (the CPU backend's preferred multiple; 16 fails to start there) lets every request
# reuse the prefix's first block(s): bitwise the same labels, LLM stage 1.8x in float32 (BENCHMARKS.md §7). GPUs
# keep vLLM's 16.
CPU_BLOCK_SIZE = 32


def engine_kwargs(
    bundle_dir: str | os.PathLike, use_merged: bool | None = None, dtype: str = "auto", **overrides
) -> dict:
    """Arguments for ``vllm.LLM``: the merged LLM if the bundle has one (unless ``use_merged=False``), else the
    base LLM with LoRA enabled. ``dtype="auto"`` takes the bundle's LLM dtype config, and where that says auto too,
    :func:`serving_dtype`. On CPU the KV blocks are :data:`CPU_BLOCK_SIZE` tokens, so the shared instruction
    prefix is cached (``overrides`` may set ``block_size`` / ``enable_prefix_caching`` otherwise)."""
    meta = read_meta(bundle_dir)
    merged = meta["merged_llm"] is not None if use_merged is None else use_merged
    if merged and meta["merged_llm"] is None:
        raise ValueError(f"{bundle_dir}: bundle has no merged LLM")
    if dtype == "auto":
        from emoq_model.bundle import bundle_config

        cfg_dtype = bundle_config(bundle_dir).llm.dtype
        dtype = cfg_dtype if cfg_dtype != "auto" else serving_dtype()
    kw = dict(
        model=str(Path(meta["root"]) / meta["merged_llm"]) if merged else meta["llm_path"],
        enable_prompt_embeds=True,
        dtype=dtype,
        enable_lora=not merged,
        seed=0,
    )
    if not merged:
        kw.update(max_lora_rank=_rank_slot(int(meta["lora_rank"])), max_loras=1)
    if not torch.cuda.is_available():
        kw["block_size"] = CPU_BLOCK_SIZE
    kw.update(overrides)
    return kw


def serving_dtype() -> str:
    """The engine's precision when nothing asks for one: bfloat16 where the device computes it natively (a GPU, or
    a CPU with ``avx512_bf16`` / ``amx_bf16``), float32 elsewhere (emulated bfloat16 is slower). On CPU it kept
    every label of the demo archive and the benchmark clips (probabilities within 0.004) with the LLM stage 1.6x
    faster than float32 (BENCHMARKS.md §7): what the precision rule asks of a default."""
    from emoq_model.config import native_bf16

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return "bfloat16" if native_bf16(device) else "float32"


def _rank_slot(r: int) -> int:
    """Smallest ``max_lora_rank`` vLLM accepts that holds rank ``r``."""
    for slot in (8, 16, 32, 64, 128, 256, 320, 512):
        if r <= slot:
            return slot
    raise ValueError(f"LoRA rank {r} > 512 is not supported by vLLM")


def lora_request(bundle_dir: str | os.PathLike, lora_int_id: int = 1):
    """``LoRARequest`` for the bundle's adapter."""
    from vllm.lora.request import LoRARequest

    meta = read_meta(bundle_dir)
    return LoRARequest(f"emoq-{Path(meta['root']).name}", lora_int_id, str(Path(meta["root"]) / meta["adapter"]))


def sampling_params(label_token_ids: Sequence[int], labels: Sequence[str] | None = None, mode: str = "tokens"):
    """One greedy step restricted to the labels, with the logprobs :func:`label_scores` needs."""
    from vllm import SamplingParams

    ids = [int(i) for i in label_token_ids]
    if mode == "tokens":
        return SamplingParams(max_tokens=1, temperature=0.0, allowed_token_ids=ids, logprob_token_ids=ids)
    if mode == "choice":
        from vllm.sampling_params import StructuredOutputsParams

        if labels is None:
            raise ValueError("mode='choice' needs the label names")
        # the grammar also allows tokens that only start a label ("ne" of "neutral"): ask for more than
        # len(labels) so that every label token is among the returned top-k (vLLM's default cap is 20)
        return SamplingParams(
            max_tokens=1,
            temperature=0.0,
            logprobs=max(len(ids), 20),
            structured_outputs=StructuredOutputsParams(choice=list(labels)),
        )
    raise ValueError(f"mode must be 'tokens' or 'choice', got {mode!r}")


def vllm_inputs(prompt_embeds: Sequence[torch.Tensor]) -> list[dict]:
    """vLLM prompts from per-request ``[T, H]`` embeddings."""
    out = []
    for e in prompt_embeds:
        if e.dim() != 2:
            raise ValueError(f"prompt embeddings must be [T, H], got {tuple(e.shape)}")
        out.append({"prompt_embeds": e.detach().to("cpu").contiguous()})
    return out


@dataclass
class LabelScores:
    probs: np.ndarray  # [B, C] per-label probabilities (renormalised over the labels)
    index: np.ndarray  # [B] argmax label index
    confidence: np.ndarray  # [B] probability of the chosen label
    label_mass: np.ndarray  # [B] un-normalised probability on the label tokens (NaN in choice mode)
    generated: list[int]  # the token vLLM produced per request

    def labels(self, names: Sequence[str]) -> list[str]:
        return [names[i] for i in self.index]


def label_scores(outputs, label_token_ids: Sequence[int], mode: str = "tokens") -> LabelScores:
    """Per-label probabilities and confidence from vLLM ``RequestOutput`` s (first generated step)."""
    ids = [int(i) for i in label_token_ids]
    logp = np.full((len(outputs), len(ids)), -np.inf)
    generated = []
    for r, o in enumerate(outputs):
        comp = o.outputs[0]
        generated.append(int(comp.token_ids[0]) if comp.token_ids else -1)
        step = comp.logprobs[0] if comp.logprobs else {}
        for c, tid in enumerate(ids):
            if tid in step:
                logp[r, c] = float(step[tid].logprob)
    finite = np.isfinite(logp).any(1)
    if not finite.all():
        raise RuntimeError(f"no label logprobs returned for requests {np.nonzero(~finite)[0].tolist()}")
    m = logp.max(1, keepdims=True)
    p = np.exp(logp - m)
    mass = (p.sum(1) * np.exp(m[:, 0])) if mode == "tokens" else np.full(len(outputs), np.nan)
    probs = p / p.sum(1, keepdims=True)
    index = probs.argmax(1)
    return LabelScores(probs, index, probs[np.arange(len(index)), index], mass, generated)


def classify(
    llm,
    prompt_embeds: Sequence[torch.Tensor],
    label_token_ids: Sequence[int],
    labels: Sequence[str] | None = None,
    lora=None,
    mode: str = "tokens",
) -> LabelScores:
    """Run one batch of prompt embeddings through a ``vllm.LLM`` and score the labels."""
    params = sampling_params(label_token_ids, labels, mode)
    outputs = llm.generate(vllm_inputs(prompt_embeds), params, lora_request=lora, use_tqdm=False)
    return label_scores(outputs, label_token_ids, mode)


# ---------------------------------------------------------------------------------------------- CLI


def save_features(path: str | os.PathLike, batch) -> None:
    """An :class:`EmoQBatch` as safetensors (+ transcripts as JSON metadata) for :func:`main`."""
    from safetensors.torch import save_file

    tensors = {"frames": batch.frames.cpu().contiguous(), "mask": batch.mask.cpu().contiguous()}
    save_file(tensors, str(path), metadata={"transcripts": json.dumps(batch.transcripts)})


def load_features(path: str | os.PathLike):
    from safetensors import safe_open

    from emoq_model.model import EmoQBatch

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        frames, mask = f.get_tensor("frames"), f.get_tensor("mask")
    return EmoQBatch(frames, mask, None, json.loads(meta.get("transcripts", "null")))


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m emoq_model.serving BUNDLE FEATURES.safetensors OUT.json [--modes tokens,choice] [--merged]``"""
    import argparse
    import time

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("bundle")
    ap.add_argument("features")
    ap.add_argument("out")
    ap.add_argument("--modes", default="tokens,choice")
    ap.add_argument("--merged", action="store_true", help="serve the merged LLM (no LoRA)")
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM

    from emoq_model.bundle import load_bundle

    t0 = time.perf_counter()
    front = load_bundle(args.bundle, load_llm=False)
    with torch.no_grad():
        embeds = front.prompt_embeds(load_features(args.features)).embeds
    kw = engine_kwargs(args.bundle, use_merged=args.merged, dtype=args.dtype, enforce_eager=True, max_model_len=512)
    llm = LLM(**kw)
    t1 = time.perf_counter()
    lora = None if args.merged else lora_request(args.bundle)
    result = {"engine_s": t1 - t0, "modes": {}}
    for mode in args.modes.split(","):
        s = classify(llm, embeds, front.label_token_ids, front.label_names, lora, mode)
        result["modes"][mode] = {
            "probs": s.probs.tolist(),
            "index": s.index.tolist(),
            "confidence": s.confidence.tolist(),
            "label_mass": s.label_mass.tolist(),
            "generated": s.generated,
        }
    result["generate_s"] = time.perf_counter() - t1
    Path(args.out).write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
