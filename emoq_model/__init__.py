"""EmoQ: a frozen speech encoder -> EmoQ-Former (queries over speech frames, fused with the transcript) -> soft
prompt -> a causal LLM that answers with one emotion label.

    from emoq_model import EmoQConfig, EmoQModel, load_bundle, load_config

Names resolve on first use: ``import emoq_model.config`` stays free of torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__all__ = [
    "EmoQConfig",
    "load_config",
    "EmoQModel",
    "EmoQBatch",
    "collate_features",
    "load_bundle",
    "save_bundle",
    "read_meta",
    "EmoQError",
    "ConfigError",
    "BundleError",
]

_WHERE = {
    "EmoQConfig": "emoq_model.config",
    "load_config": "emoq_model.config",
    "EmoQModel": "emoq_model.model",
    "EmoQBatch": "emoq_model.batch",
    "collate_features": "emoq_model.batch",
    "load_bundle": "emoq_model.bundle",
    "save_bundle": "emoq_model.bundle",
    "read_meta": "emoq_model.bundle",
    "EmoQError": "emoq_model.errors",
    "ConfigError": "emoq_model.errors",
    "BundleError": "emoq_model.errors",
}

if TYPE_CHECKING:
    from emoq_model.batch import EmoQBatch, collate_features
    from emoq_model.bundle import load_bundle, read_meta, save_bundle
    from emoq_model.config import EmoQConfig, load_config
    from emoq_model.errors import BundleError, ConfigError, EmoQError
    from emoq_model.model import EmoQModel


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'emoq_model' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
