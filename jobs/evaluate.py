"""Evaluate a bundle on a labelled manifest or a feature cache: WA, UA, weighted F1, per-class recall, confusion.

    python jobs/evaluate.py BUNDLE OUT_DIR (--features CACHE | --manifest MANIFEST) [--split test]
        [--backend hf|vllm] [--head llm|aux] [--batch-size 32] [--name NAME] [--device cpu]

* ``--features``: a cache from ``jobs/extract_features.py`` (must match the bundle's encoder config).
  ``--manifest``: the audio is first run through the same Ray Data extraction (into ``OUT_DIR/features``).
* Feature normalisation: whatever the bundle was trained with (``feature_norm.json``). Per-speaker statistics come
  from the evaluated audio itself, never its labels, over the population labeling has (``--norm-groups channels``,
  the default and the headline protocol): one call channel each -- the cache's own groups when it was built from a
  call archive, else each speaker's utterances split into label-skewed simulated channels
  (:func:`emoq_model.features.simulated_channels`). ``--norm-groups speaker`` (all of a speaker's, usually
  class-balanced, utterances) is optimistic: report it only beside the default, named as such.
* ``--backend hf`` (default): ``EmoQModel.predict_proba`` (LLM label-token distribution). ``--backend vllm``: the
  same prompt embeddings through vLLM (``emoq_model.serving``; label tokens only). ``--head aux``: the Former's
  auxiliary classifier instead of the LLM (for stage-1-only bundles).
* Probabilities are calibrated with the bundle's temperature (fitted on validation); the report gives the expected
  calibration error before and after (``ece_uncalibrated``, ``ece``).
* Output: ``OUT_DIR/<name>.json`` (``emoq_model.metrics.classification_report`` + run info),
  ``OUT_DIR/<name>_confusion.png`` and ``OUT_DIR/<name>_predictions.parquet`` (utt_id, speaker, label,
  prediction, confidence, one probability column per label). Rows that could not be decoded are counted
  (``n_input_errors``) and left out of the metrics.
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
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
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
    ap.add_argument("--norm-groups", default="channels", choices=("channels", "speaker"),
                    help="population of per-speaker statistics: call channels (honest, default) or whole speakers "
                         "(optimistic on balanced corpora)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the simulated channels")
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return evaluate(a.bundle, a.out_dir, features=a.features, manifest=a.manifest, split=a.split or None,
                    backend=a.backend, head=a.head, batch_size=a.batch_size, name=a.name, device=a.device,
                    norm_groups=a.norm_groups, seed=a.seed)


if __name__ == "__main__":
    main()
