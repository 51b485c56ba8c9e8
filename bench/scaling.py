"""Memory and throughput of the labeling job at 1k / 5k / 20k small files.

    .venv/bin/python bench/scaling.py [--sizes 1000,5000,20000] [--cap-s 330] [--json bench/results/scaling.json]

Files: real speech clips of 0.5-1.2 s (asterisk-core-sounds, 8 kHz WAV), reused through a manifest with distinct
recording ids (the pipeline decodes every row again; the OS page cache makes the reads cheap, as on any warm disk).
Each size runs in a fresh process (embedded local Ray, 4 logical CPUs, default job config: object-store cap 1 GiB).
A sampler thread records every second: RSS summed over the driver and all its descendants (Ray GCS, raylet,
workers, vLLM engine processes), the largest single process, and the plasma object-store use reported by Ray.
A size that runs past ``--cap-s`` is stopped; its memory trace and the rows written so far are still reported.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WORK, asterisk_clips, demo_bundle, machine, run_phase, save_results  # noqa: E402


def manifest(n: int) -> str:
    import pandas as pd

    p = WORK / "scaling" / f"manifest_{n}.csv"
    if not p.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
        clips = asterisk_clips(0.5, 1.2)
        # the job refuses a second row with the same file and options ("duplicate input"): a distinct transcript per
        # row makes each a distinct input; the demo config ignores transcripts (prompt.include_transcript=false)
        rows = [
            {"recording_id": f"r{i:06d}", "path": clips[i % len(clips)][0], "transcript": f"copy {i}"} for i in range(n)
        ]
        pd.DataFrame(rows).to_csv(p, index=False)
    return str(p)


class Sampler(threading.Thread):
    def __init__(self, period: float = 1.0):
        super().__init__(daemon=True)
        self.period, self.samples, self.stop_flag = period, [], False
        self.t0 = time.time()

    def run(self):
        import psutil

        me = psutil.Process()
        while not self.stop_flag:
            total, biggest, n = 0, 0, 0
            for p in [me] + me.children(recursive=True):
                try:
                    r = p.memory_info().rss
                except psutil.Error:
                    continue
                total += r
                biggest = max(biggest, r)
                n += 1
            plasma = None
            try:
                import ray
                from ray._private.internal_api import memory_summary

                if ray.is_initialized():
                    m = re.search(r"Plasma memory usage (\d+) MiB", memory_summary(stats_only=True))
                    plasma = int(m.group(1)) if m else None
            except Exception:
                pass
            self.samples.append(
                {
                    "t": round(time.time() - self.t0, 1),
                    "rss_mb": total / 2**20,
                    "max_proc_mb": biggest / 2**20,
                    "procs": n,
                    "plasma_mb": plasma,
                }
            )
            time.sleep(self.period)


def phase_run(a) -> None:
    from pipeline.labeling.job import LabelJobConfig, StageResources, run
    from pipeline.ray_env import init_ray

    out = Path(a.out)
    samp = Sampler()
    samp.start()
    init_ray(num_cpus=4)
    outdir = WORK / "scaling" / f"out_{a.n}"
    import shutil

    shutil.rmtree(outdir, ignore_errors=True)
    extra = json.loads(a.job) if a.job else {}
    for k in ("encode", "label"):  # {"encode": {"actors": 2}} -> StageResources(actors=2)
        if k in extra:
            extra[k] = StageResources(**extra[k])
    cfg = LabelJobConfig(inputs=[a.manifest], output=str(outdir), bundle=a.bundle, **extra)
    res = {"n": a.n}

    def dump(final: bool):
        s = samp.samples
        res.update(
            final=final,
            samples=s,
            peak_rss_mb=max(x["rss_mb"] for x in s),
            peak_max_proc_mb=max(x["max_proc_mb"] for x in s),
            peak_plasma_mb=max((x["plasma_mb"] or 0) for x in s),
        )
        # steady phase: the second half of the run (after start-up)
        half = [x for x in s if x["t"] >= s[-1]["t"] / 2]
        res["rss_mb_second_half_mean"] = sum(x["rss_mb"] for x in half) / len(half)
        out.write_text(json.dumps(res, default=float))

    def partial():  # rows written so far (for a run stopped at the cap)
        import pyarrow.parquet as pq

        from pipeline.labeling.sink import segments_dir

        try:
            d = Path(segments_dir(str(outdir)))
            return len(
                {
                    r
                    for f in d.glob("part-*.parquet")
                    for r in pq.read_table(f, columns=["recording_id"]).column(0).to_pylist()
                }
            )
        except Exception:
            return None

    finished = threading.Event()

    def watchdog():
        while not finished.wait(5):
            try:
                from pipeline.labeling.sink import segments_dir

                res["part_files_so_far"] = len(list(Path(segments_dir(str(outdir))).glob("part-*.parquet")))
            except Exception:
                pass
            res["elapsed_s"] = time.time() - samp.t0
            dump(False)

    threading.Thread(target=watchdog, daemon=True).start()
    t0 = time.time()
    box = {}
    th = threading.Thread(target=lambda: box.update(rep=run(cfg, log=lambda *x: None)), daemon=True)
    th.start()
    th.join(timeout=a.cap_s)
    if th.is_alive():  # over the cap: keep what was measured, stop our own Ray, exit
        res["recordings_done_so_far"] = partial()
        res["elapsed_s"] = time.time() - t0
        samp.stop_flag = True
        dump(False)
        import ray

        ray.shutdown()
        os._exit(0)
    rep = box["rep"]
    res.update(
        wall_s=time.time() - t0,
        audio_s=rep["audio_s"],
        labeled=rep["labeled"],
        failed=rep["failed"],
        segments=rep["segments"],
        files_per_s=(rep["labeled"] + rep["failed"]) / (time.time() - t0),
        audio_s_per_s=rep["audio_s"] / (time.time() - t0),
    )
    time.sleep(1.5)
    samp.stop_flag = True
    finished.set()
    dump(True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phase", default="driver")
    ap.add_argument("--out")
    ap.add_argument("--n", type=int)
    ap.add_argument("--manifest")
    ap.add_argument("--bundle")
    ap.add_argument("--sizes", default="1000,5000,20000")
    ap.add_argument("--cap-s", type=float, default=330)
    ap.add_argument("--job", default="", help='JSON LabelJobConfig overrides, e.g. {"encode": {"actors": 2}}')
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "scaling.json"))
    a = ap.parse_args()
    if a.phase == "run":
        phase_run(a)
        return
    bundle = demo_bundle()
    results = []
    for n in [int(x) for x in a.sizes.split(",")]:
        out = WORK / "scaling" / f"res_{n}.json"
        t0 = time.perf_counter()
        try:
            r = run_phase(
                str(Path(__file__).resolve()),
                "run",
                out,
                "--n",
                str(n),
                "--manifest",
                manifest(n),
                "--bundle",
                bundle,
                "--cap-s",
                str(a.cap_s),
                "--job",
                a.job,
                timeout=a.cap_s + 180,
            )
        except Exception as e:  # timeout: the partial trace the run kept writing
            r = json.loads(out.read_text()) if out.exists() else {"n": n}
            r["stopped"] = f"{type(e).__name__} after {time.perf_counter() - t0:.0f} s"
        results.append(r)
        print({k: v for k, v in r.items() if k != "samples"}, flush=True)
    lines = [
        "| files | wall s | files/s | audio s/s | peak RSS all procs MB | RSS 2nd half mean MB | "
        "largest proc MB | peak plasma MB | done |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['n']} | {r.get('wall_s', r.get('elapsed_s', float('nan'))):.0f} | "
            f"{r.get('files_per_s', float('nan')):.1f} | {r.get('audio_s_per_s', float('nan')):.1f} | "
            f"{r.get('peak_rss_mb', float('nan')):.0f} | {r.get('rss_mb_second_half_mean', float('nan')):.0f} | "
            f"{r.get('peak_max_proc_mb', float('nan')):.0f} | {r.get('peak_plasma_mb', float('nan')):.0f} | "
            f"{'yes' if r.get('wall_s') else 'stopped at cap, ' + str(r.get('recordings_done_so_far')) + ' done'} |"
        )
    save_results(a.json, {"machine": machine(), "results": results}, lines)


if __name__ == "__main__":
    main()
