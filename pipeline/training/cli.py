"""The feature-extraction and training jobs' command lines and what they run: flags (TrainSettings' from the
dataclass, so each default lives there once), quiet logs with a progress bar per phase, then the library call.
``jobs/extract_features.py`` and ``jobs/train.py`` are the entry points that call these."""

from __future__ import annotations

import argparse
import json
import os
import time

from pipeline.cli import add_dataclass_args, dataclass_kwargs


def _common(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--config", default=None, help="EmoQ YAML (default: emoq_model/configs/demo.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")


def _ray(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    ap.add_argument("--num-cpus", type=int, default=None, help="logical CPUs of a local Ray (default >= 4)")


def _abs(path: str | None) -> str | None:
    return path if path is None or "://" in path else os.path.abspath(path)


# ------------------------------------------------------------------------------------------ feature extraction


def extract_parser(description: str | None = None) -> argparse.ArgumentParser:
    from pipeline.labeling.job import ASR_DTYPES

    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "manifest",
        help="labelled manifest (CSV / JSONL / Parquet: utt_id, path, label, transcript, speaker, split) or tar "
        "shards (a .tar, a folder or glob of them; labels from each sample's key.json); local or a URI (s3://...)",
    )
    ap.add_argument("out_dir", help="feature cache directory (local path or pyarrow URI)")
    _common(ap)
    ap.add_argument("--splits", default=None, help="comma list of splits to extract (default: all)")
    ap.add_argument("--actors", type=int, default=None, help="encoder actors (default: 1 on CPU, #GPUs on GPU)")
    ap.add_argument("--cpus-per-actor", type=float, default=None, help="default 0.5 (CPU) / 1 (GPU actors)")
    ap.add_argument("--gpus-per-actor", type=float, default=0.0, help="> 0: encoder actors on GPUs")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per CPU actor")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    ap.add_argument("--limit", type=int, default=None, help="only the first N rows (smoke tests)")
    ap.add_argument(
        "--asr-model",
        default=None,
        metavar="WHISPER_DIR",
        help="transcripts from this ASR instead of the manifest's (train as served; meta.json gets the WER)",
    )
    ap.add_argument(
        "--asr-dtype",
        default="float32",
        choices=ASR_DTYPES,
        help="the ASR decoder's dtype, label_corpus.py --asr-dtype's choices (float32 here: on the demo, bfloat16 "
        "training transcripts validated lower, 0.664 / 0.608 vs 0.689 / 0.659 over two seeds; bfloat16 decodes "
        "~1.5x faster on CPUs with avx512_bf16)",
    )
    ap.add_argument(
        "--copy-transcripts",
        default="asr",
        choices=("asr", "recorded"),
        help="with --asr-model and --speed-perturb, a speed-perturbed copy's transcript: what the ASR hears in it "
        "(default) or its recorded turn's (one decode per turn: faster, measured 0.02-0.03 UA worse on the demo)",
    )
    ap.add_argument(
        "--speed-perturb",
        default=None,
        metavar="F,F",
        help="augment the train split with speed-perturbed copies at these factors (e.g. 0.9,1.1; each copy is its "
        "own speaker; other splits stay real audio)",
    )
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--verbose", action="store_true", help="library logs on the console (default: OUT_DIR/logs)")
    _ray(ap)
    return ap


def extract_from_args(a: argparse.Namespace) -> dict:
    """Run the extraction the flags describe (a bar of the turns encoded, logs to ``OUT_DIR/logs/extract.log``)
    and print the cache's summary; returns ``meta.json``'s content."""
    from emoq_model.config import demo_config_path, load_config
    from pipeline.console import default_log_path, line_buffered, note_ray_session, quiet_logs
    from pipeline.ray_env import init_ray
    from pipeline.training.extract import extract_features

    line_buffered()
    cfg = load_config(a.config or demo_config_path(), a.set, check_assets=False)
    with quiet_logs(default_log_path(a.out_dir, "extract"), a.verbose):
        init_ray(a.address, a.num_cpus, log_to_driver=a.verbose)
        note_ray_session()
        meta = extract_features(
            a.manifest,
            a.out_dir,
            cfg,
            splits=a.splits.split(",") if a.splits else None,
            actors=a.actors,
            cpus_per_actor=a.cpus_per_actor,
            gpus_per_actor=a.gpus_per_actor,
            batch_size=a.batch_size,
            dtype=a.dtype,
            threads=a.threads,
            overwrite=a.overwrite,
            limit=a.limit,
            asr_model=a.asr_model,
            progress=not a.verbose,
            speed_perturb=tuple(float(f) for f in a.speed_perturb.split(",")) if a.speed_perturb else (),
            asr_dtype=a.asr_dtype,
            copy_transcripts=a.copy_transcripts,
        )
    print(json.dumps({k: v for k, v in meta.items() if k not in ("encoder", "errors")}, indent=1))
    if meta["n_errors"]:
        print(f"{meta['n_errors']} error rows, e.g. {meta['errors'][:3]}")
    return meta


# ------------------------------------------------------------------------------------------------ training


def train_parser(description: str | None = None) -> argparse.ArgumentParser:
    from pipeline.training.settings import TrainSettings

    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("features", help="feature cache directory (jobs/extract_features.py)")
    _common(ap)
    ap.set_defaults(
        settings=add_dataclass_args(
            ap,
            TrainSettings,
            skip=("features", "fail_once", "verbose"),
            storage_path="runs/ray_train",
            flags={
                "bundle_out": "--out",
                "num_workers": "--workers",
                "use_gpu": "--gpu",
                "threads_per_worker": "--threads",
                "num_to_keep": "--keep",
                "merge_llm": "--no-merge",
            },
        )
    )
    ap.add_argument("--verbose", action="store_true", help="library logs and the workers' own lines on the console")
    ap.add_argument("--evaluate", default=None, metavar="SPLIT", help="evaluate the bundle on this cache split")
    _ray(ap)
    return ap


def train_settings(a: argparse.Namespace):
    """The flags' ``TrainSettings``, every local path made absolute: the Train workers do not run in the
    driver's working directory."""
    from pipeline.training import TrainSettings

    kw = dataclass_kwargs(a, a.settings)
    kw.update(
        features=_abs(a.features),
        storage_path=_abs(kw["storage_path"]),
        bundle_out=_abs(kw["bundle_out"]),
        init_bundle=_abs(kw["init_bundle"]),
        name=kw["name"] or f"emoq-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
        verbose=a.verbose,
    )
    return TrainSettings(**kw)


def train_from_args(a: argparse.Namespace) -> dict:
    """Run the training the flags describe: a bar over all epochs with each epoch's validation line (followed
    from the run's ``metrics.jsonl``), logs to ``<run dir>/logs/train.log``; then the optional evaluation.
    Returns the training summary."""
    from emoq_model.config import demo_config_path, load_config
    from pipeline.console import default_log_path, follow_train_metrics, line_buffered, note_ray_session, quiet_logs
    from pipeline.ray_env import init_ray
    from pipeline.training import run_training
    from pipeline.training.settings import METRICS_FILE

    line_buffered()
    cfg = load_config(a.config or demo_config_path(), a.set)
    s = train_settings(a)
    epochs = sum(getattr(cfg.train, f"stage{k}").epochs for k in s.stages)
    follow = "://" not in s.run_dir and not a.verbose  # a run on object storage prints its summary at the end
    with quiet_logs(default_log_path(s.run_dir, "train"), a.verbose) as log_path:
        init_ray(a.address, a.num_cpus, log_to_driver=a.verbose)
        note_ray_session()
        with follow_train_metrics(f"{s.run_dir}/{METRICS_FILE}", enabled=follow, epochs=epochs):
            summary = run_training(cfg, s)
    summary["log_file"] = None if log_path is None else str(log_path)
    print(
        f"run {s.name}: bundle {summary['bundle']} ({summary['seconds']:.0f} s); best per stage "
        f"{json.dumps(summary['best'])}; metrics {summary['metrics_file']}"
    )
    if a.evaluate:
        from pipeline.evaluation.clips import evaluate

        out = f"{os.path.abspath(summary['bundle']).rstrip('/')}_eval_{a.evaluate}"  # next to the bundle
        head = "aux" if s.stages == (1,) else "llm"  # a stage-1-only bundle has an untrained LLM side
        report = evaluate(summary["bundle"], out, features=s.features, split=a.evaluate, head=head)
        summary["evaluation"] = {k: report[k] for k in ("wa", "ua", "weighted_f1", "n")}
    return summary
