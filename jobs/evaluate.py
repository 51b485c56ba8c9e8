"""Evaluate a bundle on a labelled manifest or a feature cache: WA, UA, weighted F1, per-class recall, confusion.

    python jobs/evaluate.py BUNDLE OUT_DIR (--features CACHE | --manifest MANIFEST) [--split test]
        [--backend hf|vllm] [--head llm|aux] [--batch-size 32] [--name NAME] [--device cpu]
        [--norm-groups channels|speaker] [--ci-resamples 2000]

What it does, step by step: :mod:`pipeline.evaluation.clips` (this file only parses the arguments).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/evaluate.py`: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.cli import exits_on_error  # noqa: E402
from pipeline.evaluation.clips import evaluate


@exits_on_error
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("bundle")
    ap.add_argument("out_dir")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--features", help="feature cache (jobs/extract_features.py)")
    src.add_argument("--manifest", help="labelled manifest (audio is encoded first, with Ray Data)")
    ap.add_argument("--split", default="test", help="split to evaluate ('' = all rows)")
    ap.add_argument("--backend", default="hf", choices=("hf", "vllm"))
    ap.add_argument("--head", default="llm", choices=("llm", "aux"))
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--name", default=None, help="report name (default <split>_<backend>)")
    ap.add_argument("--device", default=None, help="override the bundle's device (cpu, cuda)")
    ap.add_argument(
        "--norm-groups",
        default="channels",
        choices=("channels", "speaker"),
        help="population of per-speaker statistics: call channels (honest, default) or whole speakers "
        "(optimistic on balanced corpora)",
    )
    ap.add_argument("--seed", type=int, default=0, help="seed of the simulated channels")
    ap.add_argument(
        "--ci-resamples",
        type=int,
        default=2000,
        help="bootstrap resamples of the held-out recordings (calls) or speakers for 95%% intervals (0: none)",
    )
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return evaluate(
        a.bundle,
        a.out_dir,
        features=a.features,
        manifest=a.manifest,
        split=a.split or None,
        backend=a.backend,
        head=a.head,
        batch_size=a.batch_size,
        name=a.name,
        device=a.device,
        norm_groups=a.norm_groups,
        seed=a.seed,
        ci_resamples=a.ci_resamples,
    )


if __name__ == "__main__":
    main()
