"""Feature cache: a Ray Data job that runs the frozen speech encoder once over a labelled manifest.

    python jobs/extract_features.py MANIFEST OUT_DIR [--config demo.yaml] [--set encoder.layer=weighted ...]
        [--splits train,val,test] [--actors N] [--cpus-per-actor 1] [--gpus-per-actor 1] [--batch-size 16]
        [--dtype float16] [--overwrite] [--verbose] [--address auto]

The console shows a progress bar of the turns encoded (a line every 10 s when not on a terminal) and the cache's
summary; Ray's and the libraries' logs go to ``OUT_DIR/logs/extract.log`` (``--verbose``: on the console).
What it does, step by step: :mod:`pipeline.training.extract`; the flags: :mod:`pipeline.training.cli`.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/extract_features.py`: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.cli import exits_on_error  # noqa: E402
from pipeline.training.cli import extract_from_args, extract_parser  # noqa: E402


@exits_on_error
def main(argv: list[str] | None = None) -> dict:
    return extract_from_args(extract_parser(__doc__.split("\n\n")[0]).parse_args(argv))


if __name__ == "__main__":
    main()
