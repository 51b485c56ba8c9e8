"""The embedded demo as a library: assets → labelled calls → features → two-stage training → labeling → archive
evaluation, each step cached by its inputs (``jobs/demo.py`` is its CLI).

Why a library module: the benchmarks and tests build the demo's archives the same way (:func:`demo_archives`),
and the CLI stays a thin wrapper whose flags come from :class:`DemoConfig`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

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
# Speaker conditioning beside per-channel subtraction: two leading frames carry the channel's statistics against the
# training speakers' (README "Channel statistics frames"); with speed-perturbed training turns (each copy a voice of
# its own) they raised the archive's segment UA from 0.46-0.53 to 0.55-0.59 over four runs (BENCHMARKS.md §5).
FORMER_STATS = ["former.stats_frames=true"]
MODALITIES = {
    "fused": FORMER_TEXT
    + ["former.text_fusion=concat", "train.stage1.text_dropout=0.3", "train.stage2.text_dropout=0.3"],
    "speech": FORMER_TEXT + ["former.text_fusion=none"],
    "text": FORMER_TEXT + ["former.text_fusion=concat", "former.use_speech=false"],
}


@dataclass
class DemoConfig:
    """What the demo builds and trains (defaults: the documented demo, about 6 GB of disk under the asset cache)."""

    workdir: str = "runs/demo"  # outputs: features, bundle, labels, eval, logs
    train_calls: int = 36  # labelled training calls
    train_customers: int = 13  # distinct customers over the training calls
    val_calls: int = 8  # labelled validation calls (unseen speakers): best epoch and calibration
    # the validation calls' customer scripts (pipeline.demo.calls.ARCS, comma list): "mixed" (each channel a random
    # skewed mix, as the training calls), or call-centre scripts such as "escalate,sad,pleased,upset,calm,grieving"
    val_scripts: str = "mixed"
    calls: int = 12  # calls in the evaluation archive (unseen speakers)
    call_minutes: float = 2.0  # length of each synthetic call
    stage1_epochs: int = 4  # overrides the demo config's train.stage1.epochs (20); 3x the rows with speed_perturb
    stage2_epochs: int = 2  # overrides the demo config's train.stage2.epochs (5)
    workers: int = 2  # Ray Train workers
    modality: str = "fused"  # fused: speech + transcripts (ASR at labeling) | speech | text (the ablations)
    reference_transcripts: bool = False  # train on the reference transcripts, not ASR of the training audio
    speed_perturb: tuple[float, ...] = (0.9, 1.1)  # speed-perturbed copies of the training turns ("" for none)
    dominant: float = 0.0  # share of training/validation channels one emotion holds at 80-100 % (measured: worse)
    overrides: tuple[str, ...] = ()  # model/training config overrides after the demo's own (KEY=VALUE each)
    fresh: bool = False  # retrain and relabel from scratch
    verbose: bool = False  # Ray's, vLLM's and the workers' logs on the console (default: <workdir>/logs/demo.log)

    def __post_init__(self):
        from emoq_model.errors import ConfigError
        from pipeline.demo.calls import _scripts

        if self.modality not in MODALITIES:
            raise ConfigError(f"modality must be one of {sorted(MODALITIES)}, got {self.modality!r}")
        try:
            _scripts(self.val_scripts)  # the generator's own check, before anything is built
        except ValueError as e:
            raise ConfigError(f"val_scripts: {e}") from None


def step(msg: str) -> None:
    print(f"\n=== {msg} ===", flush=True)


def demo_archives(c: DemoConfig | None = None) -> dict[str, Path]:
    """The three call archives (cached): training, validation and evaluation, with disjoint voices."""
    from pipeline.demo.calls import archive_voices, cached_call_archive

    c = c or DemoConfig()
    common = dict(minutes=c.call_minutes, encoding="ulaw", workers=2, cues=True)
    mixes = {"dominant": c.dominant} if c.dominant else {}  # absent at 0: the archives' cache keys stay the same
    train = cached_call_archive(
        "demo_train_calls",
        n_calls=c.train_calls,
        seed=101,
        scripts="mixed",
        lines="training",
        n_customers=c.train_customers,
        id_prefix="train",
        **common,
        **mixes,
    )
    seen = archive_voices(train)
    val = cached_call_archive(
        "demo_val_calls",
        n_calls=c.val_calls,
        seed=202,
        scripts=c.val_scripts,
        lines="service",
        n_customers=max(1, c.val_calls // 2),
        id_prefix="val",
        exclude_voices=seen,
        **common,
        **mixes,
    )
    seen |= archive_voices(val)
    archive = cached_call_archive(
        "demo_eval_calls", n_calls=c.calls, seed=0, id_prefix="call", exclude_voices=seen, **common
    )
    return {"train": train, "val": val, "archive": archive}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _same_manifest(meta: dict, manifest: Path, meta_path: Path) -> bool:
    """The feature cache was extracted (after its last change) from a manifest with this very content."""
    try:
        src = Path(meta["manifest"])
        return src.read_bytes() == manifest.read_bytes() and meta_path.stat().st_mtime > src.stat().st_mtime
    except (KeyError, OSError):
        return False


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def run_demo(c: DemoConfig) -> dict:
    """Run the demo end to end; returns ``{"archive": archive report, "label": labeling report}``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from pipeline.console import line_buffered, quiet_logs

    line_buffered()
    t0 = time.perf_counter()
    work = Path(c.workdir).resolve()
    if c.fresh:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    with quiet_logs(work / "logs" / "demo.log", c.verbose) as log_path:
        return _demo(c, work, t0, log_path)


def _features(c: DemoConfig, manifest: Path, features: Path) -> None:
    """Step 3: extract (or reuse) the feature cache of every labelled turn."""
    from emoq_model.assets.whisper_ct2 import build_whisper_tiny_en
    from jobs import extract_features

    meta = _read(features / "meta.json")
    transcripts = "manifest" if c.reference_transcripts else f"asr:{build_whisper_tiny_en()}"
    if (
        _same_manifest(meta, manifest, features / "meta.json")
        and meta.get("transcripts") == transcripts
        and meta.get("turn_times")  # caches from before turn times were kept cannot fit conversation context
        and meta["encoder"].get("whisper_tail_s") == TAIL_S
        and meta.get("speed_perturb", []) == sorted(f for f in c.speed_perturb if f != 1.0)
        # speed-perturbed copies with their own ASR transcripts (caches from before the key was written had them)
        and meta.get("copy_transcripts", "asr") == "asr"
        # training transcripts decoded in float32 (caches from before the key was written were)
        and (c.reference_transcripts or meta.get("asr_dtype", "float32") == "float32")
    ):
        print("cached:", features)  # extracted from this very manifest, encoder setting and transcript source
        return
    asr = [] if c.reference_transcripts else ["--asr-model", str(build_whisper_tiny_en())]
    extract_features.main(
        [
            *(str(manifest), str(features), "--overwrite", *asr),
            *[x for o in ENCODER for x in ("--set", o)],
            *(["--speed-perturb", ",".join(map(str, c.speed_perturb))] if c.speed_perturb else []),
            *(["--verbose"] if c.verbose else []),
        ]
    )


def _train(c: DemoConfig, work: Path, features: Path, bundle: Path) -> None:
    """Step 4: train (or reuse) the bundle; an interrupted run of the same stamp resumes."""
    from emoq_model.config import demo_config_path
    from jobs import train

    overrides = (
        ENCODER
        + MODALITIES[c.modality]
        + FORMER_STATS
        + [f"train.stage1.epochs={c.stage1_epochs}", f"train.stage2.epochs={c.stage2_epochs}"]
        + list(c.overrides)
    )
    stamp = {  # what the bundle depends on: a change to any of these retrains
        "features_meta_sha256": _sha(features / "meta.json"),
        "config_sha256": _sha(Path(demo_config_path())),
        "overrides": overrides,
    }
    if _read(work / "bundle.json") == stamp and (bundle / "training.json").is_file():  # trained like this
        print("cached:", bundle)
        return
    for stale in ("labels", "eval"):  # labels of another bundle must not be resumed
        shutil.rmtree(work / stale, ignore_errors=True)
    run = "demo-" + hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:10]
    train.main(  # a bar over the epochs with each epoch's validation line (--verbose: the workers' own lines)
        [
            str(features),
            *("--out", str(bundle), "--name", run, "--storage-path", str(work / "ray_train")),
            *("--workers", str(c.workers)),
            *[x for o in overrides for x in ("--set", o)],
            *(["--verbose"] if c.verbose else []),
        ]
    )
    (work / "bundle.json").write_text(json.dumps(stamp))


def _demo(c: DemoConfig, work: Path, t0: float, log_path: Path | None) -> dict:
    import pandas as pd

    from emoq_model.assets.text_encoders import build_minilm
    from emoq_model.assets.tiny_llm import build_tiny_llm
    from emoq_model.assets.whisper_ct2 import build_whisper_tiny_en
    from pipeline.console import final_table, note_ray_session
    from pipeline.evaluation.archive import format_archive_report
    from pipeline.ray_env import init_ray
    from pipeline.recipes import call_archive_manifest, write_manifest

    step("1/6 offline assets")
    print("encoder:", build_whisper_tiny_en())
    print("llm:    ", build_tiny_llm())
    print("text:   ", build_minilm())

    step("2/6 labelled training / validation calls and the evaluation archive")
    arch = demo_archives(c)
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

    init_ray(log_to_driver=c.verbose)  # quiet: the workers' output (Ray Train's too) stays in Ray's session logs
    note_ray_session()
    from jobs import evaluate_archive, label_corpus

    features, bundle = work / "features", work / "bundle"
    step("3/6 feature extraction of every labelled turn (Ray Data, frozen Whisper encoder)")
    _features(c, manifest, features)

    step("4/6 two-stage training (Ray Train)")
    _train(c, work, features, bundle)

    step("5/6 labeling the evaluation archive (Ray Data + vLLM)")
    from pipeline.labeling.guards import output_model_ids
    from pipeline.labeling.job import LabelJobConfig, model_id, precision_overrides

    whisper = str(build_whisper_tiny_en()) if c.modality != "speech" else None  # transcripts from ASR
    job = LabelJobConfig(
        inputs=[str(arch["archive"])], output=str(work / "labels"), bundle=str(bundle), asr_model=whisper
    )
    if output_model_ids(str(work / "labels")) - {model_id(str(bundle), precision_overrides(job))}:
        shutil.rmtree(work / "labels", ignore_errors=True)  # labelled by an older bundle, precision or id format
    asr = ["--asr-model", whisper] if whisper else []
    label_report = label_corpus.main(
        [
            str(arch["archive"]),
            *("--bundle", str(bundle), "--output", str(work / "labels")),
            *("--encode-cpus", "0.5", "--label-cpus", "0.5"),
            *asr,
            *(["--verbose"] if c.verbose else []),
        ]
    )

    step("6/6 archive evaluation against the per-turn truth")
    report = evaluate_archive.main(
        [str(work / "labels"), str(arch["archive"].parent / "segments.csv"), "--out", str(work / "eval")]
    )
    seg = report["segment"]
    step("summary")
    label_log = None if c.verbose else work / "labels" / "logs" / "label.log"
    print(final_table(label_report, log_path=label_log))
    print(f"Archive evaluation: {format_archive_report(report).splitlines()[0]}")
    if log_path is not None:
        print(f"Demo log (Ray, Ray Train, extraction): {log_path}")
    print(
        f"\nDemo finished in {time.perf_counter() - t0:.0f} s. Evaluation archive ({c.calls} calls, unseen speakers): "
        f"segment UA {seg['ua']:.3f}, accuracy {seg['accuracy']:.3f} (always '{report['majority']['label']}': "
        f"{report['majority']['accuracy']:.3f}). Labels: {work / 'labels'}, report: {report['files']['json']}"
    )
    return {"archive": report, "label": label_report}
