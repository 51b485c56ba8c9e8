"""Two-stage EmoQ training on Ray Train (``TorchTrainer``, DDP) from a feature cache.

Driver side: :func:`run_training` builds the ``TorchTrainer`` (``ScalingConfig`` from :class:`TrainSettings`;
``RunConfig(name, storage_path)`` with ``FailureConfig(max_failures)`` and ``CheckpointConfig``), runs it and
copies the exported bundle out of the final checkpoint.

Worker side: :func:`train_loop_per_worker`

* data: every worker reads **its shard** of the cached features straight from the Parquet cache (per-rank split
  of a seeded permutation of the training rows, padded by wrap-around so that all ranks run the same number of
  steps, like ``DistributedSampler``); the validation rows are split rank-strided and the predictions gathered.
  Frames are normalised once at load time (:class:`emoq_model.features.FeatureNorm`): per-speaker statistics over
  the population labeling normalises over (``norm_groups="channels"``: call channels, or label-skewed simulated
  channels of an isolated-utterance corpus), in training and validation alike, so the validation score that picks
  the best epoch is the deployment-faithful one; global statistics of the training speakers are the fallback
  saved with the bundle.
* model: :class:`emoq_model.model.EmoQModel`; focal alpha from the training split's class counts; each stage
  freezes what it does not train (``set_stage``), then wraps the model in DDP (frozen parameters and buffers are
  not synchronised) and builds AdamW (``emoq_model.stages.make_optimizer``) with linear warm-up + cosine decay.
  ``train.stage*.batch_size`` is the **global** batch (split over the workers).
* every epoch: validation WA / UA / weighted F1 / NLL (stage 1: the Former's aux head; stage 2: the LLM's label
  distribution, ``predict_proba``), a line in ``<storage>/<name>/metrics.jsonl`` and a checkpoint (current
  weights, optimizer + scheduler, history, the best weights so far per stage). Best = highest validation UA
  (ties: lower loss). Stage 2 starts from the best stage-1 Former.
* seeds: model init from ``cfg.seed``; shuffling and dropout re-seeded from (seed, stage, epoch, rank) at every
  epoch start, so a run resumed from a checkpoint continues exactly as the uninterrupted run would.
* recovery: a worker failure restarts the worker group from the latest checkpoint (``max_failures``); rerunning
  with the same ``name`` + ``storage_path`` resumes an interrupted run (Ray Train V2: ``ray.train.get_checkpoint()``).
* end: rank 0 loads the best weights of the last stage, writes a bundle (``emoq_model.bundle.save_bundle`` +
  ``feature_norm.json``) and reports it as the final checkpoint.

Failure injection for tests: ``TrainSettings.fail_once = {"stage", "epoch", "rank", "marker", "how"}`` (or the env
var ``EMOQ_FAIL_ONCE=stage:epoch:rank:marker[:exit|raise]`` read by the driver) makes that rank die (``os._exit``)
or raise after the first step of that epoch, once (the marker file records that it happened).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

STATE_FILE = "train_state.json"
CURRENT_FILE = "current.safetensors"
OPTIM_FILE = "optimizer.pt"
BEST_FILE = "best_stage{stage}.safetensors"
BUNDLE_DIR = "bundle"
METRICS_FILE = "metrics.jsonl"


@dataclass
class TrainSettings:
    """Everything about a training run that is not the model (the model is an :class:`EmoQConfig`)."""

    features: str  # feature cache directory (jobs/extract_features.py)
    storage_path: str  # Ray Train storage (shared storage / URI on multi-node clusters)
    name: str  # run name: reuse it (same storage_path) to resume an interrupted run
    stages: tuple[int, ...] = (1, 2)
    bundle_out: str | None = None  # copy the exported bundle here (default <storage>/<name>/bundle)
    merge_llm: bool = True  # also export the LoRA-merged LLM (vLLM serves it ~6x faster than base + LoRA on CPU)
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 0.5  # fractional: 2 x 1-CPU workers hang silently on 2-core machines (measured)
    gpus_per_worker: float = 1.0  # with use_gpu
    resources_per_worker: dict[str, float] | None = None  # overrides the two above when given
    threads_per_worker: int | None = None  # torch threads (default: node CPUs / local workers)
    max_failures: int = 2
    num_to_keep: int = 2  # checkpoints kept (the latest is always kept)
    feature_norm: str = "speaker"  # none | speaker | utterance
    norm_groups: str = "channels"  # population of per-speaker statistics (emoq_model.features.NORM_GROUPS)
    norm_min_frames: int = 500
    train_split: str = "train"
    val_split: str = "val"
    eval_batch_size: int = 64
    warmup_frac: float = 0.05
    grad_clip: float = 1.0
    init_bundle: str | None = None  # start from this bundle's Former (e.g. stage 2 alone after a stage-1 run)
    limit_train: int | None = None  # use only N training rows (smoke tests)
    fail_once: dict[str, Any] | None = None  # failure injection (tests)
    verbose: bool = True

    def __post_init__(self):
        self.stages = tuple(int(s) for s in self.stages)
        if not self.stages or any(s not in (1, 2) for s in self.stages) or list(self.stages) != sorted(set(self.stages)):
            raise ValueError(f"stages must be (1,), (2,) or (1, 2), got {self.stages}")
        if self.num_workers < 1:
            raise ValueError("num_workers must be >= 1")
        if self.feature_norm not in ("none", "speaker", "utterance"):
            raise ValueError(f"feature_norm must be none, speaker or utterance, got {self.feature_norm!r}")
        from emoq_model.features import NORM_GROUPS

        if self.norm_groups not in NORM_GROUPS:
            raise ValueError(f"norm_groups must be one of {NORM_GROUPS}, got {self.norm_groups!r}")

    def scaling_config(self):
        from ray.train import ScalingConfig

        res = dict(self.resources_per_worker) if self.resources_per_worker else None
        if res is None:
            res = {"CPU": self.cpus_per_worker}
            if self.use_gpu:
                res["GPU"] = self.gpus_per_worker
        return ScalingConfig(num_workers=self.num_workers, use_gpu=self.use_gpu, resources_per_worker=res)

    @property
    def run_dir(self) -> str:
        from emoq_model.features import join

        return join(self.storage_path, self.name)


def fail_once_from_env(value: str | None = None) -> dict | None:
    """``EMOQ_FAIL_ONCE=stage:epoch:rank:marker[:exit|raise]`` -> the ``fail_once`` dict."""
    value = value if value is not None else os.environ.get("EMOQ_FAIL_ONCE")
    if not value:
        return None
    parts = value.split(":")
    if len(parts) < 4:
        raise ValueError("EMOQ_FAIL_ONCE must be stage:epoch:rank:marker[:exit|raise]")
    return {"stage": int(parts[0]), "epoch": int(parts[1]), "rank": int(parts[2]), "marker": parts[3],
            "how": parts[4] if len(parts) > 4 else "exit"}


# ============================================================================================== worker side


def _seed_all(*key: int) -> None:
    import random

    import torch

    seed = int(np.random.SeedSequence(list(key)).generate_state(1)[0])
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def _trainable_state(model) -> dict:
    """Everything a stage can change: the whole Former state + the LoRA tensors (CPU copies)."""
    state = {f"former.{k}": v.detach().to("cpu").clone().contiguous() for k, v in model.former.state_dict().items()}
    for n, p in model.llm.named_parameters():
        if "lora_" in n:
            state[f"llm.{n}"] = p.detach().to("cpu").clone().contiguous()
    return state


def _load_trainable_state(model, state: dict, former_only: bool = False) -> None:
    import torch

    former = {k[len("former."):]: v for k, v in state.items() if k.startswith("former.")}
    model.former.load_state_dict(former, strict=True)
    if former_only:
        return
    params = dict(model.llm.named_parameters())
    lora = {k[len("llm."):]: v for k, v in state.items() if k.startswith("llm.")}
    missing = [n for n in params if "lora_" in n and n not in lora]
    if missing:
        raise KeyError(f"checkpoint lacks LoRA tensors, e.g. {missing[:3]}")
    with torch.no_grad():
        for n, v in lora.items():
            params[n].copy_(v.to(params[n].device, params[n].dtype))


def _save_st(state: dict, path: str) -> None:
    from safetensors.torch import save_file

    save_file(state, path, metadata={"format": "pt"})


def _load_st(path: str) -> dict:
    from safetensors.torch import load_file

    return load_file(path, device="cpu")


class _Data:
    """The worker's share of the feature cache, normalised, as lists of items for ``collate_features``."""

    def __init__(self, s: TrainSettings, cfg, rank: int, world: int):
        from emoq_model import features as F

        cache = F.FeatureCache(s.features)
        self.stacked = cache.stacked
        import hashlib

        self.meta_sha256 = hashlib.sha256(F.read_text(F.join(s.features, F.META_FILE)).encode()).hexdigest()
        names = list(cfg.labels.names)
        index = cache.index(["utt_id", "label", "speaker", "split", "error"])
        ok = index["error"].isna()
        unknown = index[ok & ~index["label"].isin(names) & index["split"].isin([s.train_split, s.val_split])]
        if len(unknown):
            raise ValueError(f"{len(unknown)} rows have labels outside {names}, e.g. "
                             f"{unknown['label'].unique()[:5].tolist()}")
        train = index[ok & (index["split"] == s.train_split)].reset_index(drop=True)
        val = index[ok & (index["split"] == s.val_split)].reset_index(drop=True)
        if s.limit_train:
            train = train.iloc[np.random.default_rng([cfg.seed, 7]).permutation(len(train))[: s.limit_train]]
            train = train.reset_index(drop=True)
        if len(train) == 0:
            raise ValueError(f"{s.features}: no usable rows in split {s.train_split!r}")
        self.n_errors = int((~ok).sum())
        self.counts = [int((train["label"] == n).sum()) for n in names]
        self.n_train, self.n_val = len(train), len(val)
        # per-rank shard of a seeded permutation, padded by wrap-around to equal length
        perm = np.random.default_rng([cfg.seed, 11]).permutation(len(train))
        per_rank = math.ceil(len(train) / world)
        padded = np.concatenate([perm, perm[: per_rank * world - len(perm)]]) if per_rank * world > len(perm) else perm
        mine = padded[rank::world]
        train_ids = train["utt_id"].to_numpy()[mine].tolist()
        val_ids = val["utt_id"].to_numpy()[rank::world].tolist() if len(val) else []
        rows = {it["utt_id"]: it for it in cache.load(utt_ids=set(train_ids) | set(val_ids))}
        # normalisation: per-speaker statistics over the protocol's groups (s.norm_groups: call channels, real or
        # simulated, in train and val alike -- the population labeling normalises over), computed over whole
        # groups whatever this rank's share; global stats of the training speakers as the small-group fallback
        self.norm = F.FeatureNorm(s.feature_norm, group_key="norm_group", min_frames=s.norm_min_frames)
        stats = {}
        if self.norm.enabled:
            speaker_stats = cache.speaker_stats()
            if s.feature_norm == "speaker":
                groups = F.norm_groups(cache, pd.concat([train, val]), s.norm_groups, cfg.seed)
                for u, it in rows.items():
                    it["norm_group"] = groups[u]
                stats = F.group_stats(cache, groups)
            spk_train = set(train["speaker"].astype(str))
            pool = [v for k, v in speaker_stats.items() if k in spk_train]
            self.norm.global_stats = F.pooled_stats(pool) if pool else None
        items = {k: self._prepare(it, names) for k, it in zip(rows, self.norm.apply(list(rows.values()), stats))}
        self.train = [items[u] for u in train_ids]  # duplicates (padding) share the arrays
        self.val = [items[u] for u in val_ids]

    def _prepare(self, it: dict, names: list[str]) -> dict:
        from emoq_model.features import model_frames

        frames = model_frames(np.asarray(it["frames"], dtype=np.float16), self.stacked)
        return {"utt_id": it["utt_id"], "frames": frames, "label": names.index(it["label"]),
                "transcript": it.get("transcript"), "speaker": it.get("speaker")}


def _collate(items: list[dict]):
    import torch

    from emoq_model.model import collate_features

    batch = collate_features([{**it, "frames": torch.from_numpy(np.asarray(it["frames"], dtype=np.float32))}
                              for it in items])
    return batch


def _drop_transcripts(items: list[dict], p: float, rng: np.random.Generator) -> list[dict]:
    """Modality dropout: each item's transcript is removed with probability ``p`` (copies; the data stay)."""
    if p <= 0:
        return items
    keep = rng.random(len(items)) >= p
    return [it if k else {**it, "transcript": None} for it, k in zip(items, keep)]


def _batches(items: list, bs: int, rng: np.random.Generator | None = None):
    order = rng.permutation(len(items)) if rng is not None else np.arange(len(items))
    for i in range(0, len(items), bs):
        yield [items[j] for j in order[i: i + bs]]


def _evaluate(model, items: list[dict], stage: int, bs: int,
              probs_out: list | None = None) -> tuple[list[int], list[int], float]:
    """(true, predicted, summed NLL) over ``items`` on this rank (stage 1: aux head; stage 2: the LLM); the
    probability rows are appended to ``probs_out`` when given."""
    import torch

    true, pred, nll = [], [], 0.0
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for chunk in _batches(items, bs):
                batch = _collate(chunk)
                if stage == 1:
                    fo = model.run_former(batch.to(model.device))
                    probs = torch.softmax(fo.logits.float(), -1).cpu()
                else:
                    probs = model.predict_proba(batch).float()
                y = batch.labels
                true += y.tolist()
                pred += probs.argmax(-1).tolist()
                nll += float(-torch.log(probs[torch.arange(len(y)), y].clamp_min(1e-12)).sum())
                if probs_out is not None:
                    probs_out += probs.tolist()
    finally:
        model.train(was)
    return true, pred, nll


def _gather(obj):
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _all_mean(values: dict[str, float], count: int) -> dict[str, float]:
    """Count-weighted mean of per-rank metric sums over all ranks."""
    parts = _gather((values, count))
    total = sum(c for _, c in parts) or 1
    keys = set().union(*(v.keys() for v, _ in parts))
    return {k: sum(v.get(k, 0.0) for v, _ in parts) / total for k in keys}


def _maybe_fail(s: TrainSettings, stage: int, epoch: int, rank: int) -> None:
    f = s.fail_once
    if not f or (int(f["stage"]), int(f["epoch"]), int(f["rank"])) != (stage, epoch, rank):
        return
    marker = Path(f["marker"])
    if marker.exists():
        return
    # die only once the controller has committed the previous checkpoint (reports are collected asynchronously:
    # a worker dying right after ray.train.report can lose that report, and recovery then starts earlier)
    try:
        import ray.train

        ray.train.get_all_reported_checkpoints(timeout_s=120)
    except Exception:  # noqa: BLE001 - best effort, the failure is injected anyway
        pass
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"stage {stage} epoch {epoch} rank {rank} pid {os.getpid()} at {time.time()}\n")
    if f.get("how", "exit") == "raise":
        raise RuntimeError(f"injected failure (stage {stage}, epoch {epoch}, rank {rank})")
    os._exit(1)  # the worker process dies as in a crash / OOM kill


def _lr_lambda(total: int, warmup: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        p = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, p)))

    return f


def _log(s: TrainSettings, rank: int, msg: str) -> None:
    if s.verbose and rank == 0:
        print(f"[emoq-train] {msg}", flush=True)


def _write_metrics(s: TrainSettings, history: list[dict]) -> None:
    from emoq_model.features import join, write_text

    write_text(join(s.run_dir, METRICS_FILE), "".join(json.dumps(h) + "\n" for h in history))


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker function (``config = {"cfg": EmoQConfig dict, "settings": TrainSettings dict}``)."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from emoq_model import stages as st
    from emoq_model.config import config_from_dict, validate
    from emoq_model.metrics import classification_report
    from emoq_model.model import EmoQModel

    s = TrainSettings(**config["settings"])
    cfg = validate(config_from_dict(config["cfg"]), check_assets=False)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    local_world = max(1, ctx.get_local_world_size())
    torch.set_num_threads(s.threads_per_worker or max(1, (os.cpu_count() or 1) // local_world))
    if s.use_gpu and torch.cuda.is_available():
        device = ray.train.torch.get_device()
        cfg.llm.device = str(device)
    else:
        device = torch.device("cpu")
        cfg.llm.device = "cpu"
    cfg.encoder.device = cfg.llm.device
    names = list(cfg.labels.names)

    t_load = time.perf_counter()
    data = _Data(s, cfg, rank, world)
    _log(s, rank, f"data: {data.n_train} train / {data.n_val} val rows ({data.n_errors} error rows skipped), "
                  f"{len(data.train)} per rank, class counts {dict(zip(names, data.counts))}, "
                  f"norm={s.feature_norm}, loaded in {time.perf_counter() - t_load:.1f} s")

    model = EmoQModel(cfg)
    model.set_class_counts(data.counts)
    if s.init_bundle:
        from emoq_model.bundle import FORMER_FILE

        model.former.load_state_dict(_load_st(os.path.join(s.init_bundle, FORMER_FILE)), strict=True)

    state = {"history": [], "done": [], "stage": None, "epoch": -1, "best": {}}
    best_weights: dict[int, dict] = {}
    optim_state = None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = json.loads(Path(d, STATE_FILE).read_text())
            if state.get("final"):
                state["final"] = False
            _load_trainable_state(model, _load_st(os.path.join(d, CURRENT_FILE)))
            for stage in (1, 2):
                p = os.path.join(d, BEST_FILE.format(stage=stage))
                if os.path.exists(p):
                    best_weights[stage] = _load_st(p)
            if os.path.exists(os.path.join(d, OPTIM_FILE)):
                optim_state = torch.load(os.path.join(d, OPTIM_FILE), map_location="cpu", weights_only=True)
        _log(s, rank, f"resumed from checkpoint: stage {state['stage']} epoch {state['epoch']} "
                      f"(stages done: {state['done']})")
    state["starts"] = state.get("starts", -1) + 1  # worker-group starts of this run (0 = the first)
    history: list[dict] = state["history"]

    for stage in s.stages:
        if stage in state["done"]:
            continue
        sc = cfg.train.stage1 if stage == 1 else cfg.train.stage2
        resuming = state["stage"] == stage
        start_epoch = state["epoch"] + 1 if resuming else 0
        if stage == 2 and not resuming and 1 in best_weights:
            _load_trainable_state(model, best_weights[1], former_only=True)  # stage 2 starts from the best Former
        model.set_stage(stage)
        if world > 1:
            frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
            frozen += [n for n, _ in model.named_buffers()]
            torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, frozen)
            ddp = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device] if device.type == "cuda" else None, find_unused_parameters=True)
        else:
            ddp = model
        opt = st.make_optimizer(model, stage)
        bs = max(1, math.ceil(sc.batch_size / world))
        steps_per_epoch = math.ceil(len(data.train) / bs)
        total = steps_per_epoch * sc.epochs
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total, int(s.warmup_frac * total)))
        if resuming and optim_state is not None:
            opt.load_state_dict(optim_state["optimizer"])
            sched.load_state_dict(optim_state["scheduler"])
        best = state["best"].get(str(stage), {"ua": -1.0, "loss": float("inf"), "epoch": -1})
        _log(s, rank, f"stage {stage}: epochs {start_epoch}..{sc.epochs - 1}, global batch {bs * world} "
                      f"({bs}/worker), {steps_per_epoch} steps/epoch, lr {sc.lr}")

        for epoch in range(start_epoch, sc.epochs):
            t0 = time.perf_counter()
            _seed_all(cfg.seed, stage, epoch, rank)
            rng = np.random.default_rng([cfg.seed, stage, epoch, rank])
            model.train()
            sums: dict[str, float] = {}
            n_seen = 0
            for i, chunk in enumerate(_batches(data.train, bs, rng)):
                batch = _collate(_drop_transcripts(chunk, sc.text_dropout, rng))
                out = ddp(batch, stage)
                opt.zero_grad(set_to_none=True)
                out["loss"].backward()
                if s.grad_clip:
                    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], s.grad_clip)
                opt.step()
                sched.step()
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(chunk)
                n_seen += len(chunk)
                if i == 0:
                    _maybe_fail(s, stage, epoch, rank)
            train_metrics = _all_mean(sums, n_seen)
            # validation on every rank's share, gathered
            vt, vp, vnll = _evaluate(model, data.val, stage, s.eval_batch_size)
            parts = _gather((vt, vp, vnll))
            rec = {"stage": stage, "epoch": epoch, "start": state["starts"], "lr": float(sched.get_last_lr()[0]),
                   **{f"train_{k}": round(v, 6) for k, v in sorted(train_metrics.items())}}
            y_true = [t for p in parts for t in p[0]]
            y_pred = [t for p in parts for t in p[1]]
            if y_true:
                rep = classification_report(y_true, y_pred, names)
                rec.update(val_loss=sum(p[2] for p in parts) / len(y_true), val_wa=rep["wa"], val_ua=rep["ua"],
                           val_wf1=rep["weighted_f1"],
                           val_recall={k: v["recall"] for k, v in rep["per_class"].items()},
                           val_confusion=rep["confusion_matrix"])
                score = (rec["val_ua"], -rec["val_loss"])
            else:  # no validation split: the last epoch is the best
                rec.update(val_loss=None, val_wa=None, val_ua=None, val_wf1=None)
                score = (float(epoch), 0.0)
            is_best = score > (best["ua"], -best["loss"])
            if is_best:
                best = {"ua": score[0], "loss": -score[1], "epoch": epoch}
                best_weights[stage] = _trainable_state(model)
            rec.update(is_best=is_best, best_epoch=best["epoch"], epoch_s=round(time.perf_counter() - t0, 2),
                       world_size=world, time=time.strftime("%Y-%m-%dT%H:%M:%S"))
            history.append(rec)
            state.update(stage=stage, epoch=epoch, history=history)
            state["best"][str(stage)] = best
            if epoch == sc.epochs - 1:
                state["done"] = sorted(set(state["done"]) | {stage})
            _log(s, rank, f"stage {stage} epoch {epoch}: loss {rec.get('train_loss', float('nan')):.4f} "
                          f"val UA {rec['val_ua'] if rec['val_ua'] is None else round(rec['val_ua'], 4)} "
                          f"WA {rec['val_wa'] if rec['val_wa'] is None else round(rec['val_wa'], 4)} "
                          f"loss {rec['val_loss'] if rec['val_loss'] is None else round(rec['val_loss'], 4)}"
                          f"{' *' if is_best else ''} ({rec['epoch_s']} s)")
            metrics = {k: v for k, v in rec.items() if not isinstance(v, (dict, list))}
            _report(s, rank, metrics, state, model, best_weights,
                    {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()})
        state.update(stage=stage, epoch=sc.epochs - 1)
        state["done"] = sorted(set(state["done"]) | {stage})
        if ddp is not model:
            del ddp
        if dist.is_available() and dist.is_initialized():
            dist.barrier()

    # export: the best weights of the last stage trained
    last = s.stages[-1]
    if last in best_weights:
        _load_trainable_state(model, best_weights[last])
    state["final"] = True
    # calibration: one temperature on the validation split's probabilities (every rank's share, gathered)
    val_probs: list = []
    vt, _, _ = _evaluate(model, data.val, last, s.eval_batch_size, val_probs)
    parts = _gather((vt, val_probs))
    y_val = np.array([t for p in parts for t in p[0]], dtype=int)
    p_val = np.array([q for p in parts for q in p[1]], dtype=np.float64).reshape(len(y_val), len(names))
    metrics = {"final": True, "stage": last, "best_epoch": state["best"].get(str(last), {}).get("epoch", -1),
               "best_val_ua": state["best"].get(str(last), {}).get("ua", None)}
    if rank == 0:
        from emoq_model.bundle import save_bundle

        tmp = tempfile.mkdtemp(prefix="emoq-final-")
        try:
            bundle = save_bundle(model, os.path.join(tmp, BUNDLE_DIR), merge_llm=s.merge_llm)
            dataclasses.replace(data.norm, group_key="speaker").save(bundle)  # labeling: speaker = channel
            if len(y_val):
                from emoq_model.calibration import calibration_report, save_calibration

                cal = calibration_report(p_val, y_val)
                save_calibration(bundle, cal)
                _log(s, rank, f"calibration on {cal['n']} validation rows: T={cal['temperature']:.3f}, ECE "
                              f"{cal['ece_before']:.4f} -> {cal['ece_after']:.4f}")
            train_info = {"settings": dataclasses.asdict(s), "features_meta_sha256": data.meta_sha256,
                          "best": state["best"], "class_counts": data.counts,
                          "n_train": data.n_train, "n_val": data.n_val, "history": history}
            Path(bundle, "training.json").write_text(json.dumps(train_info, indent=1, default=str))
            _write_state_files(tmp, state, model, best_weights, None)
            _write_metrics(s, history)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        ray.train.report(metrics)


def _write_state_files(d: str, state: dict, model, best_weights: dict, optim: dict | None) -> None:
    import torch

    Path(d, STATE_FILE).write_text(json.dumps(state, default=str))
    _save_st(_trainable_state(model), os.path.join(d, CURRENT_FILE))
    for stage, w in best_weights.items():
        _save_st(w, os.path.join(d, BEST_FILE.format(stage=stage)))
    if optim is not None:
        torch.save(optim, os.path.join(d, OPTIM_FILE))


def _report(s: TrainSettings, rank: int, metrics: dict, state: dict, model, best_weights: dict, optim: dict) -> None:
    import ray.train

    if rank != 0:
        ray.train.report(metrics)
        return
    tmp = tempfile.mkdtemp(prefix="emoq-ckpt-")
    try:
        _write_state_files(tmp, state, model, best_weights, optim)
        _write_metrics(s, state["history"])
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ============================================================================================== driver side


def check_cache_matches(cache, cfg) -> None:
    """The cache must hold what the configured Former expects: same layer choice, width and layer count."""
    from emoq_model.model import encoder_dims

    cm = cache.meta.get("encoder", {})
    for key in ("layer", "weighted_layers", "whisper_real_length", "whisper_tail_s", "prosody"):
        if key in cm and cm[key] != getattr(cfg.encoder, key):
            raise ValueError(f"feature cache {cache.root} was extracted with encoder.{key}={cm[key]!r}, the config "
                             f"says {getattr(cfg.encoder, key)!r}: re-extract or fix the config")
    width, n_layers = encoder_dims(cfg)
    if (cache.dim, cache.n_layers) != (width, n_layers):
        raise ValueError(f"feature cache {cache.root} holds {cache.n_layers} x {cache.dim} features, the config's "
                         f"encoder gives {n_layers} x {width}")


def run_training(cfg, settings: TrainSettings) -> dict:
    """Train (Ray must be initialised), copy the bundle to ``settings.bundle_out`` and return a summary:
    ``bundle``, ``run_dir``, ``metrics_file``, ``history``, ``best``, ``seconds``."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from emoq_model import features as F

    check_cache_matches(F.FeatureCache(settings.features), cfg)  # fail early on a missing / mismatched cache
    if settings.fail_once is None:
        settings.fail_once = fail_once_from_env()
    t0 = time.perf_counter()
    run_config = ray.train.RunConfig(
        name=settings.name,
        storage_path=settings.storage_path,
        failure_config=ray.train.FailureConfig(max_failures=settings.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=settings.num_to_keep),
        worker_runtime_env={"env_vars": {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                                                                     "EMOQ_CACHE", "TOKENIZERS_PARALLELISM")
                                         if k in os.environ}},
    )
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.to_dict(), "settings": dataclasses.asdict(settings)},
        scaling_config=settings.scaling_config(),
        run_config=run_config,
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    ckpt = result.checkpoint
    if ckpt is None:
        raise RuntimeError("training finished without a checkpoint")
    out = settings.bundle_out or F.join(settings.run_dir, BUNDLE_DIR)
    with ckpt.as_directory() as d:
        src = os.path.join(d, BUNDLE_DIR)
        if not os.path.isdir(src):
            raise RuntimeError(f"the final checkpoint {ckpt.path} holds no bundle")
        history = json.loads(Path(d, STATE_FILE).read_text())["history"]
        best = json.loads(Path(d, STATE_FILE).read_text())["best"]
        if "://" in out:
            import pyarrow.fs as pafs

            fs, path = F._resolve(out)
            pafs.copy_files(src, path, destination_filesystem=fs)
        else:
            out = os.path.abspath(out)
            tmp = f"{out}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src, tmp)
            if os.path.exists(out):
                shutil.rmtree(out)
            os.replace(tmp, out)
    return {"bundle": out, "run_dir": settings.run_dir, "metrics_file": F.join(settings.run_dir, METRICS_FILE),
            "history": history, "best": best, "seconds": round(time.perf_counter() - t0, 2),
            "checkpoint": ckpt.path}
