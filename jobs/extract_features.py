"""Feature cache: a Ray Data job that runs the frozen speech encoder once over a labelled manifest.

    python jobs/extract_features.py MANIFEST OUT_DIR [--config demo.yaml] [--set encoder.layer=weighted ...]
        [--splits train,val,test] [--actors N] [--cpus-per-actor 1] [--gpus-per-actor 1] [--batch-size 16]
        [--dtype float16] [--overwrite] [--address auto]

What it does, step by step: :mod:`pipeline.training.extract` (this file only parses the arguments).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/extract_features.py`: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.cli import exits_on_error  # noqa: E402
from pipeline.training.extract import extract_features


@exits_on_error
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "manifest",
        help="labelled manifest (CSV / JSONL / Parquet: utt_id, path, label, transcript, speaker, split) or tar "
        "shards (a .tar, a folder or glob of them; labels from each sample's key.json); local or a URI (s3://...)",
    )
    ap.add_argument("out_dir", help="feature cache directory (local path or pyarrow URI)")
    ap.add_argument("--config", default=None, help="EmoQ YAML (default: emoq_model/configs/demo.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    ap.add_argument("--splits", default=None, help="comma list of splits to extract (default: all)")
    ap.add_argument("--actors", type=int, default=None, help="encoder actors (default: 1 on CPU, #GPUs on GPU)")
    ap.add_argument("--cpus-per-actor", type=float, default=None, help="default 0.5 (CPU) / 1 (GPU actors)")
    ap.add_argument("--gpus-per-actor", type=float, default=0.0, help="> 0: encoder actors on GPUs")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per CPU actor")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    ap.add_argument("--limit", type=int, default=None, help="only the first N rows (smoke tests)")
    ap.add_argument(
        "--asr-model",
        default=None,
        metavar="WHISPER_DIR",
        help="transcripts from this ASR instead of the manifest's (train as served; meta.json gets the WER)",
    )
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    ap.add_argument("--num-cpus", type=int, default=None, help="logical CPUs of a local Ray (default >= 4)")
    a = ap.parse_args(argv)

    from emoq_model.config import demo_config_path, load_config
    from pipeline.ray_env import init_ray

    cfg = load_config(a.config or demo_config_path(), a.set, check_assets=False)
    init_ray(a.address, a.num_cpus)
    meta = extract_features(
        a.manifest,
        a.out_dir,
        cfg,
        splits=a.splits.split(",") if a.splits else None,
        actors=a.actors,
        cpus_per_actor=a.cpus_per_actor,
        gpus_per_actor=a.gpus_per_actor,
        batch_size=a.batch_size,
        dtype=a.dtype,
        threads=a.threads,
        overwrite=a.overwrite,
        limit=a.limit,
        asr_model=a.asr_model,
    )
    print(json.dumps({k: v for k, v in meta.items() if k not in ("encoder", "errors")}, indent=1))
    if meta["n_errors"]:
        print(f"{meta['n_errors']} error rows, e.g. {meta['errors'][:3]}")
    return meta


if __name__ == "__main__":
    main()
