"""One root for the project's own errors, so a CLI (or a caller) can tell "the input or setup is wrong" (exit 2,
one line) from a bug (a traceback). Each subclass also derives from the builtin it replaces (``ValueError``,
``FileNotFoundError``), so code that caught those keeps working."""

from __future__ import annotations

__all__ = ["EmoQError", "ConfigError", "BundleError"]


class EmoQError(Exception):
    """Root of every error the project raises on purpose: bad config, bad input, unusable bundle or plan."""


class ConfigError(EmoQError, ValueError):
    """A configuration value is invalid or inconsistent (message names the key)."""


class BundleError(EmoQError, ValueError):
    """A bundle directory is missing, incomplete, of another format or inconsistent with its tokenizer."""
