"""Checkpoint contents of a training run: the trainable weights (the Former + LoRA tensors), the best weights per
stage, optimizer/scheduler state and the run state (history, stages done), written as one directory and handed to
``ray.train.report`` by rank 0; and reading them back on resume."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from emoq_model.io import join, write_text
from pipeline.training.settings import BEST_FILE, CURRENT_FILE, METRICS_FILE, OPTIM_FILE, STATE_FILE, TrainSettings


def trainable_state(model) -> dict:
    """Everything a stage can change: the whole Former state + the LoRA tensors (CPU copies)."""
    state = {f"former.{k}": v.detach().to("cpu").clone().contiguous() for k, v in model.former.state_dict().items()}
    for n, p in model.llm.named_parameters():
        if "lora_" in n:
            state[f"llm.{n}"] = p.detach().to("cpu").clone().contiguous()
    return state


def load_trainable_state(model, state: dict, former_only: bool = False) -> None:
    import torch

    former = {k[len("former.") :]: v for k, v in state.items() if k.startswith("former.")}
    model.former.load_state_dict(former, strict=True)
    if former_only:
        return
    params = dict(model.llm.named_parameters())
    lora = {k[len("llm.") :]: v for k, v in state.items() if k.startswith("llm.")}
    missing = [n for n in params if "lora_" in n and n not in lora]
    if missing:
        raise KeyError(f"checkpoint lacks LoRA tensors, e.g. {missing[:3]}")
    with torch.no_grad():
        for n, v in lora.items():
            params[n].copy_(v.to(params[n].device, params[n].dtype))


def save_st(state: dict, path: str) -> None:
    from safetensors.torch import save_file

    save_file(state, path, metadata={"format": "pt"})


def load_st(path: str) -> dict:
    from safetensors.torch import load_file

    return load_file(path, device="cpu")


def write_metrics(s: TrainSettings, history: list[dict]) -> None:
    write_text(join(s.run_dir, METRICS_FILE), "".join(json.dumps(h) + "\n" for h in history))


def write_state_files(d: str, state: dict, model, best_weights: dict, optim: dict | None) -> None:
    import torch

    Path(d, STATE_FILE).write_text(json.dumps(state, default=str))
    save_st(trainable_state(model), os.path.join(d, CURRENT_FILE))
    for stage, w in best_weights.items():
        save_st(w, os.path.join(d, BEST_FILE.format(stage=stage)))
    if optim is not None:
        torch.save(optim, os.path.join(d, OPTIM_FILE))


def report_epoch(
    s: TrainSettings, rank: int, metrics: dict, state: dict, model, best_weights: dict, optim: dict
) -> None:
    import ray.train

    if rank != 0:
        ray.train.report(metrics)
        return
    tmp = tempfile.mkdtemp(prefix="emoq-ckpt-")
    try:
        write_state_files(tmp, state, model, best_weights, optim)
        write_metrics(s, state["history"])
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_identity(cfg_dict: dict, features_meta_sha256: str) -> dict:
    """What a checkpoint must have been trained on for a resume to continue it: the model config and the feature
    cache (its ``meta.json``)."""
    import hashlib

    blob = json.dumps(cfg_dict, sort_keys=True, default=str).encode()
    return {"config_sha256": hashlib.sha256(blob).hexdigest(), "features_meta_sha256": features_meta_sha256}


def latest_state(run_dir: str) -> dict | None:
    """The run state of the newest checkpoint under ``run_dir`` (Ray Train's ``checkpoint_<timestamp>``
    folders), or None for a run that has none yet."""
    from emoq_model.io import resolve

    fs, root = resolve(run_dir)
    import pyarrow.fs as pafs

    infos = [
        i
        for i in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
        if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_")
    ]
    for info in sorted(infos, key=lambda i: i.base_name, reverse=True):
        try:
            with fs.open_input_stream(f"{info.path}/{STATE_FILE}") as f:
                return json.loads(f.read().decode())
        except (FileNotFoundError, OSError, ValueError):
            continue  # a checkpoint being written or removed
    return None


def check_resume(run_dir: str, identity: dict, allow_changed: bool = False) -> None:
    """Refuse to continue a run from a checkpoint trained on another config or feature cache."""
    from emoq_model.errors import ConfigError

    state = latest_state(run_dir)
    if not state or "identity" not in state or allow_changed:
        return
    changed = [k for k, v in identity.items() if state["identity"].get(k) != v]
    if changed:
        what = {"config_sha256": "model/training config", "features_meta_sha256": "feature cache"}
        raise ConfigError(
            f"{run_dir} has checkpoints trained with a different {' and '.join(what[k] for k in changed)}; resuming "
            "would silently mix the two. Use another run name, or allow_changed_resume (--allow-changed-resume) to "
            "continue"
        )
