"""Does the labeling job keep the Ray object store within its budget (``--object-store-mb``)?

    .venv/bin/python bench/object_store_budget.py [--calls 24] [--minutes 1] [--budgets 2048,64,16]

Corpus: ``--calls`` synthetic stereo 8 kHz calls (``pipeline.demo.calls``). After prepare, each call is a block of
16 kHz float32 speech audio (~3.5 MB per call-minute), so the corpus is far bigger than the small budgets. Each
budget runs in a fresh process (own local Ray, 4 logical CPUs, a 2 GiB object store). A sampler reads the plasma
use every 0.25 s (``memory_summary``, the same numbers ``ray memory`` prints) and the job's own
``object_store_limit_bytes``. Expectation: the peak stays near the budget (Ray Data still lets one task per
operator run when a single block is bigger than the budget), while wall time and results stay the same.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WORK, demo_bundle, machine, run_phase, save_results  # noqa: E402


def corpus(n_calls: int, minutes: float) -> str:
    from pipeline.demo.calls import make_call_archive

    root = WORK / f"budget_calls_{n_calls}_{minutes}"
    man = root / "calls.csv"
    if not man.exists():
        make_call_archive(root, n_calls=n_calls, minutes=minutes, seed=21, workers=1)
    return str(man)


def phase_run(a) -> None:
    import shutil

    import ray
    from ray._private.internal_api import memory_summary

    from pipeline.labeling.job import LabelJobConfig, run
    from pipeline.ray_env import init_ray

    init_ray(num_cpus=4, object_store_mb=2048)
    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    t0 = time.time()

    def sample():
        while not stop.is_set():
            try:
                m = re.search(r"Plasma memory usage (\d+) MiB", memory_summary(stats_only=True))
                if m:
                    samples.append((time.time() - t0, int(m.group(1))))
            except Exception:
                pass
            time.sleep(0.25)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out = WORK / "budget_out" / f"b{a.budget}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = LabelJobConfig(
        inputs=[a.manifest], output=str(out), bundle=a.bundle, batch_recordings=a.batch, object_store_limit_mb=a.budget
    )
    rep = run(cfg, log=lambda *x: None)
    stop.set()
    th.join()
    ray.shutdown()
    Path(a.out).write_text(
        json.dumps(
            {
                "budget_mb": a.budget,
                "limit_bytes_reported": rep["object_store_limit_bytes"],
                "wall_s": rep["wall_s"],
                "audio_s": rep["audio_s"],
                "labeled": rep["labeled"],
                "failed": rep["failed"],
                "segments": rep["segments"],
                "peak_plasma_mb": max((s for _, s in samples), default=None),
                "samples": len(samples),
                "trace": samples[::4],
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phase", default="driver")
    ap.add_argument("--out")
    ap.add_argument("--manifest")
    ap.add_argument("--bundle")
    ap.add_argument("--budget", type=int)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--calls", type=int, default=24)
    ap.add_argument("--minutes", type=float, default=1.0)
    ap.add_argument("--budgets", default="2048,64,16")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "object_store_budget.json"))
    a = ap.parse_args()
    if a.phase == "run":
        phase_run(a)
        return
    man, bundle = corpus(a.calls, a.minutes), demo_bundle()
    results = []
    for b in [int(x) for x in a.budgets.split(",")]:
        r = run_phase(
            str(Path(__file__).resolve()),
            "run",
            WORK / "budget" / f"res_{b}.json",
            "--manifest",
            man,
            "--bundle",
            bundle,
            "--budget",
            str(b),
            "--batch",
            str(a.batch),
            timeout=1200,
        )
        results.append(r)
        print({k: v for k, v in r.items() if k != "trace"}, flush=True)
    lines = [
        "| budget MB | limit the executor ran under MB | peak plasma MB | wall s | labelled | segments |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['budget_mb']} | {r['limit_bytes_reported'] / 2**20:.0f} | {r['peak_plasma_mb']} | "
            f"{r['wall_s']:.1f} | {r['labeled']} | {r['segments']} |"
        )
    save_results(
        a.json,
        {"machine": machine(), "calls": a.calls, "minutes": a.minutes, "batch_recordings": a.batch, "results": results},
        lines,
    )


if __name__ == "__main__":
    main()
