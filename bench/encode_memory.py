"""Peak memory of the label stage's encoder on one long recording: states held for per-speaker normalisation
against the two-pass streaming path (``EncodePrompts(max_held_seconds=...)``), each in a fresh process.

    .venv/bin/python bench/encode_memory.py [--minutes 30] [--json bench/results/encode_memory.json]

The recording: real speech clips (asterisk prompts) back to back on one channel, cut into ~3 s segments as the
VAD would, all one speaker (one normalisation group). Peak = the process's RSS high-water mark after the stage is
built and warmed up, subtracted from its value after encoding (``resource.getrusage``), plus the wall time.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WORK, asterisk_clips, demo_bundle, machine, run_phase, save_results  # noqa: E402


def phase(a) -> dict:
    from emoq_model.features import FeatureNorm
    from pipeline.audio import load_mono
    from pipeline.labeling.encode import EncodePrompts

    stage = EncodePrompts(a.bundle, max_held_seconds=a.held)
    stage.norm = FeatureNorm("speaker", group_key="speaker")  # what trained bundles use (training default)
    clips = [load_mono(p, stage.sample_rate) for p, _ in asterisk_clips(2.0, 4.0)]
    n = int(a.minutes * 60 / 3)
    waves = [clips[i % len(clips)] for i in range(n)]
    stage.encode(waves[:4], [None] * 4, ["warm"] * 4)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    out = stage.encode(waves, [None] * n, ["call\x000"] * n)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    speech_s = sum(len(w) for w in waves) / stage.sample_rate
    return {
        "segments": n,
        "speech_s": speech_s,
        "wall_s": wall,
        "peak_growth_mb": peak - base,
        "checksum": float(sum(float(o.double().sum()) for o in out)),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phase", default="driver")
    ap.add_argument("--out")
    ap.add_argument("--bundle")
    ap.add_argument("--held", type=float, default=600.0)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "encode_memory.json"))
    a = ap.parse_args()
    if a.phase != "driver":
        Path(a.out).write_text(json.dumps(phase(a)))
        return
    bundle = demo_bundle()
    res = {}
    for name, held in (("held", 1e9), ("two_pass", 0.0)):
        res[name] = run_phase(
            str(Path(__file__).resolve()),
            "one",
            WORK / "encode_memory" / f"{name}.json",
            "--bundle",
            bundle,
            "--held",
            str(held),
            "--minutes",
            str(a.minutes),
        )
        print(name, res[name], flush=True)
    h, s = res["held"], res["two_pass"]
    md = [
        f"One speaker, {h['speech_s'] / 60:.0f} min of speech in {h['segments']} segments, demo encoder "
        "(Whisper tiny.en, 5 stacked layers x 384)",
        "",
        "| path | peak RSS growth, MB | wall s | audio-s/s |",
        "|---|---:|---:|---:|",
    ]
    for name, r in res.items():
        md.append(f"| {name} | {r['peak_growth_mb']:.0f} | {r['wall_s']:.1f} | {r['speech_s'] / r['wall_s']:.0f} |")
    md.append(f"\nSame prompts: checksums {h['checksum']:.6g} / {s['checksum']:.6g}")
    save_results(a.json, {"machine": machine(), "minutes": a.minutes, "results": res}, md)


if __name__ == "__main__":
    main()
