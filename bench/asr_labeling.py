"""Labeling throughput of a text bundle with ASR off, shared-encoder ASR (float32, a bfloat16 decoder, or ``_auto``:
the labeling default, bfloat16 where native) and a separate ASR stage, in one run.

Each mode labels the same call archive into a fresh output with the same bundle and resources (local Ray, 2 cores
here); "off" labels from speech alone (the bundle's Former gets no transcript). The wall time includes each job's
start (actors, vLLM engine), which is the same for every mode; the steady-state difference is the ASR's cost.

    python bench/asr_labeling.py BUNDLE CALLS_CSV [--modes off,shared,shared_bf16,shared_auto,separate] [--reps 2] \
        [--out bench/results/asr_labeling.json]

Repetitions interleave the modes (off, shared, ..., off, shared, ...); each mode's ``vs_off`` is the ratio to the
"off" run of the same repetition, reported per repetition and as the median. Each mode's labels and transcripts
(last repetition) are compared per segment with the float32 shared mode's (``agreement``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import REPO, WORK  # noqa: E402  (sets the offline environment)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("calls_csv")
    ap.add_argument("--modes", default="off,shared,separate")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "asr_labeling.json"))
    a = ap.parse_args(argv)
    from emoq_model.assets.whisper_ct2 import build_whisper_tiny_en
    from pipeline.labeling.job import LabelJobConfig, StageResources, run
    from pipeline.ray_env import init_ray

    init_ray()
    whisper = str(build_whisper_tiny_en())
    report = {"bundle": a.bundle, "calls_csv": a.calls_csv, "runs": []}
    modes = a.modes.split(",")
    for rep, mode in [(r, m) for r in range(a.reps) for m in modes]:
        out = WORK / f"asr_labeling_{mode}"
        shutil.rmtree(out, ignore_errors=True)
        cfg = LabelJobConfig(
            inputs=[a.calls_csv],
            output=str(out),
            bundle=a.bundle,
            asr_model=None if mode == "off" else whisper,
            asr_shared=mode.startswith("shared"),
            asr_dtype={"bf16": "bfloat16", "auto": "auto"}.get(mode.rpartition("_")[2], "float32"),
            encode=StageResources(1, 0.5),
            label=StageResources(1, 0.5),
            asr=StageResources(1, 0.5),
        )
        res = run(cfg, log=lambda *x: None)
        report["runs"].append(
            {
                "mode": mode,
                "rep": rep,
                "asr": res["asr"],
                "wall_s": round(res["wall_s"], 1),
                "audio_s": res["audio_s"],
                "audio_s_per_s": round(res["audio_s_per_s"], 2),
                "segments": res["segments"],
            }
        )
        print(report["runs"][-1], flush=True)
    off = {r["rep"]: r["audio_s_per_s"] for r in report["runs"] if r["mode"] == "off"}
    for r in report["runs"]:
        r["vs_off"] = round(r["audio_s_per_s"] / off[r["rep"]], 3) if r["rep"] in off else None
    ratios = {m: [r["vs_off"] for r in report["runs"] if r["mode"] == m and r["vs_off"] is not None] for m in modes}
    report["median_vs_off"] = {m: float(np.median(v)) for m, v in ratios.items() if v}
    print("median vs off:", report["median_vs_off"], flush=True)
    if "shared" in modes:
        report["agreement"] = agreement(modes)
        print("agreement with shared float32:", report["agreement"], flush=True)
    Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


def agreement(modes: list[str]) -> dict:
    """Per-segment agreement of each mode's last output with the float32 shared mode's: argmax label, transcript,
    largest probability difference."""
    import pandas as pd

    key = ["recording_id", "channel", "segment_index"]

    def read(mode: str) -> pd.DataFrame:
        df = pd.read_parquet(WORK / f"asr_labeling_{mode}" / "segments").set_index(key).sort_index()
        df["p"] = [np.array([float(p) for _, p in row]) for row in df["probabilities"]]
        return df

    ref, out = read("shared"), {}
    for m in modes:
        got = read(m).reindex(ref.index)
        out[m] = {
            "segments": len(ref),
            "label": round(float((got["label"] == ref["label"]).mean()), 4),
            "transcript": round(float((got["transcript"].fillna("") == ref["transcript"].fillna("")).mean()), 4),
            "max_prob_diff": round(float(np.abs(np.stack(got["p"]) - np.stack(ref["p"])).max()), 4),
        }
    return out


if __name__ == "__main__":
    main()
