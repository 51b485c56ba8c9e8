"""Labeling throughput of a text bundle with ASR off, shared-encoder ASR and a separate ASR stage, in one run.

Each mode labels the same call archive into a fresh output with the same bundle and resources (local Ray, 2 cores
here); "off" labels from speech alone (the bundle's Former gets no transcript). The wall time includes each job's
start (actors, vLLM engine), which is the same for every mode; the steady-state difference is the ASR's cost.

    python bench/asr_labeling.py BUNDLE CALLS_CSV [--modes off,shared,separate] [--out bench/results/asr_labeling.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import REPO, WORK  # noqa: E402  (sets the offline environment)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("calls_csv")
    ap.add_argument("--modes", default="off,shared,separate")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "asr_labeling.json"))
    a = ap.parse_args(argv)
    from emoq_model.assets.whisper_ct2 import build_whisper_tiny_en
    from pipeline.labeling.job import LabelJobConfig, StageResources, run
    from pipeline.ray_env import init_ray

    init_ray()
    whisper = str(build_whisper_tiny_en())
    report = {"bundle": a.bundle, "calls_csv": a.calls_csv, "runs": {}}
    for mode in a.modes.split(","):
        out = WORK / f"asr_labeling_{mode}"
        shutil.rmtree(out, ignore_errors=True)
        cfg = LabelJobConfig(
            inputs=[a.calls_csv],
            output=str(out),
            bundle=a.bundle,
            asr_model=None if mode == "off" else whisper,
            asr_shared=mode == "shared",
            encode=StageResources(1, 0.5),
            label=StageResources(1, 0.5),
            asr=StageResources(1, 0.5),
        )
        rep = run(cfg, log=lambda *x: None)
        report["runs"][mode] = {
            "asr": rep["asr"],
            "wall_s": round(rep["wall_s"], 1),
            "audio_s": rep["audio_s"],
            "audio_s_per_s": round(rep["audio_s_per_s"], 2),
            "segments": rep["segments"],
        }
        print(mode, report["runs"][mode], flush=True)
    base = report["runs"].get("off", {}).get("audio_s_per_s")
    for r in report["runs"].values():
        r["vs_off"] = round(r["audio_s_per_s"] / base, 3) if base else None
    Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
