"""Corpus recipes: on-disk layouts of IEMOCAP and MELD, and labelled call archives, -> the project's manifest."""

from pipeline.recipes.common import MANIFEST_COLUMNS
from pipeline.recipes.iemocap import (
    IEMOCAP_LABEL_MAP,
    IEMOCAP_LABELS,
    iemocap_folds,
    iemocap_manifest,
    iemocap_split,
    read_iemocap,
)
from pipeline.recipes.manifest import call_archive_manifest, load_manifest, write_manifest
from pipeline.recipes.meld import MELD_LABELS, fix_mojibake, meld_manifest

__all__ = [
    "MANIFEST_COLUMNS",
    "IEMOCAP_LABELS",
    "IEMOCAP_LABEL_MAP",
    "read_iemocap",
    "iemocap_split",
    "iemocap_manifest",
    "iemocap_folds",
    "MELD_LABELS",
    "meld_manifest",
    "fix_mojibake",
    "write_manifest",
    "load_manifest",
    "call_archive_manifest",
]
