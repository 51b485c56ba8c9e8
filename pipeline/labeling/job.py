"""The bulk labeling job: sources → prepare → encode + EmoQ-Former → vLLM → Parquet, streaming on Ray Data.

Recordings stay whole through every stage (one row per recording), so each output part file holds complete
recordings and a rerun on the same output skips every recording already written (resume).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from emoq_model.errors import ConfigError
from pipeline.labeling.prepare import PrepareConfig, prepare_batch
from pipeline.labeling.sink import (
    clean_temporary,
    drop_failed_parts,
    recording_counts,
    segments_dir,
    summarize,
    write_lost,
    write_parts,
)
from pipeline.labeling.sources import discover

# Retry counts can only be given as ray_remote_args in Ray 2.60 (deprecated there, but no named parameter yet).
warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")


PRECISION_KEYS = ("encoder.dtype", "former.dtype")  # what labeling may change about a trained bundle
ASR_DTYPES = ("auto", "float32", "bfloat16", "float16")
# What a bundle's ``encoder.dtype: auto`` labels in where the encode stage's device computes bfloat16 natively and no
# shared-encoder ASR reads the encoder's states: float32 weights, matmuls and convolutions under bfloat16 autocast.
# With the LLM in bfloat16 too, it kept 99.1-100 % of float32's labels on each of two archives with each of two
# speech-only bundles (7 of 1,678 segments moved; bfloat16 weights 98.8 % on one), UA within 0.006 (BENCHMARKS.md §7).
AUTO_ENCODER_DTYPE = "bfloat16-mixed"


def encoder_precision(cfg: LabelJobConfig, bundle: str, asr: str | None) -> str | None:
    """The precision an ``encoder.dtype: auto`` bundle's encoder runs in for this job (``asr``: its
    :func:`asr_mode`); None when the bundle's config or the job's ``model_overrides`` name one.

    :data:`AUTO_ENCODER_DTYPE` where the encode stage's device computes bfloat16 natively
    (:func:`emoq_model.config.native_bf16`, checked on the driver: a job whose GPUs the driver cannot see stays
    float32 unless asked) and no shared-encoder ASR decodes transcripts from the encoder's states: there the
    changed states change 14 % of the words and the words 2 % of the labels (BENCHMARKS.md §7). float32 otherwise.
    """
    from emoq_model.bundle import bundle_config
    from emoq_model.config import native_bf16

    if any(o.split("=", 1)[0].strip() == "encoder.dtype" for o in cfg.model_overrides):
        return None
    enc = bundle_config(bundle).encoder
    if enc.dtype != "auto":
        return None
    device = cfg.device or enc.device
    if device == "auto":  # as the actors resolve it: cuda when Ray gave them a GPU
        device = "cuda" if (cfg.label if cfg.fuse_model_stages else cfg.encode).num_gpus > 0 else "cpu"
    fast = native_bf16(device) and asr != "shared"
    return AUTO_ENCODER_DTYPE if fast else "float32"


def with_resolved_precision(
    cfg: LabelJobConfig, bundle: str, asr: str | None
) -> tuple[LabelJobConfig, list[str], str | None]:
    """``cfg`` with the ``auto`` encoder precision resolved into its ``model_overrides`` (what the stages load);
    the overrides that name the model (:func:`model_id`: every one but an ``auto`` resolved to float32, the
    precision every other is measured against); the resolved ``auto`` (None: none to resolve)."""
    auto = encoder_precision(cfg, bundle, asr)
    if auto is None:
        return cfg, precision_overrides(cfg), None
    run_cfg = replace(cfg, model_overrides=[*cfg.model_overrides, f"encoder.dtype={auto}"])
    return run_cfg, precision_overrides(cfg if auto == "float32" else run_cfg), auto


def precision_overrides(cfg: LabelJobConfig) -> list[str]:
    """The deployment-precision choices that may change labels, as ``key=value``: they name the output's model
    (:func:`model_id`). The bundle's overrides; the ASR decoder's dtype when an ASR runs and its dtype is not
    float32; the LLM engine's dtype when one is asked for (``engine.dtype``). The engine's default, ``auto``
    (bfloat16 where native, :func:`emoq_model.serving.serving_dtype`), is not named: it kept every float32 label."""
    asr = cfg.asr_model and cfg.asr_dtype != "float32"
    llm = cfg.engine.get("dtype", "auto")
    return [
        *cfg.model_overrides,
        *([f"asr.dtype={cfg.asr_dtype}"] if asr else []),
        *([f"llm.dtype={llm}"] if llm != "auto" else []),
    ]


@dataclass
class StageResources:
    """Actor pool of one model stage: ``actors`` instances, each with ``num_cpus`` / ``num_gpus`` and optional
    custom Ray resources (e.g. ``{"encoder_node": 1}`` to place the stage on the nodes that advertise it)."""

    actors: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    resources: dict[str, float] | None = None

    def __post_init__(self):
        if int(self.actors) < 1:
            raise ConfigError(f"a stage needs at least one actor, got actors={self.actors}")
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ConfigError(f"num_cpus and num_gpus must be >= 0, got {self.num_cpus}, {self.num_gpus}")
        if self.resources is not None and (
            not isinstance(self.resources, dict)
            or any(not isinstance(v, (int, float)) or v < 0 for v in self.resources.values())
        ):
            raise ConfigError(f"resources must map resource names to amounts >= 0, got {self.resources!r}")


@dataclass
class LabelJobConfig:
    inputs: list[str]
    output: str
    bundle: str
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    batch_recordings: int = 8  # recordings per block through the model stages
    prepare_num_cpus: float = 0.5
    encode: StageResources = field(default_factory=StageResources)
    label: StageResources = field(default_factory=StageResources)
    device: str | None = None  # None: the bundle's config ("auto" = cuda when the actor has a GPU)
    # deployment-time precision of the bundle's models, e.g. ["encoder.dtype=bfloat16", "former.dtype=bfloat16"]
    # (only encoder.dtype and former.dtype; the LLM's is the engine's: engine={"dtype": "bfloat16"}). A bundle whose
    # encoder.dtype is auto gets one chosen per job when none is given here (encoder_precision)
    model_overrides: list[str] = field(default_factory=list)
    max_batch_segments: int = 32  # encoder batch (segments); padded samples bounded by max_batch_seconds
    max_batch_seconds: float = 240.0
    batch_overhead_s: float | None = None  # encoder batching: one call costs this much audio, s (None: by device)
    max_held_seconds: float = 600.0  # encoder states held for per-speaker norm; above: 2 encoder passes, streamed
    vllm_mode: str = "tokens"  # "tokens" (allowed label tokens + their logprobs) | "choice" (structured outputs)
    use_merged: bool | None = None  # serve the bundle's merged LLM instead of base + LoRA
    asr_model: str | None = None  # local Whisper checkpoint: transcribe segments without transcripts (text bundles)
    asr: StageResources = field(default_factory=StageResources)
    # when the bundle's encoder is the ASR checkpoint: decode transcripts from the emotion encoder's states (one
    # encoder pass, pipeline.labeling.asr.WhisperDecoder) instead of a separate ASR stage
    asr_shared: bool = True
    # ASR decoder precision: auto (bfloat16 where the device computes it natively, else float32) | float32 |
    # bfloat16 (decoding 1.5x faster on this CPU, 99.5 % of the demo archive's labels unchanged) | float16.
    # Transcripts may differ slightly, so any choice but float32 is part of the model id (as chosen: "auto")
    asr_dtype: str = "auto"
    engine: dict = field(default_factory=lambda: {"enforce_eager": True, "max_model_len": 1024, "max_num_seqs": 256})
    engine_in_process: bool | None = None  # None: in-process engine core when the label actors have no GPU
    fuse_model_stages: bool = False  # encoder + Former + vLLM in one actor pool (``label`` resources): one device
    #                                  holds both models and they take turns on it (one GPU, a CPU machine)
    object_store_limit_mb: int | None = 1024  # cap on the streaming executor's object-store use
    resume: bool = True
    retry_failed: bool = False  # on resume, label again the recordings that got an error row last time
    allow_other_model: bool = False  # add labels to an output that holds another model's (refused by default)
    max_attempts: int = 3  # tries per batch (worker crash, OOM kill, error) before its recordings are set aside
    isolate_failures: bool = True  # retry the recordings of failed batches one by one, to find the poison ones
    max_failed_batches: int = 16  # more failed batches than this (per pass) abort the job: something systemic
    timeline_calls: int = 3  # timeline PNGs of the first N recordings (by id) under <output>/timelines/; 0: none

    def __post_init__(self):
        """Checked like :class:`emoq_model.config.EmoQConfig`: a wrong value fails here, with its name, not deep in
        a Ray actor after the models have loaded."""
        if isinstance(self.inputs, str):
            self.inputs = [self.inputs]
        if not self.inputs:
            raise ConfigError("no inputs: give audio files, folders, globs or manifests")
        for name in ("output", "bundle"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f"{name} must be a non-empty path, got {getattr(self, name)!r}")
        positive = {
            "batch_recordings": self.batch_recordings,
            "max_batch_segments": self.max_batch_segments,
            "max_batch_seconds": self.max_batch_seconds,
            "max_held_seconds": self.max_held_seconds,
            "max_attempts": self.max_attempts,
        }
        bad = {k: v for k, v in positive.items() if not v > 0}
        if bad:
            raise ConfigError(f"must be > 0: {bad}")
        if self.prepare_num_cpus < 0 or self.max_failed_batches < 0 or self.timeline_calls < 0:
            raise ConfigError("prepare_num_cpus, max_failed_batches and timeline_calls must be >= 0")
        if self.batch_overhead_s is not None and self.batch_overhead_s < 0:
            raise ConfigError(f"batch_overhead_s must be >= 0, got {self.batch_overhead_s}")
        if self.vllm_mode not in ("tokens", "choice"):
            raise ConfigError(f"vllm_mode must be 'tokens' or 'choice', got {self.vllm_mode!r}")
        if self.object_store_limit_mb is not None and self.object_store_limit_mb <= 0:
            raise ConfigError(f"object_store_limit_mb must be > 0 or None, got {self.object_store_limit_mb}")
        bad = [o for o in self.model_overrides if o.split("=", 1)[0].strip() not in PRECISION_KEYS or "=" not in o]
        if bad:
            raise ConfigError(f"model_overrides may only set {PRECISION_KEYS} (key=value), got {bad}")
        if self.asr_dtype not in ASR_DTYPES:
            raise ConfigError(f"asr_dtype must be one of {ASR_DTYPES}, got {self.asr_dtype!r}")
        if self.device not in (None, "auto", "cpu") and not str(self.device).startswith("cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")


def model_id(bundle: str, overrides: list[str] | None = None) -> str:
    """``<bundle name>@<digest>``: the digest covers every bundle file that changes labels or confidences
    (:func:`pipeline.labeling.guards.bundle_digest`); a deployment-precision override is part of the id
    (``+encoder.dtype=bfloat16``): its labels may differ slightly from the float32 ones."""
    from pipeline.labeling.guards import bundle_digest

    digest = bundle_digest(bundle)
    return f"{Path(bundle).resolve().name}@{digest[:12]}" + "".join(f"+{o}" for o in sorted(overrides or []))


def encoder_sample_rate(bundle: str) -> int:
    """The encoder's input rate, from its feature extractor's ``preprocessor_config.json`` (read as JSON: the
    driver need not import transformers for one number), else through ``AutoFeatureExtractor``."""
    from emoq_model.bundle import read_meta

    path = Path(read_meta(bundle)["encoder_path"])
    conf = path / "preprocessor_config.json"
    if conf.is_file():
        rate = json.loads(conf.read_text()).get("sampling_rate")
        if rate:
            return int(rate)
    from transformers import AutoFeatureExtractor

    return int(AutoFeatureExtractor.from_pretrained(str(path)).sampling_rate)


def asr_mode(cfg: LabelJobConfig, bundle: str) -> str | None:
    """How segments without a transcript get one: ``shared`` (decoded from the emotion encoder's states),
    ``separate`` (an ASR stage of its own) or None (no ASR: the bundle reads no text, or no ``asr_model``)."""
    from pipeline.labeling.asr import bundle_uses_text, shares_encoder

    if not cfg.asr_model or not bundle_uses_text(bundle):
        return None
    return "shared" if cfg.asr_shared and shares_encoder(bundle, cfg.asr_model) else "separate"


def build_dataset(
    cfg: LabelJobConfig, rows: list[dict], bundle: str, labels: list[str], mid: str, out: str, isolate: bool = False
):
    """The streaming plan: rows (one per recording) → prepare → [ASR] → encode → vLLM → part files.

    Each batch gets ``cfg.max_attempts`` tries (a worker crash or OOM kill restarts the actor and retries the
    batch); a batch that fails every try is dropped from the stream instead of failing the job (up to
    ``cfg.max_failed_batches``), and the driver accounts for its recordings (:func:`run`). ``isolate``: one
    recording per batch and one task at a time per actor, so that a crashing recording takes no innocent batch
    down with it.
    """
    import ray

    from pipeline.labeling.asr import Transcribe
    from pipeline.labeling.columns import check_plan
    from pipeline.labeling.encode import EncodePrompts
    from pipeline.labeling.label import EncodeAndLabel, LabelWithVLLM

    batch_recordings = 1 if isolate else cfg.batch_recordings
    retries = max(0, cfg.max_attempts - 1)
    in_process = cfg.engine_in_process if cfg.engine_in_process is not None else cfg.label.num_gpus == 0
    task_args = {"max_retries": retries}  # function stages (Ray Data's default is -1: forever)
    actor_args = {"max_restarts": -1, "max_task_retries": retries}  # actors come back; a batch is tried N times
    in_flight = {"max_tasks_in_flight_per_actor": 1} if isolate else {}

    def pool(res: StageResources):
        return ray.data.ActorPoolStrategy(size=res.actors, **in_flight)

    mode = asr_mode(cfg, bundle)
    shared = mode == "shared"
    stages = [
        prepare_batch,
        *([Transcribe] if mode == "separate" else []),
        *([EncodePrompts, LabelWithVLLM] if not cfg.fuse_model_stages else [EncodeAndLabel]),
        write_parts,
    ]
    check_plan([st.columns for st in stages])  # every stage finds the columns it needs, before anything runs
    n_blocks = max(1, math.ceil(len(rows) / batch_recordings))
    ds = ray.data.from_items(rows, override_num_blocks=n_blocks)
    ds = ds.map_batches(
        prepare_batch,
        fn_kwargs={"cfg": cfg.prepare},
        batch_size=batch_recordings,
        batch_format="numpy",
        num_cpus=cfg.prepare_num_cpus,
        **task_args,
    )
    if mode == "separate":
        ds = ds.map_batches(
            Transcribe,
            fn_constructor_kwargs={
                "model_path": cfg.asr_model,
                "sample_rate": cfg.prepare.sample_rate,
                "device": cfg.device,
                "dtype": cfg.asr_dtype,
            },
            batch_size=batch_recordings,
            batch_format="numpy",
            compute=pool(cfg.asr),
            num_cpus=cfg.asr.num_cpus,
            num_gpus=cfg.asr.num_gpus,
            resources=cfg.asr.resources,
            **actor_args,
        )
    encode_kwargs = {
        "bundle_dir": bundle,
        "device": cfg.device,
        "max_batch_segments": cfg.max_batch_segments,
        "max_batch_seconds": cfg.max_batch_seconds,
        "batch_overhead_s": cfg.batch_overhead_s,
        "max_held_seconds": cfg.max_held_seconds,
        "asr_model": cfg.asr_model if shared else None,
        "asr_dtype": cfg.asr_dtype,
        "overrides": list(cfg.model_overrides),
    }
    label_kwargs = {
        "bundle_dir": bundle,
        "mode": cfg.vllm_mode,
        "use_merged": cfg.use_merged,
        "engine_overrides": cfg.engine,
        "in_process": in_process,
    }
    if not cfg.fuse_model_stages:
        ds = ds.map_batches(
            EncodePrompts,
            fn_constructor_kwargs=encode_kwargs,
            batch_size=batch_recordings,
            batch_format="numpy",
            compute=pool(cfg.encode),
            num_cpus=cfg.encode.num_cpus,
            num_gpus=cfg.encode.num_gpus,
            resources=cfg.encode.resources,
            **actor_args,
        )
        label_cls, label_args = LabelWithVLLM, label_kwargs
    else:
        label_cls, label_args = EncodeAndLabel, {"encode_kwargs": encode_kwargs, "label_kwargs": label_kwargs}
    ds = ds.map_batches(
        label_cls,
        fn_constructor_kwargs=label_args,
        batch_size=batch_recordings,
        batch_format="numpy",
        compute=pool(cfg.label),
        num_cpus=cfg.label.num_cpus,
        num_gpus=cfg.label.num_gpus,
        resources=cfg.label.resources,
        **actor_args,
    )
    ds = ds.map_batches(
        write_parts,
        fn_kwargs={"out_uri": out, "labels": labels, "model_id": mid},
        batch_size=batch_recordings,
        batch_format="numpy",
        num_cpus=0.25,
        **task_args,
    )
    # This dataset's own DataContext (a copy made at creation): nothing leaks into the process-wide one.
    ctx = ds.context
    ctx.max_errored_blocks = cfg.max_failed_batches
    if cfg.object_store_limit_mb:
        ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(
            object_store_memory=cfg.object_store_limit_mb * 1024 * 1024
        )
    return ds


def _consume(ds, report: dict, progress=None) -> set[str]:
    """Run the plan; add each written recording to ``report`` (and each written batch to ``progress``, a
    :class:`pipeline.console.Progress`); return the ids written."""
    seen: set[str] = set()
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        before = {k: report[k] for k in ("labeled", "failed", "segments", "audio_s")}
        for rid, err, nseg, dur, sp in zip(
            batch["recording_id"], batch["error"], batch["num_segments"], batch["duration_s"], batch["speech_s"]
        ):
            seen.add(str(rid))
            failed = isinstance(err, str) and nseg == 0
            report["failed" if failed else "labeled"] += 1
            report["segments"] += int(nseg)
            report["audio_s"] += 0.0 if np.isnan(dur) else float(dur)
            report["speech_s"] += float(sp)
        if progress is not None:
            d = {k: report[k] - v for k, v in before.items()}
            progress.update(
                d["labeled"] + d["failed"], segments=d["segments"], audio_s=d["audio_s"], failed=d["failed"]
            )
    return seen


def _pass(ds, report: dict, total: int, phase: str, show: bool) -> set[str]:
    """One pass over a plan, with a progress bar / periodic line for it when ``show``."""
    if not show:
        return _consume(ds, report)
    from pipeline.console import Progress

    with Progress(total, phase=phase) as progress:
        return _consume(ds, report, progress)


def run(cfg: LabelJobConfig, log=print, progress: bool = True) -> dict:
    """Label everything in ``cfg.inputs`` into ``cfg.output``; returns the run report. ``progress``: a bar (on a
    terminal) or a line every 10 s on stderr while recordings are written.

    Every input recording ends up in the output exactly once: labelled, or as one error row. Recordings of a
    batch that failed ``cfg.max_attempts`` times (e.g. a file that crashes the decoder) are retried one per
    batch (``cfg.isolate_failures``); those failing alone too get an error row saying so.
    """
    from pipeline.labeling.guards import OutputLock

    out = cfg.output if "://" in cfg.output else str(Path(cfg.output).expanduser().resolve())
    with OutputLock(out):  # one job per output: a second one refuses to start
        return _run(cfg, log, progress)


def _run(cfg: LabelJobConfig, log, progress: bool) -> dict:
    from emoq_model.bundle import read_meta
    from pipeline.labeling.asr import bundle_uses_text
    from pipeline.labeling.guards import check_output_model

    t0 = time.perf_counter()
    out = cfg.output if "://" in cfg.output else str(Path(cfg.output).expanduser().resolve())
    bundle = str(Path(cfg.bundle).expanduser().resolve())
    meta = read_meta(bundle)
    asr = asr_mode(cfg, bundle)  # once: comparing the ASR and encoder checkpoints may hash their weights
    cfg, named, auto = with_resolved_precision(cfg, bundle, asr)  # the auto encoder precision, once for all actors
    labels, mid = list(meta["labels"]), model_id(bundle, named)
    if auto:
        shared = asr == "shared"
        log(f"[label] encoder precision (auto): {auto}" + (" (shared-encoder ASR reads its states)" if shared else ""))
    check_output_model(out, mid, cfg.allow_other_model)  # never mix two models' labels in one output
    cfg.prepare.sample_rate = encoder_sample_rate(bundle)

    records = discover(cfg.inputs)
    clean_temporary(out)  # leftovers of an interrupted run (one job per output directory)
    retried = drop_failed_parts(out) if cfg.resume and cfg.retry_failed else []
    done = set(recording_counts(out)) if cfg.resume else set()
    todo = [r for r in records if r.recording_id not in done]
    log(
        f"[label] {len(records)} recordings found, {len(records) - len(todo)} already done, {len(todo)} to label"
        + (f" ({len(retried)} failed last time, retried)" if retried else "")
    )
    report = {
        "recordings_found": len(records),
        "already_done": len(records) - len(todo),
        "labeled": 0,
        "failed": 0,
        "segments": 0,
        "audio_s": 0.0,
        "speech_s": 0.0,
        "output": out,
        "model_id": mid,
        "retried_failed": len(retried),
        "isolated": 0,
        "crashed": 0,
        "asr": asr,
        "model_overrides": list(cfg.model_overrides),  # the precision the stages ran in, auto resolved
    }
    if todo and bundle_uses_text(bundle) and not cfg.asr_model:
        log(
            "[label] the bundle reads transcripts; segments without one (no manifest transcript, no --asr-model) "
            "are labelled from speech alone"
        )
    if todo:
        ds = build_dataset(cfg, [r.to_row() for r in todo], bundle, labels, mid, out)
        # the limit the streaming executor runs under (the dataset's own copy of the DataContext)
        report["object_store_limit_bytes"] = ds.context.execution_options.resource_limits.object_store_memory
        seen = _pass(ds, report, len(todo), "label", progress)
        missing = [r for r in todo if r.recording_id not in seen]
        if missing and cfg.isolate_failures:
            # a fresh pass (new actors), one recording per batch: finds the poison files, and gives batches
            # that burnt their tries while an actor was unreachable (node loss, restart) a second chance
            log(
                f"[label] {len(missing)} recordings were in batches that failed {cfg.max_attempts} times; "
                "retrying them one by one"
            )
            report["isolated"] = len(missing)
            ds = build_dataset(cfg, [r.to_row() for r in missing], bundle, labels, mid, out, isolate=True)
            seen |= _pass(ds, report, len(missing), "label: one by one", progress)
            missing = [r for r in missing if r.recording_id not in seen]
        if missing:  # failed every attempt, alone: an error row each, never a silent drop
            msg = (
                f"processing failed {cfg.max_attempts} times (worker crash, out-of-memory kill or an unhandled "
                "error; see the Ray logs); rerun with --retry-failed to try again"
            )
            write_lost(out, [r.to_row() for r in missing], msg, mid)
            log(f"[label] {len(missing)} recordings failed every attempt: error rows written")
            report["failed"] += len(missing)
            report["crashed"] = len(missing)
    summary = summarize(out)
    counts = recording_counts(out, quarantine=False)
    report["duplicate_recordings"] = sum(1 for c in counts.values() if c > 1)  # 0 unless resume=False reruns
    wall = time.perf_counter() - t0
    report.update(
        wall_s=wall,
        audio_hours=report["audio_s"] / 3600,
        audio_s_per_s=report["audio_s"] / wall if wall else 0.0,
        segments_dir=segments_dir(out),
        summary=f"{out}/summary.parquet",
        recordings_in_output=len(set(summary.column("recording_id").to_pylist())),
    )  # rows: per channel
    report["timelines"] = _timelines(out, cfg.timeline_calls, log)
    if cfg.output and "://" not in out:
        Path(out, "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _timelines(out: str, n: int, log) -> list[str]:
    """Timeline pictures of the first ``n`` recordings; a picture that fails costs a log line, not the labels."""
    from pipeline.evaluation.timeline import write_timelines

    try:
        return write_timelines(out, n)
    except Exception as e:  # noqa: BLE001 - the labels are written; the pictures are a convenience
        log(f"[label] timeline pictures not written: {type(e).__name__}: {e}")
        return []


def config_dict(cfg: LabelJobConfig) -> dict:
    return asdict(cfg)
