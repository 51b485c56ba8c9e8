"""The embedded demo, end to end on this machine (local Ray, offline assets):

1. build the offline assets (real Whisper tiny.en converted from CTranslate2, a small Qwen2 LLM),
2. synthesize the demo emotional corpus (hard mode, speaker-disjoint splits) and the call-centre archive,
3. extract frozen-encoder features with Ray Data, train EmoQ in two stages with Ray Train, evaluate the bundle,
4. label the call archive with Ray Data + vLLM and print where the Parquet files are.

Every step is cached or resumable: a second run reuses the features and bundle and skips labelled recordings.
``--fresh`` retrains. Outputs go under ``--workdir`` (default ``runs/demo``).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="runs/demo")
    ap.add_argument("--speakers", type=int, default=24)
    ap.add_argument("--sentences", type=int, default=12)
    ap.add_argument("--wideband", action="store_true",
                    help="train on 16 kHz clips (default: 8 kHz telephone band, like the call archive)")
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--call-minutes", type=float, default=2.0)
    ap.add_argument("--stage1-epochs", type=int, default=10, help="override the demo config (20)")
    ap.add_argument("--stage2-epochs", type=int, default=2, help="override the demo config (5)")
    ap.add_argument("--workers", type=int, default=2, help="Ray Train workers")
    ap.add_argument("--fresh", action="store_true", help="retrain and relabel from scratch")
    return ap.parse_args(argv)


def step(msg: str) -> None:
    print(f"\n=== {msg} ===", flush=True)


def main(argv=None) -> dict:
    a = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from emoq_model.assets.paths import asset_dir
    from emoq_model.assets.tiny_llm import build_tiny_llm
    from emoq_model.assets.whisper_ct2 import build_whisper_tiny_en
    from pipeline.demo_calls import make_call_archive
    from pipeline.demo_corpus import CorpusConfig, cached_emotion_corpus
    from pipeline.ray_env import init_ray

    t0 = time.perf_counter()
    work = Path(a.workdir).resolve()
    if a.fresh:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)

    step("1/5 offline assets")
    print("encoder:", build_whisper_tiny_en())
    print("llm:    ", build_tiny_llm())

    step("2/5 demo corpus and call archive")
    manifest = cached_emotion_corpus(CorpusConfig(n_speakers=a.speakers, n_sentences=a.sentences, mode="hard",
                                                  telephone=not a.wideband))
    print("corpus manifest:", manifest)
    calls_dir = asset_dir(f"demo_calls-{a.calls}x{a.call_minutes:g}min")
    if not (calls_dir / "calls.csv").exists():
        tmp = calls_dir.with_name(calls_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        make_call_archive(tmp, n_calls=a.calls, minutes=a.call_minutes, seed=0)
        import pandas as pd

        for fn in ("calls.csv", "segments.csv"):  # absolute paths move with the folder
            df = pd.read_csv(tmp / fn)
            df["path"] = df["path"].str.replace(str(tmp), str(calls_dir), regex=False)
            df.to_csv(tmp / fn, index=False)
        os.replace(tmp, calls_dir)
    print("call archive:", calls_dir / "calls.csv")

    init_ray()
    from jobs import evaluate, extract_features, label_corpus, train

    features, bundle = work / "features", work / "bundle"
    step("3/5 feature extraction (Ray Data, frozen Whisper encoder)")
    if not (features / "_SUCCESS").exists() and not (features / "meta.json").exists():
        extract_features.main([str(manifest), str(features)])
    else:
        print("cached:", features)

    step("4/5 two-stage training (Ray Train) and evaluation")
    if not (bundle / "bundle.json").exists():
        sets = []
        if a.stage1_epochs is not None:
            sets += ["--set", f"train.stage1.epochs={a.stage1_epochs}"]
        if a.stage2_epochs is not None:
            sets += ["--set", f"train.stage2.epochs={a.stage2_epochs}"]
        train.main([str(features), "--out", str(bundle), "--name", "demo", "--storage-path", str(work / "ray_train"),
                    "--workers", str(a.workers), *sets])
    else:
        print("cached:", bundle)
    report = evaluate.main([str(bundle), str(work / "eval"), "--features", str(features), "--split", "test"])

    step("5/5 labeling the call archive (Ray Data + vLLM)")
    label_report = label_corpus.main([str(calls_dir / "calls.csv"), "--bundle", str(bundle),
                                      "--output", str(work / "labels"), "--encode-cpus", "0.5",
                                      "--label-cpus", "0.5"])
    print(f"\nDemo finished in {time.perf_counter() - t0:.0f} s. Test-split UA {report.get('ua', float('nan')):.3f}, "
          f"WA {report.get('wa', float('nan')):.3f}. Labels: {work / 'labels'}")
    return {"eval": report, "label": label_report}


if __name__ == "__main__":
    main()
