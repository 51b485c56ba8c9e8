"""Real English speech with transcripts: the Asterisk core prompts (Debian, CC-BY-SA-3.0, one female speaker).

``asterisk-core-sounds-en-wav`` holds 568 8 kHz WAV prompts (~25 min) under
``usr/share/asterisk/sounds/en_US_f_Allison/`` (top level plus ``digits/``, ``letters/``, ``phonetic/``,
``dictate/``, ``followme/``, ``silence/``); ``asterisk-core-sounds-en`` holds their transcripts in
``usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz`` as ``name: transcript`` lines. Both are fetched
with ``apt-get download`` and unpacked with ``dpkg -x`` into ``asset_dir("asterisk-sounds")`` (no root install).
"""

from __future__ import annotations

import gzip
import subprocess
import tempfile
from pathlib import Path

from emoq_model.assets.paths import asset_dir, build_atomically

ASSET_NAME = "asterisk-sounds"
PACKAGES = ("asterisk-core-sounds-en-wav", "asterisk-core-sounds-en")
_SOUNDS = Path("usr/share/asterisk/sounds/en_US_f_Allison")
_TRANSCRIPTS = Path("usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")


def _download(packages: tuple[str, ...], into: Path) -> list[Path]:
    """``apt-get download`` the packages into ``into``; runs ``apt-get update`` once only if the first try fails."""
    cmd = ["apt-get", "download", *packages]
    run = subprocess.run(cmd, cwd=into, capture_output=True, text=True)
    if run.returncode != 0:
        subprocess.run(["apt-get", "update"], capture_output=True, text=True)
        run = subprocess.run(cmd, cwd=into, capture_output=True, text=True)
    debs = sorted(into.glob("*.deb"))
    if run.returncode != 0 or len(debs) != len(packages):
        raise RuntimeError(f"apt-get download {' '.join(packages)} failed: {run.stderr.strip()[-2000:]}")
    return debs


def asterisk_sounds_dir(force: bool = False) -> Path:
    """Directory of the Asterisk English prompts (``*.wav``, 8 kHz mono), fetched and unpacked on first use.

    Built like every asset: unpacked into a temporary sibling that is renamed into place when complete.
    """
    root = build_atomically(asset_dir(ASSET_NAME), {"asset": ASSET_NAME, "packages": list(PACKAGES)}, _fetch, force)
    return root / _SOUNDS


def _fetch(tree: Path) -> None:
    """Download the Debian packages and unpack them into ``tree``."""
    with tempfile.TemporaryDirectory() as debs:
        for deb in _download(PACKAGES, Path(debs)):
            subprocess.run(["dpkg", "-x", str(deb), str(tree)], check=True, capture_output=True)
    if not (tree / _SOUNDS).is_dir() or not (tree / _TRANSCRIPTS).is_file():
        raise RuntimeError(f"unexpected package layout: {_SOUNDS} or {_TRANSCRIPTS} missing")


def asterisk_transcripts() -> dict[str, str]:
    """Transcripts keyed by the prompt's path relative to :func:`asterisk_sounds_dir` without extension.

    Examples: ``"vm-goodbye"``, ``"digits/1"``. Non-speech prompts are transcribed in brackets
    (``"beep": "[this is a simple beep tone]"``); some transcribed names have no WAV file and vice versa.
    """
    asterisk_sounds_dir()  # fetch on first use
    path = asset_dir(ASSET_NAME) / _TRANSCRIPTS
    out: dict[str, str] = {}
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            name, sep, text = line.partition(":")
            if sep and not line.startswith(";") and name.strip() and " " not in name.strip():
                out[name.strip()] = text.strip()
    return out
