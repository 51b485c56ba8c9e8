"""The bulk labeling job: sources → prepare → encode + EmoQ-Former → vLLM → Parquet, streaming on Ray Data.

Recordings stay whole through every stage (one row per recording), so each output part file holds complete
recordings and a rerun on the same output skips every recording already written (resume).
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pipeline.prepare import PrepareConfig, prepare_batch
from pipeline.sink import clean_temporary, recording_counts, segments_dir, summarize, write_parts
from pipeline.sources import discover


@dataclass
class StageResources:
    """Actor pool of one model stage: ``actors`` instances, each with ``num_cpus`` / ``num_gpus``."""

    actors: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0


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
    max_batch_segments: int = 32  # encoder batch (segments); padded samples bounded by max_batch_seconds
    max_batch_seconds: float = 240.0
    vllm_mode: str = "tokens"  # "tokens" (allowed label tokens + their logprobs) | "choice" (structured outputs)
    use_merged: bool | None = None  # serve the bundle's merged LLM instead of base + LoRA
    asr_model: str | None = None  # local Whisper checkpoint: transcribe segments without transcripts (text bundles)
    asr: StageResources = field(default_factory=StageResources)
    engine: dict = field(default_factory=lambda: {"enforce_eager": True, "max_model_len": 1024,
                                                  "max_num_seqs": 256})
    object_store_limit_mb: int | None = 1024  # cap on the streaming executor's object-store use
    resume: bool = True


def model_id(bundle: str) -> str:
    meta = Path(bundle) / "bundle.json"
    digest = hashlib.sha1(meta.read_bytes() + (Path(bundle) / "former.safetensors").read_bytes()[:1 << 20]).hexdigest()
    return f"{Path(bundle).resolve().name}@{digest[:10]}"


def encoder_sample_rate(bundle: str) -> int:
    from transformers import AutoFeatureExtractor

    from emoq_model.bundle import read_meta

    return int(AutoFeatureExtractor.from_pretrained(read_meta(bundle)["encoder_path"]).sampling_rate)


def run(cfg: LabelJobConfig, log=print) -> dict:
    """Label everything in ``cfg.inputs`` into ``cfg.output``; returns the run report."""
    import ray

    from emoq_model.bundle import read_meta
    from pipeline.labeler import LabelWithVLLM
    from pipeline.ray_env import limit_object_store
    from pipeline.asr import Transcribe, bundle_uses_text
    from pipeline.stages import EncodePrompts

    t0 = time.perf_counter()
    out = cfg.output if "://" in cfg.output else str(Path(cfg.output).expanduser().resolve())
    bundle = str(Path(cfg.bundle).expanduser().resolve())
    meta = read_meta(bundle)
    labels, mid = list(meta["labels"]), model_id(bundle)
    cfg.prepare.sample_rate = encoder_sample_rate(bundle)

    records = discover(cfg.inputs)
    clean_temporary(out)  # leftovers of an interrupted run (one job per output directory)
    done = set(recording_counts(out)) if cfg.resume else set()
    todo = [r for r in records if r.recording_id not in done]
    log(f"[label] {len(records)} recordings found, {len(records) - len(todo)} already done, {len(todo)} to label")
    report = {"recordings_found": len(records), "already_done": len(records) - len(todo), "labeled": 0,
              "failed": 0, "segments": 0, "audio_s": 0.0, "speech_s": 0.0, "output": out, "model_id": mid}
    if todo:
        limit_object_store((cfg.object_store_limit_mb or 0) * 1024 * 1024)
        n_blocks = max(1, math.ceil(len(todo) / cfg.batch_recordings))
        ds = ray.data.from_items([r.to_row() for r in todo], override_num_blocks=n_blocks)
        ds = ds.map_batches(prepare_batch, fn_kwargs={"cfg": cfg.prepare}, batch_size=cfg.batch_recordings,
                            batch_format="numpy", num_cpus=cfg.prepare_num_cpus)
        if cfg.asr_model and bundle_uses_text(bundle):
            ds = ds.map_batches(
                Transcribe, fn_constructor_kwargs={"model_path": cfg.asr_model, "sample_rate": cfg.prepare.sample_rate,
                                                   "device": cfg.device},
                batch_size=cfg.batch_recordings, batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=cfg.asr.actors),
                num_cpus=cfg.asr.num_cpus, num_gpus=cfg.asr.num_gpus)
        elif bundle_uses_text(bundle):
            log("[label] the bundle reads transcripts; segments without one (no manifest transcript, no --asr-model) "
                "are labelled from speech alone")
        ds = ds.map_batches(
            EncodePrompts, fn_constructor_kwargs={"bundle_dir": bundle, "device": cfg.device,
                                                  "max_batch_segments": cfg.max_batch_segments,
                                                  "max_batch_seconds": cfg.max_batch_seconds},
            batch_size=cfg.batch_recordings, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=cfg.encode.actors),
            num_cpus=cfg.encode.num_cpus, num_gpus=cfg.encode.num_gpus)
        ds = ds.map_batches(
            LabelWithVLLM, fn_constructor_kwargs={"bundle_dir": bundle, "mode": cfg.vllm_mode,
                                                  "use_merged": cfg.use_merged, "engine_overrides": cfg.engine},
            batch_size=cfg.batch_recordings, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=cfg.label.actors),
            num_cpus=cfg.label.num_cpus, num_gpus=cfg.label.num_gpus)
        ds = ds.map_batches(write_parts, fn_kwargs={"out_uri": out, "labels": labels, "model_id": mid},
                            batch_size=cfg.batch_recordings, batch_format="numpy", num_cpus=0.25)
        # the limit the streaming executor runs under (the dataset's own copy of the DataContext)
        report["object_store_limit_bytes"] = ds.context.execution_options.resource_limits.object_store_memory
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for err, nseg, dur, sp in zip(batch["error"], batch["num_segments"], batch["duration_s"],
                                          batch["speech_s"]):
                failed = isinstance(err, str) and nseg == 0
                report["failed" if failed else "labeled"] += 1
                report["segments"] += int(nseg)
                report["audio_s"] += 0.0 if np.isnan(dur) else float(dur)
                report["speech_s"] += float(sp)
    summary = summarize(out)
    counts = recording_counts(out, quarantine=False)
    report["duplicate_recordings"] = sum(1 for c in counts.values() if c > 1)  # 0 unless resume=False reruns
    wall = time.perf_counter() - t0
    report.update(wall_s=wall, audio_hours=report["audio_s"] / 3600,
                  audio_s_per_s=report["audio_s"] / wall if wall else 0.0,
                  segments_dir=segments_dir(out), summary=f"{out}/summary.parquet",
                  recordings_in_output=summary.num_rows)
    if cfg.output and "://" not in out:
        Path(out, "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def config_dict(cfg: LabelJobConfig) -> dict:
    return asdict(cfg)
