"""The embedded demo, end to end on this machine (local Ray, offline assets), evaluated as it would be deployed:

1. build the offline assets (real Whisper tiny.en converted from CTranslate2, a small Qwen2 LLM, all-MiniLM-L6-v2),
2. synthesize labelled training calls (stereo 8 kHz; every channel its own skewed emotion mix; other services'
   wording), validation calls (unseen speakers) and the evaluation archive (unseen speakers again, the call-centre
   scripts: calm, escalating, upset, sad, pleased, grieving),
3. extract frozen-encoder features of every labelled turn with Ray Data,
4. train EmoQ in two stages with Ray Train (best epoch and the calibration temperature from the validation calls),
5. label the evaluation archive with Ray Data + vLLM,
6. score the labels against the archive's per-turn truth (``jobs/evaluate_archive.py``) and print it.

Every step is cached or resumable: a second run reuses the calls, features and bundle and skips labelled
recordings. ``--fresh`` retrains. Outputs go under ``--workdir`` (default ``runs/demo``). Ray's, vLLM's and the
workers' logs go to ``<workdir>/logs/demo.log`` (labeling: ``<workdir>/labels/logs/label.log``); ``--verbose``
prints them on the console instead. The steps live in ``pipeline/demo/run.py``.

    python jobs/demo.py [--workdir runs/demo] [--fresh] [--verbose] [--modality fused|speech|text]
                        [--set train.stage1.ema=0.99 ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.cli import add_dataclass_args, dataclass_kwargs, exits_on_error  # noqa: E402
from pipeline.demo.run import DemoConfig, run_demo  # noqa: E402


def parse_args(argv: list[str] | None = None) -> DemoConfig:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    dests = add_dataclass_args(ap, DemoConfig, skip=("overrides",))
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a model/training config override after the demo's own (repeatable; a change retrains)",
    )
    a = ap.parse_args(argv)
    return DemoConfig(**dataclass_kwargs(a, dests), overrides=tuple(a.overrides))


@exits_on_error
def main(argv: list[str] | None = None) -> dict:
    return run_demo(parse_args(argv))


if __name__ == "__main__":
    main()
