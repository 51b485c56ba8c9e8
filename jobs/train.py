"""Two-stage EmoQ training on Ray Train from a feature cache; exports a bundle the labeling job loads.

    python jobs/train.py FEATURES --out BUNDLE [--config demo.yaml] [--set train.stage1.epochs=20 ...]
        [--stages 1,2] [--name RUN --storage-path runs/ray_train] [--workers 2] [--cpus-per-worker 0.5]
        [--gpu --gpus-per-worker 1] [--resources-per-worker '{"CPU": 4, "GPU": 1}'] [--max-failures 2]
        [--feature-norm speaker|utterance|none] [--init-bundle B] [--evaluate test] [--address auto]

* ``FEATURES``: a cache written by ``jobs/extract_features.py`` (same encoder config as ``--config``).
* Resume an interrupted run: run the same command with the same ``--name`` and ``--storage-path`` (Ray Train V2
  restores the latest checkpoint). Without ``--name`` a fresh, timestamped run name is used.
* Worker failures are retried from the latest checkpoint ``--max-failures`` times.
* Per-epoch validation metrics: ``<storage-path>/<name>/metrics.jsonl``; checkpoints in the same folder.
* Multi-node / GPUs: only the scaling flags change, e.g. ``--workers 8 --gpu`` (one GPU each); the storage path
  and the feature cache must then be on shared storage (NFS or a URI such as ``s3://...``).
* ``--evaluate SPLIT`` evaluates the exported bundle on that split of the cache (``jobs/evaluate.py``).

Embedded (plain ``python``: a local Ray is started) or on a cluster (``RAY_ADDRESS`` / ``--address`` /
``ray job submit --working-dir . -- python jobs/train.py ...``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/train.py`: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.cli import exits_on_error  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("features", help="feature cache directory (jobs/extract_features.py)")
    ap.add_argument("--out", default=None, help="bundle directory to write (default <storage>/<name>/bundle)")
    ap.add_argument("--config", default=None, help="EmoQ YAML (default: emoq_model/configs/demo.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    ap.add_argument("--stages", default="1,2", help="1,2 (default), 1 or 2 (stage 2 alone needs --init-bundle "
                                                    "or starts from a fresh Former)")
    ap.add_argument("--name", default=None, help="run name; reuse it to resume (default: emoq-<timestamp>)")
    ap.add_argument("--storage-path", default="runs/ray_train", help="Ray Train storage (shared on multi-node)")
    ap.add_argument("--workers", type=int, default=2, help="Ray Train workers (DDP ranks)")
    ap.add_argument("--gpu", action="store_true", help="one GPU per worker (or --gpus-per-worker)")
    ap.add_argument("--cpus-per-worker", type=float, default=0.5)
    ap.add_argument("--gpus-per-worker", type=float, default=1.0)
    ap.add_argument("--resources-per-worker", default=None, help="JSON, overrides the two flags above")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per worker")
    ap.add_argument("--max-failures", type=int, default=2, help="worker-failure retries (from the last checkpoint)")
    ap.add_argument("--no-merge", action="store_true", help="do not export a LoRA-merged LLM in the bundle "
                    "(labeling then serves base + LoRA; saves a copy of the LLM's weights)")
    ap.add_argument("--keep", type=int, default=2, help="checkpoints to keep")
    ap.add_argument("--feature-norm", default="speaker", choices=("speaker", "utterance", "none"))
    ap.add_argument("--norm-min-frames", type=int, default=500)
    ap.add_argument("--norm-groups", default="channels", choices=("channels", "speaker"),
                    help="population of per-speaker statistics: call channels (real or simulated; default, as at "
                         "labeling time) or whole speakers (optimistic on class-balanced corpora)")
    ap.add_argument("--train-split", default="train")
    ap.add_argument("--val-split", default="val")
    ap.add_argument("--init-bundle", default=None, help="start from this bundle's Former")
    ap.add_argument("--limit-train", type=int, default=None, help="use only N training rows (smoke tests)")
    ap.add_argument("--evaluate", default=None, metavar="SPLIT", help="evaluate the bundle on this cache split")
    ap.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    ap.add_argument("--num-cpus", type=int, default=None, help="logical CPUs of a local Ray (default >= 4)")
    ap.add_argument("--quiet", action="store_true")
    return ap


@exits_on_error
def main(argv: list[str] | None = None) -> dict:
    a = build_parser().parse_args(argv)
    from emoq_model.config import demo_config_path, load_config
    from pipeline.ray_env import init_ray
    from pipeline.training import TrainSettings, run_training

    cfg = load_config(a.config or demo_config_path(), a.set)
    storage = a.storage_path if "://" in a.storage_path else os.path.abspath(a.storage_path)
    settings = TrainSettings(
        features=a.features if "://" in a.features else os.path.abspath(a.features),
        storage_path=storage,
        name=a.name or f"emoq-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
        stages=tuple(int(x) for x in a.stages.split(",")),
        bundle_out=None if a.out is None else (a.out if "://" in a.out else os.path.abspath(a.out)),
        num_workers=a.workers, use_gpu=a.gpu, cpus_per_worker=a.cpus_per_worker, gpus_per_worker=a.gpus_per_worker,
        resources_per_worker=json.loads(a.resources_per_worker) if a.resources_per_worker else None,
        threads_per_worker=a.threads, max_failures=a.max_failures, num_to_keep=a.keep,
        merge_llm=not a.no_merge, feature_norm=a.feature_norm, norm_min_frames=a.norm_min_frames,
        norm_groups=a.norm_groups,
        train_split=a.train_split, val_split=a.val_split, init_bundle=a.init_bundle, limit_train=a.limit_train, verbose=not a.quiet,
    )
    init_ray(a.address, a.num_cpus)
    summary = run_training(cfg, settings)
    best = summary["best"]
    print(f"run {settings.name}: bundle {summary['bundle']} ({summary['seconds']:.0f} s); best per stage "
          f"{json.dumps(best)}; metrics {summary['metrics_file']}")
    if a.evaluate:
        from pipeline.evaluation.clips import evaluate

        out = f"{os.path.abspath(summary['bundle']).rstrip('/')}_eval_{a.evaluate}"  # next to the bundle
        head = "aux" if settings.stages == (1,) else "llm"  # a stage-1-only bundle has an untrained LLM side
        report = evaluate(summary["bundle"], out, features=settings.features, split=a.evaluate, head=head)
        summary["evaluation"] = {k: report[k] for k in ("wa", "ua", "weighted_f1", "n")}
    return summary


if __name__ == "__main__":
    main()
