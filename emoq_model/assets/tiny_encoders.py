"""Tiny random-init HuBERT / wav2vec 2.0 / WavLM checkpoints for tests (no such checkpoints exist offline).

Each is an ordinary local Hugging Face directory (``config.json`` + ``model.safetensors`` +
``preprocessor_config.json``) that loads with ``AutoModel.from_pretrained(path)`` and
``AutoFeatureExtractor.from_pretrained(path)``, so the encoder code path that takes a user's real checkpoint
is exercised as is. The convolutional feature encoder keeps the standard 7 layers (kernels 10,3,3,3,3,2,2;
strides 5,2,2,2,2,2,2: a 400-sample receptive field, hop 320), so 16 kHz audio gives 49 frames per second
(``floor((n - 400) / 320) + 1`` frames for ``n >= 400`` samples); only the widths are tiny.

The families differ the way the released checkpoints do:

============  ==========  ================  ====================  =============  ============
family        hidden      feat_extract_norm do_stable_layer_norm  attention mask do_normalize
============  ==========  ================  ====================  =============  ============
hubert        32          group             no                    no             no   (hubert-base-ls960)
wav2vec2      48          layer             yes                   yes            yes  (wav2vec2-large-lv60)
wavlm         64          group             no                    yes            no   (wavlm-base-plus)
============  ==========  ================  ====================  =============  ============

For ``group`` models the usual advice holds: padded batches are not equivalent to single inputs (group norm
over time sees the padding); ``layer`` models with the attention mask are.
"""

from __future__ import annotations

import json
from pathlib import Path

from emoq_model.assets.paths import asset_dir, build_atomically

FAMILIES: tuple[str, ...] = ("hubert", "wav2vec2", "wavlm")
SAMPLING_RATE = 16_000
CONV_KERNEL: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
CONV_STRIDE: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)

_BUILD_VERSION = 1

_FAMILY = {
    "hubert": dict(
        hidden_size=32,
        num_attention_heads=2,
        feat_extract_norm="group",
        do_stable_layer_norm=False,
        conv_bias=False,
        return_attention_mask=False,
        do_normalize=False,
    ),
    "wav2vec2": dict(
        hidden_size=48,
        num_attention_heads=4,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        conv_bias=True,
        return_attention_mask=True,
        do_normalize=True,
    ),
    "wavlm": dict(
        hidden_size=64,
        num_attention_heads=4,
        feat_extract_norm="group",
        do_stable_layer_norm=False,
        conv_bias=False,
        return_attention_mask=True,
        do_normalize=False,
    ),
}
NUM_LAYERS = 2
CONV_DIM = 32


def expected_num_frames(num_samples: int) -> int:
    """Frames the conv feature encoder yields for ``num_samples`` input samples (0 if too short)."""
    n = int(num_samples)
    for k, s in zip(CONV_KERNEL, CONV_STRIDE):
        n = (n - k) // s + 1
        if n <= 0:
            return 0
    return n


def family_settings(family: str) -> dict:
    """The per-family choices in the table above (a copy)."""
    try:
        return dict(_FAMILY[family])
    except KeyError:
        raise ValueError(f"unknown encoder family {family!r}; expected one of {FAMILIES}") from None


def _config(family: str):
    from transformers import HubertConfig, Wav2Vec2Config, WavLMConfig

    f = family_settings(family)
    common = dict(
        hidden_size=f["hidden_size"],
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=f["num_attention_heads"],
        intermediate_size=2 * f["hidden_size"],
        feat_extract_norm=f["feat_extract_norm"],
        do_stable_layer_norm=f["do_stable_layer_norm"],
        conv_dim=(CONV_DIM,) * len(CONV_KERNEL),
        conv_kernel=CONV_KERNEL,
        conv_stride=CONV_STRIDE,
        conv_bias=f["conv_bias"],
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        # a frozen encoder: no SpecAugment or layer drop even if someone leaves it in train mode
        apply_spec_augment=False,
        mask_time_prob=0.0,
        mask_feature_prob=0.0,
        layerdrop=0.0,
        vocab_size=32,
    )
    cls, arch = {
        "hubert": (HubertConfig, "HubertModel"),
        "wav2vec2": (Wav2Vec2Config, "Wav2Vec2Model"),
        "wavlm": (WavLMConfig, "WavLMModel"),
    }[family]
    if family == "wavlm":
        common.update(num_buckets=32, max_bucket_distance=100)
    config = cls(**common)
    config.architectures = [arch]
    return config


def _write(tmp: Path, family: str, seed: int) -> None:
    import torch
    from transformers import AutoModel, Wav2Vec2FeatureExtractor

    f = family_settings(family)
    config = _config(family)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModel.from_config(config).to(torch.float32).eval()
    fe = Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=SAMPLING_RATE,
        padding_value=0.0,
        do_normalize=f["do_normalize"],
        return_attention_mask=f["return_attention_mask"],
    )
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    fe.save_pretrained(tmp)


def build_tiny_encoder(family: str, out_dir: Path | None = None, seed: int = 0, force: bool = False) -> Path:
    """Build (or reuse) a tiny random ``family`` encoder directory and return its path.

    ``family`` is one of ``FAMILIES``. Default location ``asset_dir(f"tiny-{family}")`` (``-s{seed}`` appended
    for a non-zero seed). Written atomically; an existing directory with the same build spec is reused unless
    ``force``.
    """
    family_settings(family)  # validates
    if out_dir is None:
        out_dir = asset_dir(f"tiny-{family}" + (f"-s{seed}" if seed else ""))
    spec = {
        "asset": f"tiny-{family}",
        "version": _BUILD_VERSION,
        "seed": seed,
        **family_settings(family),
        "num_layers": NUM_LAYERS,
        "conv_dim": CONV_DIM,
    }
    spec = json.loads(json.dumps(spec))  # what read_spec returns
    return build_atomically(Path(out_dir), spec, lambda tmp: _write(tmp, family, seed), force)
