"""The embedded demo, end to end on this machine (local Ray, offline assets), evaluated as it would be deployed:

1. build the offline assets (real Whisper tiny.en converted from CTranslate2, a small Qwen2 LLM),
2. synthesize labelled training calls (stereo 8 kHz; every channel its own skewed emotion mix; other services'
   wording), validation calls (unseen speakers) and the evaluation archive (unseen speakers again, the call-centre
   scripts: calm, escalating, upset, sad, pleased, grieving),
3. extract frozen-encoder features of every labelled turn with Ray Data,
4. train EmoQ in two stages with Ray Train (per-channel statistics exactly as labeling computes them; best epoch
   and the calibration temperature from the validation calls),
5. label the evaluation archive with Ray Data + vLLM,
6. score the labels against the archive's per-turn truth (``jobs/evaluate_archive.py``) and print it.

Every step is cached or resumable: a second run reuses the calls, features and bundle and skips labelled
recordings. ``--fresh`` retrains. Outputs go under ``--workdir`` (default ``runs/demo``). Ray's, vLLM's and the
workers' logs go to ``<workdir>/logs/demo.log`` (labeling: ``<workdir>/labels/logs/label.log``); ``--verbose``
prints them on the console instead.

    python jobs/demo.py [--workdir runs/demo] [--fresh] [--verbose]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.cli import exits_on_error  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="runs/demo")
    ap.add_argument("--train-calls", type=int, default=36, help="labelled training calls")
    ap.add_argument("--train-customers", type=int, default=13, help="distinct customers over the training calls")
    ap.add_argument("--val-calls", type=int, default=8, help="labelled validation calls (unseen speakers)")
    ap.add_argument("--calls", type=int, default=12, help="calls in the evaluation archive (unseen speakers)")
    ap.add_argument("--call-minutes", type=float, default=2.0)
    ap.add_argument("--stage1-epochs", type=int, default=10, help="override the demo config (20)")
    ap.add_argument("--stage2-epochs", type=int, default=2, help="override the demo config (5)")
    ap.add_argument("--workers", type=int, default=2, help="Ray Train workers")
    ap.add_argument(
        "--modality",
        default="fused",
        choices=sorted(MODALITIES),
        help="fused (default): speech + transcripts (ASR at labeling); speech: speech only; text: "
        "transcripts only (ablations)",
    )
    ap.add_argument(
        "--reference-transcripts",
        action="store_true",
        help="train on the archives' reference transcripts instead of ASR transcripts of the training "
        "audio (labeling always gets ASR transcripts)",
    )
    ap.add_argument("--fresh", action="store_true", help="retrain and relabel from scratch")
    ap.add_argument(
        "--verbose",
        action="store_true",
        help="Ray's, Ray Data's, Ray Train's, vLLM's and the workers' logs on the console (default: "
        "<workdir>/logs/demo.log)",
    )
    return ap.parse_args(argv)


# The demo's EmoQ-Former: BLIP-2-style, initialised from a real pretrained sentence encoder (all-MiniLM-L6-v2,
# whose sizes it takes); with text, that encoder also embeds the transcript. All modalities share the Former's
# shape and initialisation, so the ablations differ only in what the queries see.
FORMER_TEXT = [
    "former.text_encoder=${assets}/all-minilm-l6-v2",
    "former.init_from_text_encoder=true",
    "former.hidden=384",
    "former.num_heads=12",
    "former.intermediate=1536",
]
# The encoder appends 0.5 s of silence to each turn so that Whisper's decoder can read the same states (shared ASR)
TAIL_S = 0.5
ENCODER = [f"encoder.whisper_tail_s={TAIL_S}"]
MODALITIES = {
    "fused": FORMER_TEXT
    + ["former.text_fusion=concat", "train.stage1.text_dropout=0.3", "train.stage2.text_dropout=0.3"],
    "speech": FORMER_TEXT + ["former.text_fusion=none"],
    "text": FORMER_TEXT + ["former.text_fusion=concat", "former.use_speech=false"],
}


def step(msg: str) -> None:
    print(f"\n=== {msg} ===", flush=True)


def demo_archives(a: argparse.Namespace) -> dict[str, Path]:
    """The three call archives (cached): training, validation and evaluation, with disjoint voices."""
    from pipeline.demo.calls import archive_voices, cached_call_archive

    common = dict(minutes=a.call_minutes, encoding="ulaw", workers=2, cues=True)
    train = cached_call_archive(
        "demo_train_calls",
        n_calls=a.train_calls,
        seed=101,
        scripts="mixed",
        lines="training",
        n_customers=a.train_customers,
        id_prefix="train",
        **common,
    )
    seen = archive_voices(train)
    val = cached_call_archive(
        "demo_val_calls",
        n_calls=a.val_calls,
        seed=202,
        scripts="mixed",
        lines="service",
        n_customers=max(1, a.val_calls // 2),
        id_prefix="val",
        exclude_voices=seen,
        **common,
    )
    seen |= archive_voices(val)
    archive = cached_call_archive(
        "demo_eval_calls", n_calls=a.calls, seed=0, id_prefix="call", exclude_voices=seen, **common
    )
    return {"train": train, "val": val, "archive": archive}


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _same_manifest(meta: dict, manifest: Path, meta_path: Path) -> bool:
    """The feature cache was extracted (after its last change) from a manifest with this very content."""
    try:
        src = Path(meta["manifest"])
        return src.read_bytes() == manifest.read_bytes() and meta_path.stat().st_mtime > src.stat().st_mtime
    except (KeyError, OSError):
        return False


def _read(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


@exits_on_error
def main(argv=None) -> dict:
    a = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from pipeline.console import line_buffered, quiet_logs

    line_buffered()
    t0 = time.perf_counter()
    work = Path(a.workdir).resolve()
    if a.fresh:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    with quiet_logs(work / "logs" / "demo.log", a.verbose) as log_path:
        return _demo(a, work, t0, log_path)


def _demo(a: argparse.Namespace, work: Path, t0: float, log_path: Path | None) -> dict:
    import pandas as pd

    from emoq_model.assets.text_encoders import build_minilm
    from emoq_model.assets.tiny_llm import build_tiny_llm
    from emoq_model.assets.whisper_ct2 import build_whisper_tiny_en
    from pipeline.console import final_table, follow_train_metrics, note_ray_session
    from pipeline.evaluation.archive import format_archive_report
    from pipeline.ray_env import init_ray
    from pipeline.recipes import call_archive_manifest, write_manifest

    step("1/6 offline assets")
    print("encoder:", build_whisper_tiny_en())
    print("llm:    ", build_tiny_llm())
    print("text:   ", build_minilm())

    step("2/6 labelled training / validation calls and the evaluation archive")
    arch = demo_archives(a)
    rows = pd.concat(
        [
            call_archive_manifest(arch["train"].parent / "segments.csv", "train"),
            call_archive_manifest(arch["val"].parent / "segments.csv", "val"),
        ]
    )
    manifest = work / "train_manifest.csv"
    if not manifest.exists() or not pd.read_csv(manifest).equals(pd.read_csv(io.StringIO(rows.to_csv(index=False)))):
        write_manifest(rows, manifest, add_recording_id=False)  # rewritten only when it changes: features depend on it
    for k, v in arch.items():
        print(f"{k:8s}", v)

    init_ray(log_to_driver=a.verbose)  # quiet: the workers' output (Ray Train's too) stays in Ray's session logs
    note_ray_session()
    from jobs import evaluate_archive, extract_features, label_corpus, train

    features, bundle = work / "features", work / "bundle"
    step("3/6 feature extraction of every labelled turn (Ray Data, frozen Whisper encoder)")
    meta = _read(features / "meta.json")
    transcripts = "manifest" if a.reference_transcripts else f"asr:{build_whisper_tiny_en()}"
    if (
        _same_manifest(meta, manifest, features / "meta.json")
        and meta.get("transcripts") == transcripts
        and meta["encoder"].get("whisper_tail_s") == TAIL_S
    ):
        print("cached:", features)  # extracted from this very manifest, encoder setting and transcript source
    else:
        asr = [] if a.reference_transcripts else ["--asr-model", str(build_whisper_tiny_en())]
        extract_features.main(
            [str(manifest), str(features), "--overwrite", *asr, *[x for o in ENCODER for x in ("--set", o)]]
        )

    step("4/6 two-stage training (Ray Train)")
    overrides = (
        ENCODER
        + MODALITIES[a.modality]
        + [f"train.stage1.epochs={a.stage1_epochs}", f"train.stage2.epochs={a.stage2_epochs}"]
    )
    stamp = {"features_meta_sha256": _sha(features / "meta.json"), "overrides": overrides}
    if _read(work / "bundle.json") != stamp or not (bundle / "training.json").is_file():  # trained like this?
        for stale in ("labels", "eval"):  # labels of another bundle must not be resumed
            shutil.rmtree(work / stale, ignore_errors=True)
        import hashlib
        import json

        run = "demo-" + hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:10]  # an interrupted run resumes
        # the workers print each epoch; when they are off the console, the driver prints the metrics file's lines
        with follow_train_metrics(work / "ray_train" / run / "metrics.jsonl", enabled=not a.verbose):
            train.main(
                [
                    str(features),
                    "--out",
                    str(bundle),
                    "--name",
                    run,
                    "--storage-path",
                    str(work / "ray_train"),
                    "--workers",
                    str(a.workers),
                    *[x for o in overrides for x in ("--set", o)],
                ]
            )
        (work / "bundle.json").write_text(json.dumps(stamp))
    else:
        print("cached:", bundle)

    step("5/6 labeling the evaluation archive (Ray Data + vLLM)")
    from pipeline.labeling.guards import output_model_ids
    from pipeline.labeling.job import model_id

    if output_model_ids(str(work / "labels")) - {model_id(str(bundle))}:  # labelled by an older bundle (or id format)
        shutil.rmtree(work / "labels", ignore_errors=True)
    asr = ["--asr-model", str(build_whisper_tiny_en())] if a.modality != "speech" else []  # transcripts from ASR
    label_report = label_corpus.main(
        [
            str(arch["archive"]),
            "--bundle",
            str(bundle),
            "--output",
            str(work / "labels"),
            "--encode-cpus",
            "0.5",
            "--label-cpus",
            "0.5",
            *asr,
            *(["--verbose"] if a.verbose else []),
        ]
    )

    step("6/6 archive evaluation against the per-turn truth")
    report = evaluate_archive.main(
        [str(work / "labels"), str(arch["archive"].parent / "segments.csv"), "--out", str(work / "eval")]
    )
    seg = report["segment"]
    step("summary")
    label_log = None if a.verbose else work / "labels" / "logs" / "label.log"
    print(final_table(label_report, log_path=label_log))
    print(f"Archive evaluation: {format_archive_report(report).splitlines()[0]}")
    if log_path is not None:
        print(f"Demo log (Ray, Ray Train, extraction): {log_path}")
    print(
        f"\nDemo finished in {time.perf_counter() - t0:.0f} s. Evaluation archive ({a.calls} calls, unseen speakers): "
        f"segment UA {seg['ua']:.3f}, accuracy {seg['accuracy']:.3f} (always '{report['majority']['label']}': "
        f"{report['majority']['accuracy']:.3f}). Labels: {work / 'labels'}, report: {report['files']['json']}"
    )
    return {"archive": report, "label": label_report}


if __name__ == "__main__":
    main()
