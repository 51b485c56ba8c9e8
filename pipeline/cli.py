"""What every CLI in ``jobs/`` shares: the project's own errors end the program with one line and exit code 2."""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable

from emoq_model.errors import EmoQError


def exits_on_error(main: Callable) -> Callable:
    """Wrap a job's ``main(argv)``: an :class:`EmoQError` (bad config, input, bundle, plan) prints ``error: ...``
    to stderr and exits 2 instead of a traceback; anything else is a bug and keeps its traceback."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None):
        try:
            return main(argv)
        except EmoQError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
