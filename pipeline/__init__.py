"""EmoQ on Ray: the data flows around the model.

    from pipeline import label_corpus, train, evaluate, evaluate_archive, extract_features

* :func:`label_corpus`: archive -> per-segment labels (Ray Data + vLLM), :mod:`pipeline.labeling`;
* :func:`extract_features` and :func:`train`: labelled audio -> feature cache -> two-stage training (Ray Train),
  :mod:`pipeline.training`;
* :func:`evaluate` (clips of a labelled manifest or cache) and :func:`evaluate_archive` (a labeling output against
  per-turn truth), :mod:`pipeline.evaluation`;
* synthetic demo data: :mod:`pipeline.demo`; corpus recipes (IEMOCAP, MELD, labelled calls): :mod:`pipeline.recipes`.

Names resolve on first use, so ``import pipeline.labeling.sources`` in a Ray worker loads no model code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__all__ = [
    "label_corpus",
    "train",
    "extract_features",
    "evaluate",
    "evaluate_archive",
    "LabelJobConfig",
    "StageResources",
    "TrainSettings",
]

_WHERE = {
    "label_corpus": "pipeline.api",
    "train": "pipeline.api",
    "extract_features": "pipeline.api",
    "evaluate": "pipeline.evaluation.clips",
    "evaluate_archive": "pipeline.evaluation.archive",
    "LabelJobConfig": "pipeline.labeling.job",
    "StageResources": "pipeline.labeling.job",
    "TrainSettings": "pipeline.training.settings",
}

if TYPE_CHECKING:
    from pipeline.api import extract_features, label_corpus, train
    from pipeline.evaluation.archive import evaluate_archive
    from pipeline.evaluation.clips import evaluate
    from pipeline.labeling.job import LabelJobConfig, StageResources
    from pipeline.training.settings import TrainSettings


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
