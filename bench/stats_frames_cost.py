"""Cost of the channel-statistics frames (``former.stats_frames``) in the label stage's encoder + Former.

    python bench/stats_frames_cost.py [--bundle runs/demo/bundle] [--archive CALLS_CSV] [--calls 4] [--reps 5]

The statistics frames are what the call-quality design adds to a segment's model compute at labeling time: two
frames of its channel's statistics before its encoder frames, which the Former's queries attend to beside them. The
VAD segments of ``--calls`` calls of the demo evaluation archive are encoded once (Whisper, float32), then the Former
and the soft prompt run on the same states with the two frames (as the bundle labels) and without them (the
bundle's Former with its statistics type embedding removed), alternating per repetition; the encoder pass is timed
beside them, since the label stage runs both. Prints audio-seconds per second of each and the ratios; writes
``bench/results/stats_frames_cost.json``. Transcripts are left out (the ASR decoder is timed in §6).
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default="runs/demo/bundle")
    ap.add_argument("--archive", default=None, help="calls.csv (default: the demo evaluation archive's)")
    ap.add_argument("--calls", type=int, default=4)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "stats_frames_cost.json"))
    a = ap.parse_args(argv)
    import numpy as np
    import pandas as pd
    import torch

    from emoq_model.bundle import load_bundle
    from emoq_model.features import N_STATS_FRAMES, prepend_frames
    from emoq_model.model import collate_features
    from pipeline.labeling.encode import length_batches
    from pipeline.labeling.prepare import PrepareConfig, prepare_recording, split_segments

    torch.set_num_threads(2)
    archive = a.archive or sorted(glob.glob(".cache/emoq/demo_eval_calls-*/calls.csv"))[0]
    calls = pd.read_csv(archive).head(a.calls)
    front = load_bundle(a.bundle, load_llm=False, with_encoder=True)
    if front.former.stats_type is None:
        raise SystemExit(f"{a.bundle} does not read statistics frames (former.stats_frames is false)")
    sr = 16000
    segs = []
    for c in calls.itertuples():
        rec = prepare_recording({"recording_id": c.recording_id, "path": c.path}, PrepareConfig())
        segs += split_segments(rec) if rec.get("seg_offsets") is not None else []
    audio_s = sum(len(s) for s in segs) / sr
    batches = length_batches([len(s) for s in segs], 32, 240 * sr, float(sr))

    def encode():
        out = [None] * len(segs)
        with torch.inference_mode():
            for b in batches:
                enc = front.encoder([segs[i] for i in b])
                for k, i in enumerate(b):
                    out[i] = enc.item(k).float().numpy()
        return out

    def prompts(states, with_stats: bool):
        stats_type = front.former.stats_type
        if not with_stats:
            front.former.stats_type = None
        try:
            with torch.inference_mode():
                for i in range(0, len(states), 64):
                    items = [
                        {"frames": torch.from_numpy(prepend_frames(s, lead) if with_stats else s), "transcript": None}
                        for s in states[i : i + 64]
                    ]
                    front.prompt_embeds(collate_features(items).to(front.device))
        finally:
            front.former.stats_type = stats_type

    states = encode()  # warm-up (kernels per shape)
    shape = states[0].shape  # [L, T, D] (stacked layers) or [T, D]
    lead = np.random.default_rng(0).standard_normal((shape[0] if len(shape) == 3 else 1, N_STATS_FRAMES, shape[-1]))
    lead = lead.astype(np.float32)
    prompts(states, True)
    prompts(states, False)
    times = {"encoder": [], "former_with_stats": [], "former_without": []}
    for r in range(a.reps):
        t0 = time.perf_counter()
        encode()
        times["encoder"].append(time.perf_counter() - t0)
        for with_stats in (True, False) if r % 2 == 0 else (False, True):
            t0 = time.perf_counter()
            prompts(states, with_stats)
            times["former_with_stats" if with_stats else "former_without"].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    res = {
        "bundle": a.bundle,
        "archive": archive,
        "segments": len(segs),
        "audio_s": audio_s,
        "mean_frames": float(np.mean([s.shape[-2] for s in states])),
        "times": times,
        "audio_s_per_s": {k: audio_s / v for k, v in best.items()},
        "former_ratio": best["former_with_stats"] / best["former_without"],
        "stage_ratio": (best["encoder"] + best["former_with_stats"]) / (best["encoder"] + best["former_without"]),
    }
    print(json.dumps({k: res[k] for k in ("segments", "audio_s", "mean_frames", "audio_s_per_s")}, indent=1))
    print(
        f"Former + prompt with / without statistics frames: {res['former_ratio']:.3f}x the time; "
        f"encoder + Former: {res['stage_ratio']:.3f}x"
    )
    Path(a.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
