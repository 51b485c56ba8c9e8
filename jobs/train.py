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
    from pipeline.cli import add_dataclass_args
    from pipeline.training.settings import TrainSettings

    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("features", help="feature cache directory (jobs/extract_features.py)")
    ap.add_argument("--config", default=None, help="EmoQ YAML (default: emoq_model/configs/demo.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    ap.set_defaults(
        settings=add_dataclass_args(
            ap,
            TrainSettings,
            skip=("features", "fail_once"),
            storage_path="runs/ray_train",
            flags={
                "bundle_out": "--out",
                "num_workers": "--workers",
                "use_gpu": "--gpu",
                "threads_per_worker": "--threads",
                "num_to_keep": "--keep",
                "merge_llm": "--no-merge",
                "verbose": "--quiet",
            },
        )
    )
    ap.add_argument("--evaluate", default=None, metavar="SPLIT", help="evaluate the bundle on this cache split")
    ap.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    ap.add_argument("--num-cpus", type=int, default=None, help="logical CPUs of a local Ray (default >= 4)")
    return ap


def _abs(path: str | None) -> str | None:
    return path if path is None or "://" in path else os.path.abspath(path)


@exits_on_error
def main(argv: list[str] | None = None) -> dict:
    a = build_parser().parse_args(argv)
    from emoq_model.config import demo_config_path, load_config
    from pipeline.cli import dataclass_kwargs
    from pipeline.ray_env import init_ray
    from pipeline.training import TrainSettings, run_training

    cfg = load_config(a.config or demo_config_path(), a.set)
    kw = dataclass_kwargs(a, a.settings)
    kw.update(
        features=_abs(a.features),
        storage_path=_abs(kw["storage_path"]),
        bundle_out=_abs(kw["bundle_out"]),
        name=kw["name"] or f"emoq-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
    )
    settings = TrainSettings(**kw)
    init_ray(a.address, a.num_cpus)
    summary = run_training(cfg, settings)
    print(
        f"run {settings.name}: bundle {summary['bundle']} ({summary['seconds']:.0f} s); best per stage "
        f"{json.dumps(summary['best'])}; metrics {summary['metrics_file']}"
    )
    if a.evaluate:
        from pipeline.evaluation.clips import evaluate

        out = f"{os.path.abspath(summary['bundle']).rstrip('/')}_eval_{a.evaluate}"  # next to the bundle
        head = "aux" if settings.stages == (1,) else "llm"  # a stage-1-only bundle has an untrained LLM side
        report = evaluate(summary["bundle"], out, features=settings.features, split=a.evaluate, head=head)
        summary["evaluation"] = {k: report[k] for k in ("wa", "ua", "weighted_f1", "n")}
    return summary


if __name__ == "__main__":
    main()
