"""Trained-model bundle: one directory that training writes and labeling / evaluation load.

Layout::

    config.yaml            the full EmoQConfig (model paths absolute, or ${bundle}/... when copied)
    bundle.json            metadata: format, labels, label token ids, end-of-turn id, model paths, LoRA rank, ...
    former.safetensors     EmoQ-Former state (queries, Q-Former, layer weights, projector, aux head, ...)
    adapter/               peft LoRA adapter (adapter_config.json + adapter_model.safetensors); vLLM LoRARequest
    llm_merged/            optional: the LLM with the adapter merged in (serve without LoRA)
    encoder/, llm/, text_encoder/   optional copies of the base models (copy_base=True)

Only safetensors / JSON / YAML are written and read (no pickles). The directory is written to a temporary sibling
and renamed into place, so a reader never sees a half-written bundle.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import torch

from emoq_model.config import load_config
from emoq_model.errors import BundleError

BUNDLE_FORMAT = 1
CONFIG_FILE = "config.yaml"
META_FILE = "bundle.json"
FORMER_FILE = "former.safetensors"
ADAPTER_DIR = "adapter"
MERGED_DIR = "llm_merged"


def save_bundle(
    model, out_dir: str | os.PathLike, merge_llm: bool = False, copy_base: bool = False, overwrite: bool = True
) -> Path:
    """Write ``model`` (an :class:`~emoq_model.model.EmoQModel`) as a bundle directory and return its path."""
    from safetensors.torch import save_file

    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not overwrite:
        raise FileExistsError(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        cfg = copy.deepcopy(model.cfg)
        if copy_base:
            shutil.copytree(cfg.encoder.path, tmp / "encoder")
            shutil.copytree(cfg.llm.path, tmp / "llm")
            cfg.encoder.path, cfg.llm.path = "${bundle}/encoder", "${bundle}/llm"
            if cfg.former.text_encoder:
                shutil.copytree(cfg.former.text_encoder, tmp / "text_encoder")
                cfg.former.text_encoder = "${bundle}/text_encoder"
        (tmp / CONFIG_FILE).write_text(cfg.to_yaml(), encoding="utf-8")
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.former.state_dict().items()}
        save_file(state, str(tmp / FORMER_FILE), metadata={"format": "pt"})
        model.llm.save_pretrained(str(tmp / ADAPTER_DIR), safe_serialization=True)
        if merge_llm:
            _save_merged(model, tmp / ADAPTER_DIR, tmp / MERGED_DIR)
        meta = {
            "format": BUNDLE_FORMAT,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "labels": list(model.label_names),
            "label_token_ids": model.label_token_ids,
            "end_of_turn_id": int(model.prompt.end_id),
            "encoder_path": cfg.encoder.path,
            "llm_path": cfg.llm.path,
            "copied_base": copy_base,
            "adapter": ADAPTER_DIR,
            "lora_rank": int(model.cfg.lora.r),
            "merged_llm": MERGED_DIR if merge_llm else None,
            "num_queries": int(model.former.num_queries),
            "llm_hidden_size": int(model.embed.embedding_dim),
            "versions": _versions(),
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            trash = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out, trash)
            os.rename(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _save_merged(model, adapter_dir: Path, out: Path) -> None:
    """A fresh copy of the base LLM with the saved adapter merged in (the training model stays untouched)."""
    from peft import PeftModel

    from emoq_model.llm import load_causal_lm

    base = load_causal_lm(model.cfg.llm, device="cpu")
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(out), safe_serialization=True)
    model.tokenizer.save_pretrained(str(out))


def _versions() -> dict[str, str]:
    import peft
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}


def read_meta(bundle_dir: str | os.PathLike) -> dict:
    """``bundle.json`` with the model paths resolved (absolute)."""
    root = Path(bundle_dir).expanduser().resolve()
    if not (root / META_FILE).is_file():
        raise BundleError(f"{root}: not a bundle (no {META_FILE}); train one with jobs/train.py")
    meta = json.loads((root / META_FILE).read_text(encoding="utf-8"))
    if meta.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{root}: bundle format {meta.get('format')} != {BUNDLE_FORMAT}")
    for key in ("encoder_path", "llm_path"):
        meta[key] = str(Path(meta[key].replace("${bundle}", str(root))).resolve())
    meta["root"] = str(root)
    return meta


def bundle_config(
    bundle_dir: str | os.PathLike,
    device: str | None = None,
    dtype: str | None = None,
    overrides: list[str] | None = None,
):
    """The bundle's config with placeholders resolved and optional device / LLM dtype overrides."""
    root = Path(bundle_dir).expanduser().resolve()
    ov = list(overrides or [])
    if device is not None:
        ov += [f"llm.device={device}", f"encoder.device={device}"]
    if dtype is not None:
        ov += [f"llm.dtype={dtype}"]
    return load_config(root / CONFIG_FILE, ov, variables={"bundle": str(root)})


def load_bundle(
    bundle_dir: str | os.PathLike,
    device: str | None = None,
    dtype: str | None = None,
    with_encoder: bool = False,
    load_llm: bool = True,
    overrides: list[str] | None = None,
):
    """Load a bundle: an :class:`EmoQModel` (LLM + adapter; ``load_llm=True``) or, for serving next to vLLM, an
    :class:`EmoQFrontEnd` with only the LLM's embedding table. ``device`` / ``dtype`` override the config
    (``dtype`` applies to the LLM; the Former stays float32)."""
    from safetensors.torch import load_file

    from emoq_model.model import EmoQFrontEnd, EmoQModel

    meta = read_meta(bundle_dir)
    root = Path(meta["root"])
    cfg = bundle_config(root, device, dtype, overrides)
    if load_llm:
        model = EmoQModel(cfg, with_encoder=with_encoder, adapter_dir=root / meta["adapter"])
    else:
        model = EmoQFrontEnd.from_config(cfg, with_encoder=with_encoder)
    state = load_file(str(root / FORMER_FILE), device=str(model.device))
    model.former.load_state_dict(state, strict=True)
    if model.label_token_ids != meta["label_token_ids"] or model.prompt.end_id != meta["end_of_turn_id"]:
        raise BundleError(f"{root}: tokenizer of {cfg.llm.path} gives other label / end-of-turn ids than the bundle")
    model.eval()
    return model
