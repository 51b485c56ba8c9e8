"""Offline model assets built on demand into a cache directory (no hub downloads exist on this machine).

Every asset is a normal local Hugging Face directory and is loaded by the same code path a user's real
checkpoint goes through.
"""

from emoq_model.assets.paths import asset_dir, cache_dir

__all__ = ["asset_dir", "cache_dir"]
