"""Two-stage EmoQ training on Ray Train from a feature cache; exports a bundle the labeling job loads.

    python jobs/train.py FEATURES --out BUNDLE [--config demo.yaml] [--set train.stage1.epochs=20 ...]
        [--stages 1,2] [--name RUN --storage-path runs/ray_train] [--workers 2] [--cpus-per-worker 0.5]
        [--gpu --gpus-per-worker 1] [--resources-per-worker '{"CPU": 4, "GPU": 1}'] [--max-failures 2]
        [--feature-norm speaker|utterance|none] [--init-bundle B] [--evaluate test] [--verbose] [--address auto]

* ``FEATURES``: a cache written by ``jobs/extract_features.py`` (same encoder config as ``--config``).
* Resume an interrupted run: run the same command with the same ``--name`` and ``--storage-path`` (Ray Train V2
  restores the latest checkpoint). Without ``--name`` a fresh, timestamped run name is used.
* Worker failures are retried from the latest checkpoint ``--max-failures`` times.
* Per-epoch validation metrics: ``<storage-path>/<name>/metrics.jsonl``; checkpoints in the same folder. The
  console shows a progress bar over all epochs with each epoch's line; Ray's and the libraries' logs go to
  ``<storage-path>/<name>/logs/train.log`` (``--verbose``: on the console, with the workers' own lines).
* Multi-node / GPUs: only the scaling flags change, e.g. ``--workers 8 --gpu`` (one GPU each); the storage path
  and the feature cache must then be on shared storage (NFS or a URI such as ``s3://...``).
* ``--evaluate SPLIT`` evaluates the exported bundle on that split of the cache (``jobs/evaluate.py``).

Embedded (plain ``python``: a local Ray is started) or on a cluster (``RAY_ADDRESS`` / ``--address`` /
``ray job submit --working-dir . -- python jobs/train.py ...``).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/train.py`: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.cli import exits_on_error  # noqa: E402
from pipeline.training.cli import train_from_args, train_parser  # noqa: E402


@exits_on_error
def main(argv: list[str] | None = None) -> dict:
    return train_from_args(train_parser(__doc__.split("\n\n")[0]).parse_args(argv))


if __name__ == "__main__":
    main()
