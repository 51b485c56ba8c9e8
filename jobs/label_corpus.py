"""Label emotions in a corpus of recordings: folders, globs, audio files or manifests → Parquet.

    ray job submit --working-dir . -- python jobs/label_corpus.py /data/calls --bundle /models/emoq --output /out
    python jobs/label_corpus.py calls.csv --bundle runs/demo/bundle --output out/   # embedded local Ray

Reruns on the same ``--output`` resume: recordings already written are skipped. The console shows progress and a
final table; Ray's, vLLM's and transformers' logs go to ``<output>/logs/label.log`` (``--verbose``: all on the
console, as the libraries print them).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.cli import exits_on_error  # noqa: E402

from pipeline.labeling.job import LabelJobConfig, StageResources, run  # noqa: E402
from pipeline.labeling.prepare import PrepareConfig  # noqa: E402
from pipeline.labeling.segment import VADConfig  # noqa: E402


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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="folders, globs, audio files or manifests (.csv/.jsonl/.parquet)")
    ap.add_argument("--bundle", required=True, help="trained EmoQ bundle directory")
    ap.add_argument("--output", required=True, help="output directory (local path or pyarrow URI)")
    ap.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else embedded local Ray)")
    ap.add_argument("--batch-recordings", type=int, default=8)
    ap.add_argument("--encode-actors", type=int, default=1)
    ap.add_argument("--encode-cpus", type=float, default=1.0)
    ap.add_argument("--encode-gpus", type=float, default=0.0)
    ap.add_argument("--label-actors", type=int, default=1)
    ap.add_argument("--label-cpus", type=float, default=1.0)
    ap.add_argument("--label-gpus", type=float, default=0.0)
    ap.add_argument("--encode-resources", type=json.loads, default=None, metavar="JSON",
                    help='custom Ray resources per encode actor, e.g. \'{"encoder_node": 1}\' (node placement)')
    ap.add_argument("--label-resources", type=json.loads, default=None, metavar="JSON",
                    help="custom Ray resources per label actor")
    ap.add_argument("--fuse-model-stages", action="store_true",
                    help="encoder and vLLM in one actor pool with the --label-* resources (one device holds both "
                         "models: a single GPU, or a CPU-only machine)")
    ap.add_argument("--batch-overhead-s", type=float, default=None,
                    help="encoder batching: a call's fixed cost in seconds of audio (default 1 on CPU, 150 on GPU)")
    ap.add_argument("--max-held-seconds", type=float, default=600.0,
                    help="speech whose encoder states the encode stage holds at once for per-speaker "
                         "normalisation; a longer recording is encoded in two passes")
    ap.add_argument("--device", default=None, help="model device for the encode stage (default: bundle config)")
    ap.add_argument("--max-duration", type=float, default=4 * 3600, help="refuse recordings longer than this (s)")
    ap.add_argument("--max-channels", type=int, default=4)
    ap.add_argument("--min-speech", type=float, default=0.3)
    ap.add_argument("--max-segment", type=float, default=12.0)
    ap.add_argument("--min-gap", type=float, default=0.35)
    ap.add_argument("--vllm-mode", choices=("tokens", "choice"), default="tokens")
    ap.add_argument("--asr-model", default=None,
                    help="local Whisper checkpoint to transcribe segments for bundles trained with transcripts")
    ap.add_argument("--asr-separate", action="store_true",
                    help="run ASR as its own stage even when the bundle's encoder is the ASR model (default: decode "
                         "from the emotion encoder's states, one encoder pass)")
    ap.add_argument("--asr-cpus", type=float, default=1.0)
    ap.add_argument("--asr-gpus", type=float, default=0.0)
    ap.add_argument("--merged", action="store_true", help="serve the bundle's merged LLM instead of base + LoRA")
    ap.add_argument("--engine", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra vllm.LLM arguments, e.g. tensor_parallel_size=2 gpu_memory_utilization=0.9")
    ap.add_argument("--object-store-mb", type=int, default=1024)
    ap.add_argument("--no-resume", action="store_true", help="label everything again (duplicates rows)")
    ap.add_argument("--retry-failed", action="store_true",
                    help="on resume, label again the recordings that got an error row in earlier runs")
    ap.add_argument("--max-attempts", type=int, default=3,
                    help="tries per batch before its recordings are retried one by one, then given an error row")
    ap.add_argument("--verbose", action="store_true",
                    help="print Ray's, Ray Data's, vLLM's and the workers' logs on the console (default: "
                         "<output>/logs/label.log)")
    return ap.parse_args(argv)


def config_from_args(a: argparse.Namespace) -> LabelJobConfig:
    vad = VADConfig(min_speech_s=a.min_speech, max_segment_s=a.max_segment, min_gap_s=a.min_gap)
    engine = {"enforce_eager": True, "max_model_len": 1024, "max_num_seqs": 256, **_engine_kv(a.engine)}
    return LabelJobConfig(
        inputs=list(a.inputs), output=a.output, bundle=a.bundle,
        prepare=PrepareConfig(max_duration_s=a.max_duration, max_channels=a.max_channels, vad=vad),
        batch_recordings=a.batch_recordings, fuse_model_stages=a.fuse_model_stages,
        batch_overhead_s=a.batch_overhead_s, max_held_seconds=a.max_held_seconds,
        encode=StageResources(a.encode_actors, a.encode_cpus, a.encode_gpus, a.encode_resources),
        label=StageResources(a.label_actors, a.label_cpus, a.label_gpus, a.label_resources),
        device=a.device, vllm_mode=a.vllm_mode, asr_model=a.asr_model, asr_shared=not a.asr_separate,
        asr=StageResources(1, a.asr_cpus, a.asr_gpus),
        use_merged=True if a.merged else None, engine=engine,
        object_store_limit_mb=a.object_store_mb, resume=not a.no_resume, retry_failed=a.retry_failed,
        max_attempts=a.max_attempts)


def print_report(report: dict, log_path: str | Path | None = None) -> None:
    """The final table, then the first recordings of the summary (dominant label, confidence, error)."""
    import pyarrow.parquet as pq

    from pipeline.console import final_table

    print("\n" + final_table(report, log_path=log_path))
    summary = pq.read_table(report["summary"]).to_pandas()
    if len(summary):
        cols = ["recording_id", "duration_s", "num_segments", "dominant_label", "mean_confidence", "error"]
        more = f" (first 20 of {len(summary)})" if len(summary) > 20 else ""
        print(f"\nRecordings{more}:")
        with __import__("pandas").option_context("display.width", 160, "display.max_colwidth", 60):
            print(summary[cols].head(20).to_string(index=False))


@exits_on_error
def main(argv: list[str] | None = None) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    a = parse_args(argv)
    from pipeline.console import default_log_path, line_buffered, note_ray_session, quiet_logs
    from pipeline.ray_env import init_ray

    line_buffered()
    cfg = config_from_args(a)  # a bad flag fails here, before Ray starts
    with quiet_logs(default_log_path(a.output, "label"), a.verbose) as log_path:
        init_ray(a.address, log_to_driver=a.verbose)
        note_ray_session()
        report = run(cfg, progress=not a.verbose)  # an unusable input as a whole: exits_on_error prints one line
        print_report(report, log_path)
    return report


if __name__ == "__main__":
    main()
