"""Where offline assets (converted checkpoints, demo models, demo corpus) are built and cached."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

SPEC_FILE = "emoq_asset.json"  # the build spec of an asset directory, written last
REPO_ROOT = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    """Root of the asset cache: ``$EMOQ_CACHE`` or ``<repo>/.cache/emoq`` (git-ignored)."""
    root = Path(os.environ.get("EMOQ_CACHE", REPO_ROOT / ".cache" / "emoq")).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def asset_dir(name: str) -> Path:
    """Directory of one named asset inside the cache (not created)."""
    return cache_dir() / name


def read_spec(path: Path) -> dict | None:
    try:
        return json.loads((Path(path) / SPEC_FILE).read_text())
    except (OSError, ValueError):
        return None


def build_atomically(out: Path, spec: dict, write: Callable[[Path], None], force: bool = False) -> Path:
    """Reuse ``out`` when its ``emoq_asset.json`` equals ``spec`` (and not ``force``); else build it.

    ``write(tmp)`` fills a fresh temporary sibling directory, the spec file is written last, and the directory
    is renamed into place: readers never see a half-written asset, and concurrent builders of the same spec
    are harmless (the loser discards its copy). An existing directory with another spec is replaced.
    """
    out = Path(out).expanduser().resolve()
    if not force and read_spec(out) == spec:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        write(tmp)
        (tmp / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n")
        _publish(tmp, out, spec, force)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _publish(tmp: Path, out: Path, spec: dict, force: bool) -> None:
    """Rename ``tmp`` to ``out``; replace an existing ``out`` whose spec differs (or when forced)."""
    try:
        os.rename(tmp, out)
        return
    except OSError:
        if not out.exists():
            raise
    if not force and read_spec(out) == spec:  # a concurrent builder won the race with the same result
        return
    trash = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.rename(out, trash)
    os.rename(tmp, out)
    shutil.rmtree(trash, ignore_errors=True)
