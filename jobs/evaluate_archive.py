"""Score a labelled archive against per-turn ground truth (per segment, time-weighted, coverage, per channel role).

    python jobs/evaluate_archive.py LABELS_DIR TRUTH [--out DIR] [--name NAME] [--min-overlap 0.5]
        [--labels neutral,happy,angry,sad] [--calm-label neutral] [--timelines 3] [--ci-resamples 2000]
        [--baseline OTHER_LABELS_DIR]

``LABELS_DIR``: the output of ``jobs/label_corpus.py`` (``segments/part-*.parquet``). ``TRUTH``: CSV or Parquet,
one row per turn (recording_id, channel, start_s, end_s, label[, channel_name]), e.g. the ``segments.csv`` of
``pipeline/demo/calls.py``. Writes ``<DIR>/<NAME>.json``, ``<NAME>_confusion.png``, ``<NAME>_segments.parquet``
and ``timelines/<id>.png`` (predicted and truth lanes of the first N evaluated recordings) (default ``DIR``:
``LABELS_DIR/eval``). The report carries 95 % intervals of the segment scores from resampling whole recordings
(``ci``; ``--ci-resamples 0``: none). ``--baseline``: another labeling of the same archive (another bundle, a
precision option) is scored too (into ``<DIR>/baseline``) and this one is compared with it per score, with the
interval of the difference from resampling the recordings once for both (``comparison`` in the JSON). Semantics:
``pipeline/evaluation/archive.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/evaluate_archive.py`: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.cli import exits_on_error  # noqa: E402


@exits_on_error
def main(argv: list[str] | None = None) -> dict:
    from emoq_model.io import write_json
    from pipeline.evaluation.archive import (
        compare_to_baseline,
        evaluate_archive,
        format_archive_report,
        format_comparison,
    )

    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("labels_dir")
    ap.add_argument("truth")
    ap.add_argument("--out", default=None, help="output folder (default LABELS_DIR/eval)")
    ap.add_argument("--name", default="archive")
    ap.add_argument(
        "--min-overlap",
        type=float,
        default=0.5,
        help="a segment overlapping truth speech for less than this share of its duration is a false alarm",
    )
    ap.add_argument("--labels", default=None, help="comma-separated label order (default: the model's)")
    ap.add_argument("--calm-label", default="neutral")
    ap.add_argument(
        "--timelines",
        type=int,
        default=3,
        metavar="N",
        help="timeline pictures (predicted vs truth lanes) of the first N evaluated recordings; 0: none",
    )
    ap.add_argument(
        "--ci-resamples",
        type=int,
        default=2000,
        metavar="N",
        help="bootstrap resamples of the recordings for the 95%% intervals of the segment scores; 0: none",
    )
    ap.add_argument(
        "--baseline",
        default=None,
        metavar="OTHER_LABELS_DIR",
        help="compare with another labeling of the same archive (paired intervals of the difference)",
    )
    a = ap.parse_args(argv)
    if a.timelines < 0:
        ap.error(f"--timelines must be >= 0, got {a.timelines}")
    if a.ci_resamples < 0:
        ap.error(f"--ci-resamples must be >= 0, got {a.ci_resamples}")
    out = a.out or os.path.join(a.labels_dir, "eval")
    report = evaluate_archive(
        a.labels_dir,
        a.truth,
        out_dir=out,
        name=a.name,
        min_overlap=a.min_overlap,
        label_names=a.labels.split(",") if a.labels else None,
        calm_label=a.calm_label,
        timelines=a.timelines,
        ci_resamples=a.ci_resamples,
    )
    print(format_archive_report(report))
    if a.baseline:
        kw = dict(name=a.name, min_overlap=a.min_overlap, calm_label=a.calm_label, timelines=0, ci_resamples=0)
        labels = report["labels"]  # the same label order on both sides
        base = evaluate_archive(a.baseline, a.truth, out_dir=os.path.join(out, "baseline"), label_names=labels, **kw)
        report["comparison"] = compare_to_baseline(
            report["files"]["segments"], base["files"]["segments"], n_resamples=a.ci_resamples or 2000
        )
        report["comparison_baseline"] = os.path.abspath(a.baseline)
        write_json(report["files"]["json"], report)
        print(format_comparison(report["comparison"], a.baseline))
    print(json.dumps(report["files"]))
    return report


if __name__ == "__main__":
    main()
