"""Encoder batching: the sorted greedy fill against the cost-model split (``length_batches(..., overhead)``).

    .venv/bin/python bench/encoder_batching.py [--clips 120] [--calls 12] [--reps 3] [--overheads 0.5,1,3]

On the labeling benchmark's corpus, prepared once and cut into the pipeline's blocks (``--blocks`` recordings),
one process, interleaved repetitions: the encoder calls alone and the whole ``EncodePrompts`` stage (encoder,
feature normalisation, Former, prompts) for each batching rule. Reports padded audio, calls and audio-s/s.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import demo_bundle, machine, save_results, stats  # noqa: E402
from label_throughput import file_seconds, make_corpus  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=120)
    ap.add_argument("--calls", type=int, default=12)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--blocks", default="8,32", help="recordings per block (the job's batch_recordings)")
    ap.add_argument("--overheads", default="0.5,1,3", help="batch overheads to try, in seconds of audio")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "encoder_batching.json"))
    a = ap.parse_args()

    import numpy as np
    import torch

    from pipeline.labeling.columns import rows_of
    from pipeline.labeling.encode import EncodePrompts, length_batches
    from pipeline.labeling.job import encoder_sample_rate
    from pipeline.labeling.prepare import PrepareConfig, prepare_batch, split_segments
    from pipeline.labeling.sources import discover

    bundle = demo_bundle()
    corpus = make_corpus(a.clips, a.calls)
    audio_s = file_seconds(corpus["manifest"])
    pc = PrepareConfig(sample_rate=encoder_sample_rate(bundle))
    rows = [r.to_row() for r in discover([corpus["manifest"]])]
    stage = EncodePrompts(bundle)
    rate = stage.sample_rate
    rules = {"greedy": None, **{f"cost_{o}s": float(o) * rate for o in a.overheads.split(",")}}
    blocks = {}
    for nb in map(int, a.blocks.split(",")):
        blocks[nb] = [
            prepare_batch({k: np.array([r[k] for r in rows[i : i + nb]], dtype=object) for k in rows[i]}, pc)
            for i in range(0, len(rows), nb)
        ]
    waves = {
        nb: [[w for row in rows_of(b) if row.get("seg_offsets") is not None for w in split_segments(row)] for b in bl]
        for nb, bl in blocks.items()
    }  # each block's segments, as the stage cuts them
    raw: dict[str, list] = {}
    info: dict[str, dict] = {}
    stage(blocks[min(blocks)][0])  # warm-up
    for _ in range(a.reps):
        for nb, bl in blocks.items():
            for name, ov in rules.items():
                enc_s, calls, padded = 0.0, 0, 0
                with torch.inference_mode():
                    for ws in waves[nb]:
                        for idx in length_batches([len(w) for w in ws], stage.max_items, stage.max_samples, ov):
                            t0 = time.perf_counter()
                            stage.front.encoder([ws[i] for i in idx])
                            enc_s += time.perf_counter() - t0
                            calls += 1
                            padded += max(len(ws[i]) for i in idx) * len(idx)
                stage.overhead = ov
                t0 = time.perf_counter()
                for b in bl:
                    stage(b)
                stage_s = time.perf_counter() - t0
                key = f"blocks{nb}_{name}"
                raw.setdefault(key + "_encoder", []).append(audio_s / enc_s)
                raw.setdefault(key + "_stage", []).append(audio_s / stage_s)
                real = sum(len(w) for ws in waves[nb] for w in ws)
                info[key] = {"calls": calls, "padded_s": padded / rate, "speech_s": real / rate}
    summary = {k: stats(v) for k, v in raw.items()}
    md = [
        f"Corpus: {a.clips} clips + {a.calls} calls, {audio_s:.0f} s of audio; {a.reps} repetitions, "
        "audio-s/s median [min–max]; ratio = median against greedy in the same block size",
        "",
        "| blocks | rule | encoder calls | padded / speech | encoder alone | ratio | EncodePrompts stage | ratio |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for nb in blocks:
        g = f"blocks{nb}_greedy"
        for name in rules:
            k = f"blocks{nb}_{name}"
            e, s = summary[k + "_encoder"], summary[k + "_stage"]
            md.append(
                f"| {nb} | {name} | {info[k]['calls']} | {info[k]['padded_s'] / info[k]['speech_s']:.2f} | "
                f"{e['median']:.0f} [{e['min']:.0f}–{e['max']:.0f}] | "
                f"{e['median'] / summary[g + '_encoder']['median']:.2f} | "
                f"{s['median']:.0f} [{s['min']:.0f}–{s['max']:.0f}] | "
                f"{s['median'] / summary[g + '_stage']['median']:.2f} |"
            )
    save_results(
        a.json, {"machine": machine(), "corpus": corpus, "audio_s": audio_s, "summary": summary, "batches": info}, md
    )


if __name__ == "__main__":
    main()
