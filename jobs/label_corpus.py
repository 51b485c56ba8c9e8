"""Label emotions in a corpus of recordings: folders, globs, audio files or manifests → Parquet.

    ray job submit --working-dir . -- python jobs/label_corpus.py /data/calls --bundle /models/emoq --output /out
    python jobs/label_corpus.py calls.csv --bundle runs/demo/bundle --output out/   # embedded local Ray

Reruns on the same ``--output`` resume: recordings already written are skipped. The console shows progress and a
final table; Ray's, vLLM's and transformers' logs go to ``<output>/logs/label.log`` (``--verbose``: all on the
console, as the libraries print them).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.cli import exits_on_error  # noqa: E402
from pipeline.labeling.cli import config_from_args, print_report  # noqa: E402
from pipeline.labeling.cli import parse_args as _parse_args  # noqa: E402
from pipeline.labeling.job import run  # noqa: E402

__all__ = ["config_from_args", "main", "parse_args"]


def parse_args(argv: list[str] | None = None):
    return _parse_args(argv, description=__doc__)


@exits_on_error
def main(argv: list[str] | None = None) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    a = parse_args(argv)
    from pipeline.console import default_log_path, line_buffered, note_ray_session, quiet_logs
    from pipeline.ray_env import init_ray

    line_buffered()
    cfg = config_from_args(a)  # a bad flag fails here, before Ray starts
    with quiet_logs(default_log_path(a.output, "label"), a.verbose) as log_path:
        init_ray(a.address, log_to_driver=a.verbose)
        note_ray_session()
        report = run(cfg, progress=not a.verbose)  # an unusable input as a whole: exits_on_error prints one line
        print_report(report, log_path)
    return report


if __name__ == "__main__":
    main()
