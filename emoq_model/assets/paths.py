"""Where offline assets (converted checkpoints, demo models, demo corpus) are built and cached."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    """Root of the asset cache: ``$EMOQ_CACHE`` or ``<repo>/.cache/emoq`` (git-ignored)."""
    root = Path(os.environ.get("EMOQ_CACHE", REPO_ROOT / ".cache" / "emoq")).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def asset_dir(name: str) -> Path:
    """Directory of one named asset inside the cache (not created)."""
    return cache_dir() / name
