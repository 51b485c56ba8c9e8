"""The Ray Train worker: two-stage training of one rank, as phases a reader can follow.

:func:`train_loop_per_worker` = set up (device, threads, data shard, model) -> :func:`resume` (from the latest
checkpoint) -> per stage :func:`start_stage` (freeze, DDP, optimizer, schedule) and per epoch :func:`train_epoch`
-> :func:`validate` -> :func:`report_epoch` (a checkpoint every epoch) -> :func:`export` (the best weights of the
last stage, calibration, the bundle as the final checkpoint).

* data: :class:`pipeline.training.data.WorkerData`; ``train.stage*.batch_size`` is the **global** batch.
* best epoch = highest validation UA (ties: lower loss) under the deployment-faithful normalisation; stage 2
  starts from the best stage-1 Former.
* seeds: model init from ``cfg.seed``; shuffling and dropout re-seeded from (seed, stage, epoch, rank) at every
  epoch start, so a run resumed from a checkpoint continues exactly as the uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import faults
from pipeline.training.checkpoint import (
    load_st,
    load_trainable_state,
    report_epoch,
    run_identity,
    trainable_state,
    write_metrics,
    write_state_files,
)
from pipeline.training.data import WorkerData, batches, collate, drop_transcripts
from pipeline.training.settings import BEST_FILE, BUNDLE_DIR, CURRENT_FILE, OPTIM_FILE, STATE_FILE, TrainSettings

if TYPE_CHECKING:
    from pipeline.training.ema import WeightEMA


@dataclass
class RunState:
    """What a checkpoint restores: the run state dict (history, stages done, best per stage), the best weights per
    stage and the optimizer/scheduler state of the stage in progress."""

    state: dict = field(default_factory=lambda: {"history": [], "done": [], "stage": None, "epoch": -1, "best": {}})
    best_weights: dict[int, dict] = field(default_factory=dict)
    optim_state: dict | None = None


def resume(model, s: TrainSettings, rank: int) -> RunState:
    """Load the latest checkpoint of this run into ``model`` (Ray Train restores it after a failure or a rerun with
    the same name and storage); a fresh :class:`RunState` when there is none."""
    import ray.train
    import torch

    run = RunState()
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            run.state = json.loads(Path(d, STATE_FILE).read_text())
            run.state["final"] = False
            load_trainable_state(model, load_st(os.path.join(d, CURRENT_FILE)))
            for stage in (1, 2):
                p = os.path.join(d, BEST_FILE.format(stage=stage))
                if os.path.exists(p):
                    run.best_weights[stage] = load_st(p)
            if os.path.exists(os.path.join(d, OPTIM_FILE)):
                run.optim_state = torch.load(os.path.join(d, OPTIM_FILE), map_location="cpu", weights_only=True)
        log(
            s,
            rank,
            f"resumed from checkpoint: stage {run.state['stage']} epoch {run.state['epoch']} "
            f"(stages done: {run.state['done']})",
        )
    run.state["starts"] = run.state.get("starts", -1) + 1  # worker-group starts of this run (0 = the first)
    return run


@dataclass
class StageRun:
    """One stage's training objects on this rank."""

    stage: int
    sc: Any  # the stage's config (cfg.train.stage1 / stage2)
    ddp: Any  # the model, DDP-wrapped when world > 1
    opt: Any
    sched: Any
    bs: int  # per-worker batch
    start_epoch: int
    best: dict
    ema: WeightEMA | None = None  # the average that validation and export read (train.stage*.ema > 0)

    def averaged(self):
        """Context in which the model holds the weights validation and export read (the EMA when on)."""
        return self.ema.applied() if self.ema is not None else contextlib.nullcontext()


def start_stage(
    model, cfg, s: TrainSettings, stage: int, run: RunState, n_items: int, rank: int, world: int, device
) -> StageRun:
    """Freeze what the stage does not train, wrap in DDP (frozen parameters and buffers not synchronised), build
    AdamW with linear warm-up + cosine decay; restore optimizer/scheduler when resuming inside this stage."""
    import torch

    from emoq_model import steps as st
    from pipeline.training.ema import WeightEMA

    sc = cfg.train.stage1 if stage == 1 else cfg.train.stage2
    resuming = run.state["stage"] == stage
    if stage == 2 and not resuming and 1 in run.best_weights:
        load_trainable_state(model, run.best_weights[1], former_only=True)  # stage 2 starts from the best Former
    model.set_stage(stage)
    if world > 1:
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
        frozen += [n for n, _ in model.named_buffers()]
        torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, frozen)
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None, find_unused_parameters=True
        )
    else:
        ddp = model
    opt = st.make_optimizer(model, stage)
    bs = max(1, math.ceil(sc.batch_size / world))
    steps_per_epoch = math.ceil(n_items / bs)
    total = steps_per_epoch * sc.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total, int(s.warmup_frac * total)))
    ema = WeightEMA(st.trainable_named_parameters(model, stage), sc.ema) if sc.ema > 0 else None
    if resuming and run.optim_state is not None:
        opt.load_state_dict(run.optim_state["optimizer"])
        sched.load_state_dict(run.optim_state["scheduler"])
        if ema is not None:
            ema.load_state_dict(run.optim_state["ema"])
    best = run.state["best"].get(str(stage), {"ua": -1.0, "loss": float("inf"), "epoch": -1})
    start_epoch = run.state["epoch"] + 1 if resuming else 0
    log(
        s,
        rank,
        f"stage {stage}: epochs {start_epoch}..{sc.epochs - 1}, global batch {bs * world} "
        f"({bs}/worker), {steps_per_epoch} steps/epoch, lr {sc.lr}",
    )
    return StageRun(stage, sc, ddp, opt, sched, bs, start_epoch, best, ema)


def train_epoch(
    model, sr: StageRun, data: WorkerData, s: TrainSettings, seed: int, epoch: int, rank: int
) -> dict[str, float]:
    """One pass over this rank's shard; the loss terms averaged over all ranks."""
    import torch

    seed_all(seed, sr.stage, epoch, rank)
    rng = np.random.default_rng([seed, sr.stage, epoch, rank])
    model.train()
    sums: dict[str, float] = {}
    n_seen = 0
    for i, chunk in enumerate(data.epoch_batches(sr.bs, rng, recorded_only=not sr.sc.speed_copies)):
        chunk = data.resample(chunk, sr.sc.stats_resample, rng)
        batch = collate(drop_transcripts(chunk, sr.sc.text_dropout, rng))
        out = sr.ddp(batch, sr.stage)
        sr.opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        if s.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], s.grad_clip)
        sr.opt.step()
        sr.sched.step()
        if sr.ema is not None:
            sr.ema.update()
        note_private_memory()
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(chunk)
        n_seen += len(chunk)
        if i == 0:
            maybe_fail(s, sr.stage, epoch, rank)
        faults.maybe_die("train")  # off unless a reliability test arms it (EMOQ_FAULTS_DIR)
    return {**all_mean(sums, n_seen), "rows": float(n_seen)}  # rows: this rank's rows in the epoch


def validate(model, items: list[dict], stage: int, s: TrainSettings, names: list[str]) -> dict:
    """Validation metrics over every rank's share (gathered): loss, WA, UA, weighted F1, recall, confusion."""
    from emoq_model.metrics import classification_report

    vt, vp, vnll = evaluate_items(model, items, stage, s.eval_batch_size)
    parts = gather((vt, vp, vnll))
    y_true = [t for p in parts for t in p[0]]
    y_pred = [t for p in parts for t in p[1]]
    if not y_true:  # no validation split
        return {"val_loss": None, "val_wa": None, "val_ua": None, "val_wf1": None}
    rep = classification_report(y_true, y_pred, names)
    return {
        "val_loss": sum(p[2] for p in parts) / len(y_true),
        "val_wa": rep["wa"],
        "val_ua": rep["ua"],
        "val_wf1": rep["weighted_f1"],
        "val_recall": {k: v["recall"] for k, v in rep["per_class"].items()},
        "val_confusion": rep["confusion_matrix"],
    }


def _num(v) -> float:
    """A float, NaN for a missing value (a validation row without a place in a call)."""
    return float("nan") if v is None else float(v)


def _fmt(v) -> str:
    return "None" if v is None else str(round(v, 4))


def export(model, data: WorkerData, s: TrainSettings, run: RunState, rank: int, names: list[str]) -> None:
    """The best weights of the last stage trained; one calibration temperature on the validation split's
    probabilities (every rank's share, gathered); rank 0 writes the bundle and reports it as the final
    checkpoint."""
    import ray.train

    state, history = run.state, run.state["history"]
    last = s.stages[-1]
    if last in run.best_weights:
        load_trainable_state(model, run.best_weights[last])
    state["final"] = True
    val_probs: list = []
    vt, _, _ = evaluate_items(model, data.val, last, s.eval_batch_size, val_probs)
    where = [
        (it.get("speaker"), _num(it.get("start_s")), _num(it.get("end_s")), it.get("path") or it.get("speaker"))
        for it in data.val
    ]
    parts = gather((vt, val_probs, where))
    y_val = np.array([t for p in parts for t in p[0]], dtype=int)
    p_val = np.array([q for p in parts for q in p[1]], dtype=np.float64).reshape(len(y_val), len(names))
    w_val = [w for p in parts for w in p[2]]
    metrics = {
        "final": True,
        "stage": last,
        "best_epoch": state["best"].get(str(last), {}).get("epoch", -1),
        "best_val_ua": state["best"].get(str(last), {}).get("ua", None),
    }
    if rank != 0:
        ray.train.report(metrics)
        return
    from emoq_model.bundle import save_bundle

    tmp = tempfile.mkdtemp(prefix="emoq-final-")
    try:
        bundle = save_bundle(model, os.path.join(tmp, BUNDLE_DIR), merge_llm=s.merge_llm)
        dataclasses.replace(data.norm, group_key="speaker").save(bundle)  # labeling: speaker = channel
        if len(y_val):
            from emoq_model.calibration import calibration_report, save_calibration
            from emoq_model.context import ChannelContext, fit_context

            context, grid = ChannelContext(), []
            if s.context:  # conversation context, fitted on the validation calls (before the temperature)
                groups = [w[0] for w in w_val]
                starts, ends = [w[1] for w in w_val], [w[2] for w in w_val]
                context, grid = fit_context(p_val, y_val, groups, starts, ends)
                p_val = context.apply(p_val, groups, starts, ends)
            cal = calibration_report(p_val, y_val, groups=[w[3] for w in w_val])  # out-of-fold ECE by recording
            cal["context"] = {**context.to_dict(), "grid": grid}
            save_calibration(bundle, cal)
            log(
                s,
                rank,
                f"calibration on {cal['n']} validation rows: context weight={context.weight:g} "
                f"tau={context.tau_s:g}s, T={cal['temperature']:.3f}, ECE "
                f"{cal['ece_before']:.4f} -> {cal['ece_after']:.4f} (out of fold, by recording: "
                f"{cal['ece_crossfit'] if cal['ece_crossfit'] is None else round(cal['ece_crossfit'], 4)})",
            )
        train_info = {
            "settings": dataclasses.asdict(s),
            "features_meta_sha256": data.meta_sha256,
            "best": state["best"],
            "class_counts": data.counts,
            "n_train": data.n_train,
            "n_val": data.n_val,
            "history": history,
        }
        Path(bundle, "training.json").write_text(json.dumps(train_info, indent=1, default=str))
        write_state_files(tmp, state, model, run.best_weights, None)
        write_metrics(s, history)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker function (``config = {"cfg": EmoQConfig dict, "settings": TrainSettings dict}``)."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from emoq_model.config import config_from_dict
    from emoq_model.config import validate as validate_config
    from emoq_model.model import EmoQModel

    s = TrainSettings(**config["settings"])
    cfg = validate_config(config_from_dict(config["cfg"]), check_assets=False)
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
    streams = {}
    if s.data == "stream":
        streams["shard"] = ray.train.get_dataset_shard("train")
        if cfg.train.recorded_only:
            streams["recorded_shard"] = ray.train.get_dataset_shard("train_recorded")
    data = WorkerData(s, cfg, rank, world, **streams)
    log(
        s,
        rank,
        f"data: {data.n_train} train / {data.n_val} val rows ({data.n_errors} error rows skipped), "
        f"{data.n_per_rank} per rank ({s.data}), class counts {dict(zip(names, data.counts))}, "
        f"norm={s.feature_norm}, loaded in {time.perf_counter() - t_load:.1f} s",
    )

    model = EmoQModel(cfg)
    model.set_class_counts(data.counts)
    if s.init_bundle:
        from emoq_model.bundle import FORMER_FILE

        model.former.load_state_dict(load_st(os.path.join(s.init_bundle, FORMER_FILE)), strict=True)
    run = resume(model, s, rank)
    run.state["identity"] = run_identity(config["cfg"], data.meta_sha256)  # checked by the driver on a resume
    state, history = run.state, run.state["history"]

    for stage in s.stages:
        if stage in state["done"]:
            continue
        sc = cfg.train.stage1 if stage == 1 else cfg.train.stage2
        n_rows = data.rows_per_rank(recorded_only=not sc.speed_copies)
        if n_rows == 0:
            raise ValueError(f"stage {stage}: no training rows for this rank (speed_copies={sc.speed_copies})")
        sr = start_stage(model, cfg, s, stage, run, n_rows, rank, world, device)
        for epoch in range(sr.start_epoch, sr.sc.epochs):
            t0 = time.perf_counter()
            train_metrics = train_epoch(model, sr, data, s, cfg.seed, epoch, rank)
            train_s = time.perf_counter() - t0
            rec = {
                "stage": stage,
                "epoch": epoch,
                "start": state["starts"],
                "lr": float(sr.sched.get_last_lr()[0]),
                **{f"train_{k}": round(v, 6) for k, v in sorted(train_metrics.items())},
            }
            with sr.averaged():  # validation, the best epoch and the export read the same weights
                rec.update(validate(model, data.val, stage, s, names))
                score = (rec["val_ua"], -rec["val_loss"]) if rec["val_ua"] is not None else (float(epoch), 0.0)
                is_best = score > (sr.best["ua"], -sr.best["loss"])  # no validation split: the last epoch is best
                if is_best:
                    sr.best = {"ua": score[0], "loss": -score[1], "epoch": epoch}
                    run.best_weights[stage] = trainable_state(model)
            rec.update(
                is_best=is_best,
                best_epoch=sr.best["epoch"],
                epoch_s=round(time.perf_counter() - t0, 2),
                train_s=round(train_s, 3),
                max_rss_mb=round(peak_rss_mb(), 1),  # this worker's peak resident memory so far
                peak_private_mb=round(_PEAK_PRIVATE_MB, 1),  # ... of it private (not Ray's shared object store)
                world_size=world,
                time=time.strftime("%Y-%m-%dT%H:%M:%S"),
            )
            history.append(rec)
            state.update(stage=stage, epoch=epoch, history=history)
            state["best"][str(stage)] = sr.best
            if epoch == sr.sc.epochs - 1:
                state["done"] = sorted(set(state["done"]) | {stage})
            log(
                s,
                rank,
                f"stage {stage} epoch {epoch}: loss {rec.get('train_loss', float('nan')):.4f} "
                f"val UA {_fmt(rec['val_ua'])} WA {_fmt(rec['val_wa'])} loss {_fmt(rec['val_loss'])}"
                f"{' *' if is_best else ''} ({rec['epoch_s']} s)",
            )
            metrics = {k: v for k, v in rec.items() if not isinstance(v, (dict, list))}
            report_epoch(
                s,
                rank,
                metrics,
                state,
                model,
                run.best_weights,
                {
                    "optimizer": sr.opt.state_dict(),
                    "scheduler": sr.sched.state_dict(),
                    **({"ema": sr.ema.state_dict()} if sr.ema is not None else {}),
                },
            )
        state.update(stage=stage, epoch=sr.sc.epochs - 1)
        state["done"] = sorted(set(state["done"]) | {stage})
        del sr
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
    export(model, data, s, run, rank, names)


# ------------------------------------------------------------------------------------------- helpers


def seed_all(*key: int) -> None:
    import random

    import torch

    seed = int(np.random.SeedSequence(list(key)).generate_state(1)[0])
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def evaluate_items(
    model, items: list[dict], stage: int, bs: int, probs_out: list | None = None
) -> tuple[list[int], list[int], float]:
    """(true, predicted, summed NLL) over ``items`` on this rank (stage 1: aux head; stage 2: the LLM); the
    probability rows are appended to ``probs_out`` when given."""
    import torch

    true, pred, nll = [], [], 0.0
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for chunk in batches(items, bs):
                batch = collate(chunk)
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


def gather(obj):
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_mean(values: dict[str, float], count: int) -> dict[str, float]:
    """Count-weighted mean of per-rank metric sums over all ranks."""
    parts = gather((values, count))
    total = sum(c for _, c in parts) or 1
    keys = set().union(*(v.keys() for v, _ in parts))
    return {k: sum(v.get(k, 0.0) for v, _ in parts) / total for k in keys}


def maybe_fail(s: TrainSettings, stage: int, epoch: int, rank: int) -> None:
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


_PEAK_PRIVATE_MB = 0.0


def note_private_memory() -> None:
    """Track this process's peak private resident memory (Linux ``RssAnon``: the heap, not the shared-memory
    pages of Ray's object store that reading blocks maps in, which ``ru_maxrss`` counts too)."""
    global _PEAK_PRIVATE_MB
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    _PEAK_PRIVATE_MB = max(_PEAK_PRIVATE_MB, int(line.split()[1]) / 1024.0)
                    return
    except OSError:  # not Linux
        pass


def peak_rss_mb() -> float:
    """Peak resident memory of this process (MiB; Linux reports ``ru_maxrss`` in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def lr_lambda(total: int, warmup: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        p = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, p)))

    return f


def log(s: TrainSettings, rank: int, msg: str) -> None:
    if s.verbose and rank == 0:
        print(f"[emoq-train] {msg}", flush=True)
