"""What every CLI in ``jobs/`` shares: the project's own errors end the program with one line and exit code 2, and
flags derived from the config dataclasses (type, default and help come from the field, so each lives in one place)."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from collections.abc import Callable
from typing import Any

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


def field_comments(cls: type) -> dict[str, str]:
    """The inline ``# comment`` after each field of a dataclass's source: the one place a field is documented,
    reused as its CLI help (as ``simple_parsing`` does)."""
    import inspect
    import io
    import tokenize

    out: dict[str, str] = {}
    for klass in cls.__mro__:  # a subclass's own comment wins over an inherited field's
        try:
            src = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        current = None
        for tok in tokenize.generate_tokens(io.StringIO(src).readline):
            if tok.type == tokenize.NAME and tok.start[1] == 4 and current is None:
                current = tok.string
            elif tok.type == tokenize.COMMENT and current is not None:
                out.setdefault(current, tok.string.lstrip("#").strip())
            elif tok.type == tokenize.NEWLINE:
                current = None
    return out


def _parse_type(annotation: str) -> Callable[[str], Any]:
    """Argument parser of a field from its (string) annotation: ``int | None`` -> int, ``tuple[int, ...]`` -> a
    comma list, ``dict[...]`` -> JSON."""
    import json

    a = annotation.replace(" ", "")
    if a.startswith("dict"):
        return json.loads
    if a.startswith("tuple[int"):
        return lambda s: tuple(int(x) for x in s.split(",") if x)
    if a.startswith("tuple[float"):
        return lambda s: tuple(float(x) for x in s.split(",") if x)
    for name, fn in (("int", int), ("float", float)):
        if a.split("|")[0] == name:
            return fn
    return str


def add_dataclass_args(
    ap: argparse.ArgumentParser,
    cls: type,
    flags: dict[str, str | None] | None = None,
    skip: tuple[str, ...] = (),
    only: tuple[str, ...] | None = None,
    dest_prefix: str = "",
    **defaults: Any,
) -> dict[str, str]:
    """Add one ``--flag`` per field of the dataclass ``cls``, with the field's type, default and inline comment as
    help, so each default lives in one place (the dataclass). ``flags`` renames (``{"num_workers": "--workers"}``;
    for a bool field that defaults to True, its ``--no-...`` switch); ``defaults`` overrides a default for the CLI
    only (e.g. a required field's); ``only`` / ``skip`` choose the fields, ``dest_prefix`` keeps two dataclasses'
    fields apart in one namespace. Returns {field: argparse dest} for :func:`dataclass_kwargs`."""
    flags = flags or {}
    helps = field_comments(cls)
    dests: dict[str, str] = {}
    for f in dataclasses.fields(cls):
        if f.name in skip or (only is not None and f.name not in only):
            continue
        default = defaults.get(
            f.name,
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None),
        )
        ann = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        help_ = helps.get(f.name) or None
        if ann.replace(" ", "") == "bool":
            flag = flags.get(f.name) or (
                f"--no-{f.name.replace('_', '-')}" if default else f"--{f.name.replace('_', '-')}"
            )
            action = "store_false" if default else "store_true"
            help_ = f"turn off: {help_}" if default and help_ else help_
            dest = ap.add_argument(flag, dest=dest_prefix + f.name, action=action, default=default, help=help_).dest
        else:
            flag = flags.get(f.name) or f"--{f.name.replace('_', '-')}"
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            help_ = f"{help_ + ' ' if help_ else ''}(default: {shown})"
            dest = ap.add_argument(
                flag, dest=dest_prefix + f.name, type=_parse_type(ann), default=default, help=help_.replace("%", "%%")
            ).dest
        dests[f.name] = dest
    return dests


def dataclass_kwargs(a: argparse.Namespace, dests: dict[str, str]) -> dict[str, Any]:
    """The parsed values of :func:`add_dataclass_args`' flags, as keyword arguments of the dataclass."""
    return {name: getattr(a, dest) for name, dest in dests.items()}
