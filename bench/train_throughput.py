"""Training throughput (samples/s) of stage 1 and stage 2: Ray Train with 1 and 2 workers vs a plain loop.

    .venv/bin/python bench/train_throughput.py [--reps 2] [--n-train 192] [--json bench/results/train_throughput.json]

Feature cache: real Whisper tiny.en features (demo config: 5 stacked layers x 384) of real speech clips (asterisk
prompts, 1-5 s) with random labels / speakers (throughput only; labels do not matter), built once with
``jobs/extract_features.py``'s ``extract_features``. Every measurement runs in a fresh process.

* ``ray``: ``pipeline.training.driver.run_training`` with stages (1, 2) and W workers x T torch threads; samples/s of an
  epoch = train rows / ``epoch_s`` from the run's history (epoch 0 of each stage is warm-up and dropped; epoch_s
  includes the small validation pass, as in a real run).
* ``plain``: the same model, data (``WorkerData``), optimizer and step in one process, no Ray, no DDP.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WORK, asterisk_clips, machine, run_phase, stats  # noqa: E402

OVR = ["train.stage1.epochs=3", "train.stage2.epochs=2", "train.stage1.batch_size=32", "train.stage2.batch_size=16"]


def cfg_():
    from emoq_model.config import demo_config_path, load_config

    return load_config(demo_config_path(), OVR)


def feature_cache() -> str:
    out = WORK / "train_features"
    if (out / "_done").exists():
        return str(out)
    import numpy as np
    import pandas as pd

    from pipeline.ray_env import init_ray
    from pipeline.training.extract import extract_features

    clips = asterisk_clips(1.0, 5.0)
    g = np.random.default_rng(0)
    labels = ["neutral", "happy", "angry", "sad"]
    rows = [
        {
            "utt_id": f"u{i:04d}",
            "path": p,
            "label": labels[i % 4],
            "transcript": None,
            "speaker": f"s{g.integers(8)}",
            "split": "val" if i % 16 == 0 else "train",
        }
        for i, (p, _) in enumerate(clips)
    ]
    man = WORK / "train_manifest.csv"
    pd.DataFrame(rows).to_csv(man, index=False)
    init_ray(num_cpus=4)
    extract_features(str(man), str(out), cfg_(), batch_size=16)
    import ray

    ray.shutdown()
    (out / "_done").write_text("ok")
    return str(out)


def settings(a, name):
    from pipeline.training import TrainSettings

    return TrainSettings(
        features=a.features,
        storage_path=str(WORK / "train_runs"),
        name=name,
        stages=(1, 2),
        num_workers=a.workers,
        cpus_per_worker=0.5,
        threads_per_worker=a.threads,
        limit_train=a.n_train,
        verbose=False,
        max_failures=0,
    )


def phase_ray(a) -> dict:
    from pipeline.ray_env import init_ray
    from pipeline.training import run_training

    init_ray(num_cpus=4)
    name = f"bench-w{a.workers}-t{a.threads}-{os.getpid()}-{int(time.time())}"
    t0 = time.perf_counter()
    summ = run_training(cfg_(), settings(a, name))
    wall = time.perf_counter() - t0
    hist = summ["history"]
    res = {"wall_s": wall, "history": [{k: h.get(k) for k in ("stage", "epoch", "epoch_s")} for h in hist]}
    for stage in (1, 2):
        ep = [h["epoch_s"] for h in hist if h["stage"] == stage and h["epoch"] > 0]
        res[f"stage{stage}_samples_per_s"] = a.n_train * len(ep) / sum(ep)
    return res


def phase_plain(a) -> dict:
    import numpy as np
    import torch

    from emoq_model import steps as st
    from emoq_model.model import EmoQModel
    from pipeline.training.data import WorkerData, batches, collate

    torch.set_num_threads(a.threads)
    cfg = cfg_()
    cfg.llm.device = cfg.encoder.device = "cpu"
    s = settings(a, "plain")
    data = WorkerData(s, cfg, 0, 1)
    model = EmoQModel(cfg)
    model.set_class_counts(data.counts)
    res = {}
    for stage in (1, 2):
        sc = cfg.train.stage1 if stage == 1 else cfg.train.stage2
        model.set_stage(stage)
        opt = st.make_optimizer(model, stage)
        times = []
        for epoch in range(sc.epochs):
            model.train()
            t0 = time.perf_counter()
            for chunk in batches(data.train, sc.batch_size, np.random.default_rng(epoch)):
                out = model.stage_step(collate(chunk), stage)
                opt.zero_grad(set_to_none=True)
                out["loss"].backward()
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
                opt.step()
            times.append(time.perf_counter() - t0)
        res[f"stage{stage}_epoch_s"] = times
        res[f"stage{stage}_samples_per_s"] = len(data.train) * (len(times) - 1) / sum(times[1:])
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phase", default="driver")
    ap.add_argument("--out")
    ap.add_argument("--features")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-train", type=int, default=192)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--configs", default="plain:1:2,ray:1:2,ray:1:1,ray:2:1")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "train_throughput.json"))
    a = ap.parse_args()
    if a.phase != "driver":
        Path(a.out).write_text(json.dumps({"plain": phase_plain, "ray": phase_ray}[a.phase](a), default=float))
        return
    feats = feature_cache()
    raw: dict[str, list] = {}
    for rep in range(a.reps):
        for c in a.configs.split(","):
            kind, w, t = c.split(":")
            r = run_phase(
                str(Path(__file__).resolve()),
                kind,
                WORK / "train_phases" / f"{c.replace(':', '_')}_{rep}.json",
                "--features",
                feats,
                "--workers",
                w,
                "--threads",
                t,
                "--n-train",
                str(a.n_train),
            )
            raw.setdefault(c, []).append(r)
            print(
                f"rep {rep} {c}: s1 {r['stage1_samples_per_s']:.1f}/s s2 {r['stage2_samples_per_s']:.1f}/s "
                f"({r['process_wall_s']:.0f} s)",
                flush=True,
            )
    summ = {
        c: {f"stage{s}": stats([r[f"stage{s}_samples_per_s"] for r in rs]) for s in (1, 2)} for c, rs in raw.items()
    }
    ratios = {}
    n = a.reps
    for s in (1, 2):
        k = f"stage{s}_samples_per_s"
        if "ray:2:1" in raw and "ray:1:2" in raw:
            ratios[f"stage{s}_2workers_vs_1worker_same_cores"] = stats(
                [raw["ray:2:1"][i][k] / raw["ray:1:2"][i][k] for i in range(n)]
            )
        if "ray:2:1" in raw and "ray:1:1" in raw:
            ratios[f"stage{s}_2workers_vs_1worker_1thread"] = stats(
                [raw["ray:2:1"][i][k] / raw["ray:1:1"][i][k] for i in range(n)]
            )
        if "plain:1:2" in raw and "plain:1:1" in raw:
            ratios[f"stage{s}_plain_2threads_vs_1thread"] = stats(
                [raw["plain:1:2"][i][k] / raw["plain:1:1"][i][k] for i in range(n)]
            )
        if "ray:1:2" in raw and "plain:1:2" in raw:
            ratios[f"stage{s}_ray1worker_vs_plain_2threads"] = stats(
                [raw["ray:1:2"][i][k] / raw["plain:1:2"][i][k] for i in range(n)]
            )
        if "ray:2:1" in raw and "plain:1:2" in raw:
            ratios[f"stage{s}_ray2workers_vs_plain_2threads"] = stats(
                [raw["ray:2:1"][i][k] / raw["plain:1:2"][i][k] for i in range(n)]
            )
    out = {"machine": machine(), "n_train": a.n_train, "overrides": OVR, "summary": summ, "ratios": ratios, "raw": raw}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(out, indent=1, default=float))
    lines = [
        "| config (kind:workers:threads) | stage 1 samples/s median [min-max] | stage 2 samples/s median [min-max] |",
        "|---|---:|---:|",
    ]
    for c, d in summ.items():
        lines.append(
            f"| {c} | {d['stage1']['median']:.1f} [{d['stage1']['min']:.1f}-{d['stage1']['max']:.1f}] | "
            f"{d['stage2']['median']:.1f} [{d['stage2']['min']:.1f}-{d['stage2']['max']:.1f}] |"
        )
    lines += ["", "| ratio | median | min | max |", "|---|---:|---:|---:|"]
    for k, v in ratios.items():
        lines.append(f"| {k} | {v['median']:.2f} | {v['min']:.2f} | {v['max']:.2f} |")
    md = "\n".join(lines) + "\n"
    print(md)
    Path(a.json).with_suffix(".md").write_text(md)


if __name__ == "__main__":
    main()
