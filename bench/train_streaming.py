"""Streaming training data vs in-memory shards: per-worker peak memory as the feature cache grows 10x, and samples/s.

    .venv/bin/python bench/train_streaming.py [--rows 1000] [--scale 10] [--frames 50] [--epochs 2] [--reps 0]
        [--workers 2] [--json J]

Two synthetic feature caches in the demo config's layout (5 stacked Whisper tiny.en layers x 384, float16,
``--frames`` frames per row (50 = 1 s), 8 speakers, random labels: memory and speed only), one with ``--rows``
training rows, one with ``--scale`` times as many; both with the same 32 validation rows (validation stays in memory
in both modes, so only the training rows grow). For each (mode, cache): ``run_training`` in a fresh process (own
local Ray), stage 1 only, ``--epochs`` epochs, ``--workers`` workers (2) x 1 torch thread: on this 2-core
machine 2 workers leave the data tasks no core of their own, 1 leaves them one (as a GPU node's spare CPU cores
would). Reported from the run's metrics (rank 0):
``peak_private_mb`` (the worker's peak private resident memory, ``RssAnon``, sampled every step), ``max_rss_mb``
(peak RSS, which also counts the shared object-store pages that reading Ray Data blocks maps in) and samples/s of
epochs 1.. (epoch 0 is warm-up) = rows trained over both ranks / ``train_s`` (the training pass alone, without
validation). Results: ``bench/results/train_streaming.{json,md}`` (``--json``).

Speed on a shared machine swings by +-20 % between runs minutes apart, more than the 10 % the streaming path is
held to. ``--reps R`` then runs R more (memory, stream) pairs on the large cache, back to back, alternating which
mode goes first, and reports each pair's ratio and their median: a drift of the machine hits both runs of a pair.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WORK, machine, run_phase, save_results  # noqa: E402

OVR = ["train.stage1.batch_size=32"]
LABELS = ["neutral", "happy", "angry", "sad"]


def cfg_(epochs: int = 2):
    from emoq_model.config import demo_config_path, load_config

    return load_config(demo_config_path(), [*OVR, f"train.stage1.epochs={epochs}"])


def synthetic_cache(n_train: int, n_val: int = 32, frames: int = 100) -> str:
    """A feature cache of random frames with the demo encoder's shape, written as extraction writes one."""
    out = WORK / f"stream_cache_{n_train}_{frames}"
    if (out / "_done").exists():
        return str(out)
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from emoq_model import features as F
    from emoq_model.model import encoder_dims

    cfg = cfg_()
    dim, n_layers = encoder_dims(cfg)
    (out / F.SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(0)
    rows, part = [], 0
    total = n_train + n_val
    for i in range(total):
        data, (nl, t, d) = F.encode_frames(g.standard_normal((n_layers, frames, dim), dtype=np.float32))
        rows.append(
            {
                "utt_id": f"u{i:06d}",
                "path": None,
                "label": LABELS[int(g.integers(4))],
                "transcript": None,
                "speaker": f"s{i % 8}",
                "split": "val" if i < n_val else "train",
                "error": None,
                "num_samples": frames * 320,
                "duration_s": frames * 0.02,
                "n_layers": nl,
                "n_frames": t,
                "dim": d,
                "frames": data,
            }
        )
        if len(rows) == 256 or i == total - 1:
            pq.write_table(
                pa.Table.from_pylist(rows, schema=F.feature_schema()),
                out / F.SHARDS_DIR / f"{part}.parquet",
                compression=F.shard_compression(),  # as extraction writes them
            )
            rows, part = [], part + 1
    meta = {
        "format": F.FORMAT,
        "encoder": dict(vars(cfg.encoder)),
        "dtype": "float16",
        "groups": "speakers",
        "dim": int(dim),
        "n_layers": int(n_layers),
        "n_rows": total,
    }
    (out / F.META_FILE).write_text(json.dumps(meta, default=str))
    cache = F.FeatureCache(str(out))
    F.write_stats(F.compute_group_stats(cache.iter_items(), key="speaker"), str(out / F.SPEAKER_STATS_FILE))
    (out / "_done").write_text("ok")
    return str(out)


def phase_train(a) -> dict:
    from pipeline.ray_env import init_ray
    from pipeline.training import TrainSettings, run_training

    init_ray(num_cpus=4)
    s = TrainSettings(
        features=a.features,
        storage_path=str(WORK / "stream_runs"),
        name=f"{a.mode}-{os.getpid()}-{int(time.time())}",
        stages=(1,),
        num_workers=a.workers,
        cpus_per_worker=0.5,
        threads_per_worker=1,
        data=a.mode,
        verbose=False,
        max_failures=0,
    )
    t0 = time.perf_counter()
    summ = run_training(cfg_(a.epochs), s)
    h = summ["history"][-1]
    timed = summ["history"][1:] or summ["history"]  # epoch 0 is warm-up
    return {
        "wall_s": time.perf_counter() - t0,
        "max_rss_mb": h["max_rss_mb"],
        "peak_private_mb": h["peak_private_mb"],
        "samples_per_s": a.workers * sum(x["train_rows"] for x in timed) / sum(x["train_s"] for x in timed),
        "train_rows_per_rank": h["train_rows"],
        "history": [{k: x.get(k) for k in ("epoch", "train_s", "epoch_s", "max_rss_mb")} for x in summ["history"]],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phase", default="driver")
    ap.add_argument("--out")
    ap.add_argument("--features")
    ap.add_argument("--mode", default="memory")
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--frames", type=int, default=50, help="frames per row (50 = 1 s of Whisper frames)")
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=2, help="epochs per run; samples/s over all but the first")
    ap.add_argument("--reps", type=int, default=0, help="more (memory, stream) pairs on the large cache")
    ap.add_argument(
        "--workers", type=int, default=2, help="Train workers (1 torch thread each); 1 leaves a core to the data tasks"
    )
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "train_streaming.json"))
    a = ap.parse_args()
    if a.phase != "driver":
        Path(a.out).write_text(json.dumps(phase_train(a), default=float))
        return
    caches = {n: synthetic_cache(n, frames=a.frames) for n in (a.rows, a.rows * a.scale)}
    res: dict[str, dict] = {}

    def run(mode: str, n: int, key: str) -> dict:
        r = run_phase(
            str(Path(__file__).resolve()),
            "train",
            WORK / "stream_phases" / f"{key}.json",
            *("--features", caches[n], "--mode", mode, "--epochs", str(a.epochs), "--workers", str(a.workers)),
            timeout=1500,
        )
        print(f"{key}: peak {r['max_rss_mb']:.0f} MiB, {r['samples_per_s']:.1f} samples/s", flush=True)
        return r

    for mode in ("memory", "stream"):
        for n in caches:
            res[f"{mode}_{n}"] = run(mode, n, f"{mode}_{n}")
    small, big = a.rows, a.rows * a.scale
    pairs = []
    for i in range(a.reps):
        order = ("stream", "memory") if i % 2 == 0 else ("memory", "stream")  # the first pass ran memory first
        got = {m: run(m, big, f"rep{i}_{m}_{big}") for m in order}
        pairs.append({"first": order[0], **{m: got[m]["samples_per_s"] for m in order}})
        pairs[-1]["ratio"] = pairs[-1]["stream"] / pairs[-1]["memory"]
    ratios = {
        "memory_private_peak_growth": res[f"memory_{big}"]["peak_private_mb"]
        / res[f"memory_{small}"]["peak_private_mb"],
        "stream_private_peak_growth": res[f"stream_{big}"]["peak_private_mb"]
        / res[f"stream_{small}"]["peak_private_mb"],
        "memory_rss_peak_growth": res[f"memory_{big}"]["max_rss_mb"] / res[f"memory_{small}"]["max_rss_mb"],
        "stream_rss_peak_growth": res[f"stream_{big}"]["max_rss_mb"] / res[f"stream_{small}"]["max_rss_mb"],
        "stream_vs_memory_samples_per_s_small": res[f"stream_{small}"]["samples_per_s"]
        / res[f"memory_{small}"]["samples_per_s"],
        "stream_vs_memory_samples_per_s_big": res[f"stream_{big}"]["samples_per_s"]
        / res[f"memory_{big}"]["samples_per_s"],
    }
    md = [
        "| data | train rows | cache MiB | worker peak private MiB | worker peak RSS MiB | samples/s (epoch 1) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode in ("memory", "stream"):
        for n in (small, big):
            r = res[f"{mode}_{n}"]
            mib = sum(f.stat().st_size for f in Path(caches[n]).rglob("*.parquet")) / 2**20
            md.append(
                f"| {mode} | {n} | {mib:.0f} | {r['peak_private_mb']:.0f} | {r['max_rss_mb']:.0f} "
                f"| {r['samples_per_s']:.1f} |"
            )
    md += ["", *(f"- {k}: {v:.3f}" for k, v in ratios.items())]
    if pairs:
        import statistics

        ratios["stream_vs_memory_big_pairs_median"] = statistics.median(
            [ratios["stream_vs_memory_samples_per_s_big"], *(p["ratio"] for p in pairs)]
        )
        md += ["", f"Pairs on the {big}-row cache, {a.epochs} epochs each (samples/s of epochs 1..):", ""]
        md += ["| pair | first | memory | stream | stream ÷ memory |", "| ---: | --- | ---: | ---: | ---: |"]
        md.append(
            f"| 0 | memory | {res[f'memory_{big}']['samples_per_s']:.1f} | {res[f'stream_{big}']['samples_per_s']:.1f} "
            f"| {ratios['stream_vs_memory_samples_per_s_big']:.3f} |"
        )
        for i, p in enumerate(pairs, 1):
            md.append(f"| {i} | {p['first']} | {p['memory']:.1f} | {p['stream']:.1f} | {p['ratio']:.3f} |")
        md += ["", f"- median of the {len(pairs) + 1} ratios: {ratios['stream_vs_memory_big_pairs_median']:.3f}"]
    out = {
        "machine": machine(),
        "results": res,
        "ratios": ratios,
        "rows": [small, big],
        "epochs": a.epochs,
        "workers": a.workers,
    }
    save_results(a.json, {**out, "pairs": pairs}, md)


if __name__ == "__main__":
    main()
