"""The label job's command line: flags derived from the config dataclasses (LabelJobConfig, PrepareConfig,
VADConfig, StageResources), so each default and help text lives once, in the dataclass; ``jobs/label_corpus.py``
is the entry point that calls these."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.cli import add_dataclass_args, dataclass_kwargs
from pipeline.labeling.job import LabelJobConfig, StageResources
from pipeline.labeling.prepare import PrepareConfig
from pipeline.labeling.segment import VADConfig


def _engine_kv(items: list[str]) -> dict:
    out = {}
    for it in items:
        k, _, v = it.partition("=")
        if not k or not _:
            raise SystemExit(f"--engine expects key=value, got {it!r}")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


STAGES = ("encode", "label", "asr")  # actor pools: --<stage>-actors/-cpus/-gpus/-resources (StageResources)


def parse_args(argv: list[str] | None = None, description: str | None = None) -> argparse.Namespace:
    """Flags come from the config dataclasses (LabelJobConfig, PrepareConfig, VADConfig, StageResources): type,
    default and help live there once."""
    ap = argparse.ArgumentParser(
        description=description or __doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("inputs", nargs="+", help="folders, globs, audio files or manifests (.csv/.jsonl/.parquet)")
    ap.add_argument("--bundle", required=True, help="trained EmoQ bundle directory")
    ap.add_argument("--output", required=True, help="output directory (local path or pyarrow URI)")
    ap.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else embedded local Ray)")
    job = add_dataclass_args(
        ap,
        LabelJobConfig,
        skip=(
            "inputs",
            "output",
            "bundle",
            "prepare",
            "encode",
            "label",
            "asr",
            "engine",
            "use_merged",
            "model_overrides",
            "resume",
        ),
        flags={
            "asr_shared": "--asr-separate",
            "object_store_limit_mb": "--object-store-mb",
            "timeline_calls": "--timelines",
            "isolate_failures": "--no-isolate-failures",
        },
    )
    prep = add_dataclass_args(
        ap,
        PrepareConfig,
        only=("max_duration_s", "max_channels", "allow_truncated"),
        flags={"max_duration_s": "--max-duration"},
        dest_prefix="prepare_",
    )
    vad = add_dataclass_args(
        ap,
        VADConfig,
        only=("min_speech_s", "max_segment_s", "min_gap_s"),
        dest_prefix="vad_",
        flags={"min_speech_s": "--min-speech", "max_segment_s": "--max-segment", "min_gap_s": "--min-gap"},
    )
    default = StageResources()
    for st in STAGES:
        ap.add_argument(f"--{st}-actors", type=int, default=default.actors, help=f"{st} actor pool size")
        ap.add_argument(f"--{st}-cpus", type=float, default=default.num_cpus, help=f"CPUs per {st} actor")
        ap.add_argument(f"--{st}-gpus", type=float, default=default.num_gpus, help=f"GPUs per {st} actor")
        ap.add_argument(
            f"--{st}-resources",
            type=json.loads,
            default=None,
            metavar="JSON",
            help=f"custom Ray resources per {st} actor, e.g. '{{\"{st}_node\": 1}}' (node placement)",
        )
    ap.add_argument("--merged", action="store_true", help="serve the bundle's merged LLM instead of base + LoRA")
    ap.add_argument(
        "--engine",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="extra vllm.LLM arguments, e.g. tensor_parallel_size=2 dtype=bfloat16",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="model_overrides",
        help="deployment precision of the bundle's models: encoder.dtype=float32|bfloat16|bfloat16-mixed|int8, "
        "former.dtype=bfloat16 (repeatable; a bundle whose encoder.dtype is auto gets bfloat16-mixed where the "
        "device computes bfloat16 natively and no shared-encoder ASR reads the encoder, else float32)",
    )
    ap.add_argument("--no-resume", action="store_true", help="label everything again (duplicates rows)")
    ap.add_argument(
        "--verbose",
        action="store_true",
        help="print Ray's, Ray Data's, vLLM's and the workers' logs on the console (default: <output>/logs/label.log)",
    )
    ap.set_defaults(dests={"job": job, "prepare": prep, "vad": vad})
    return ap.parse_args(argv)


def config_from_args(a: argparse.Namespace) -> LabelJobConfig:
    d = a.dests
    engine = {**LabelJobConfig.__dataclass_fields__["engine"].default_factory(), **_engine_kv(a.engine)}
    resources = {
        st: StageResources(
            getattr(a, f"{st}_actors"),
            getattr(a, f"{st}_cpus"),
            getattr(a, f"{st}_gpus"),
            getattr(a, f"{st}_resources"),
        )
        for st in STAGES
    }
    prepare = PrepareConfig(**dataclass_kwargs(a, d["prepare"]), vad=VADConfig(**dataclass_kwargs(a, d["vad"])))
    return LabelJobConfig(
        inputs=list(a.inputs),
        output=a.output,
        bundle=a.bundle,
        prepare=prepare,
        engine=engine,
        use_merged=True if a.merged else None,
        model_overrides=list(a.model_overrides),
        resume=not a.no_resume,
        **resources,
        **dataclass_kwargs(a, d["job"]),
    )


def print_report(report: dict, log_path: str | Path | None = None) -> None:
    """The final table, then the first recordings' channels of the summary (dominant label, confidence, error)."""
    import pyarrow.parquet as pq

    from pipeline.console import final_table

    print("\n" + final_table(report, log_path=log_path))
    summary = pq.read_table(report["summary"]).to_pandas()
    if len(summary):
        more = f" (first 20 of {len(summary)})" if len(summary) > 20 else ""
        print(f"\nRecordings and channels{more}:")
        print(summary_table(summary.head(20)))


def summary_table(summary) -> str:
    """Rows of ``summary.parquet`` (one per recording and channel) as an aligned plain-text table."""
    import pandas as pd

    def cell(v, fmt: str = "{}") -> str:
        return "" if v is None or (not isinstance(v, str) and pd.isna(v)) else fmt.format(v)

    head = ("recording", "channel", "duration", "segments", "dominant", "confidence", "error")
    rows = [
        (
            cell(r.get("recording_id")),
            cell(r.get("channel")) or "mix",
            cell(r.get("duration_s"), "{:.1f} s"),
            cell(r.get("num_segments"), "{:.0f}"),
            cell(r.get("dominant_label")),
            cell(r.get("mean_confidence"), "{:.2f}"),
            cell(r.get("error"))[:60],
        )
        for r in summary.to_dict("records")
    ]
    w = [max(len(x) for x in col) for col in zip(head, *rows)]
    return "\n".join("  ".join(x.ljust(n) for x, n in zip(row, w)).rstrip() for row in [head, *rows])
