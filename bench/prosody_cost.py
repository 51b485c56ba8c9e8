"""Cost of the optional prosody channels (``encoder.prosody``) in the encoder stage, interleaved in one process.

    python bench/prosody_cost.py [--segments 96] [--reps 3]

The demo evaluation archive's VAD segments are encoded by the Whisper tiny.en encoder with and without the prosody
tracks (same batches, alternating per repetition); prints audio-seconds per second of each and the ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--segments", type=int, default=96)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    a = ap.parse_args(argv)
    import numpy as np
    import pandas as pd
    import torch

    from emoq_model.assets.whisper_ct2 import build_whisper_tiny_en
    from emoq_model.config import EncoderConfig
    from emoq_model.encoder import SpeechEncoder
    from pipeline.demo.calls import cached_call_archive
    from pipeline.labeling.prepare import PrepareConfig, prepare_recording, split_segments

    torch.set_num_threads(2)
    calls = pd.read_csv(cached_call_archive("bench_prosody_calls", n_calls=4, minutes=1.0, seed=5, workers=1))
    waves = []
    for c in calls.itertuples():
        r = prepare_recording(
            {"recording_id": c.recording_id, "path": c.path, "channel_names": c.channels}, PrepareConfig()
        )
        waves += [np.array(w) for w in split_segments(r)]
    waves = sorted(waves[: a.segments], key=len)
    audio_s = sum(len(w) for w in waves) / 16000
    path = str(build_whisper_tiny_en())
    enc = {p: SpeechEncoder(EncoderConfig(path=path, layer="weighted", device="cpu", prosody=p)) for p in (False, True)}
    times = {False: [], True: []}
    for _ in range(a.reps):
        for p in (False, True):
            t0 = time.perf_counter()
            for i in range(0, len(waves), a.batch):
                enc[p](waves[i : i + a.batch])
            times[p].append(time.perf_counter() - t0)
    res = {
        "segments": len(waves),
        "audio_s": round(audio_s, 1),
        "encoder_audio_s_per_s": round(audio_s / float(np.median(times[False])), 1),
        "encoder_prosody_audio_s_per_s": round(audio_s / float(np.median(times[True])), 1),
    }
    res["prosody_cost"] = round(float(np.median(times[True])) / float(np.median(times[False])) - 1, 3)
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
