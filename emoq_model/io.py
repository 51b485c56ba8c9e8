"""Shared file I/O: URI resolution and write-to-temporary-then-rename, in one place.

Every output of the project (label parts, summaries, feature caches, manifests, reports, bundles) is written so
that a reader sees the old file or the complete new one, never a half-written one: a crash or a kill mid-write
leaves at most a temporary name that the next run ignores or cleans. Paths may be local or any URI that
``pyarrow.fs`` resolves (``s3://``, ``gs://``, ``hdfs://``, ``file://``).
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import shutil
import uuid
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

__all__ = [
    "resolve",
    "uri_of",
    "join",
    "exists",
    "read_text",
    "write_bytes",
    "write_text",
    "write_json",
    "write_parquet",
    "atomic_path",
    "publish_dir",
    "TEMP_PREFIX",
]

TEMP_PREFIX = ".tmp-"  # temporary files in an output directory start with this; readers skip them


def resolve(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """Filesystem and path for a local path or URI (s3://, gs://, hdfs://, file://)."""
    uri = os.fspath(uri)
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def uri_of(fs: pafs.FileSystem, path: str) -> str:
    """The URI that :func:`resolve` maps back to ``(fs, path)``."""
    return path if isinstance(fs, pafs.LocalFileSystem) else f"{fs.type_name}://{path}"


def join(uri: str | os.PathLike, *parts: str) -> str:
    uri = os.fspath(uri)
    if "://" in uri:
        return "/".join([uri.rstrip("/"), *parts])
    return os.path.join(uri, *parts)


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_text(uri: str) -> str:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read().decode("utf-8")


def _paths(fs: pafs.FileSystem):
    return os.path if isinstance(fs, pafs.LocalFileSystem) else posixpath


def _temp_name(fs: pafs.FileSystem, path: str) -> str:
    """A sibling of ``path`` (same directory, so the rename stays on one filesystem)."""
    d, base = _paths(fs).split(path)
    return _paths(fs).join(d, f"{TEMP_PREFIX}{uuid.uuid4().hex}-{base}")


def _via_temporary(uri: str | os.PathLike, write) -> str:
    """``write(fs, tmp)`` fills a temporary sibling of ``uri``, which is then renamed to it (removed on failure)."""
    fs, path = resolve(uri)
    fs.create_dir(_paths(fs).dirname(path), recursive=True)
    tmp = _temp_name(fs, path)
    try:
        write(fs, tmp)
        fs.move(tmp, path)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.delete_file(tmp)
        raise
    return path


def write_bytes(uri: str | os.PathLike, data: bytes) -> str:
    """Write ``data`` to ``uri`` through a temporary name in the same directory and a rename; returns the path."""

    def write(fs: pafs.FileSystem, tmp: str) -> None:
        with fs.open_output_stream(tmp) as f:
            f.write(data)

    return _via_temporary(uri, write)


def write_text(uri: str | os.PathLike, text: str) -> str:
    return write_bytes(uri, text.encode("utf-8"))


def write_json(uri: str | os.PathLike, obj, indent: int | None = 2) -> str:
    """JSON with ``allow_nan=False``: a NaN in a report is a bug to surface, not a value to write."""
    return write_text(uri, json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False) + "\n")


def write_parquet(table: pa.Table, uri: str | os.PathLike) -> str:
    return _via_temporary(uri, lambda fs, tmp: pq.write_table(table, tmp, filesystem=fs))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """A temporary local path to write ``path`` with any writer (pandas, soundfile, matplotlib); renamed into place
    when the block succeeds, removed when it fails. The temporary name keeps the suffix (writers pick formats
    from it)."""
    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    d, base = os.path.split(path)
    tmp = os.path.join(d, f"{TEMP_PREFIX}{uuid.uuid4().hex}-{base}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            if os.path.isdir(tmp):
                shutil.rmtree(tmp)
            else:
                os.remove(tmp)


def publish_dir(src: str, dest: str | os.PathLike) -> str:
    """Copy the local directory ``src`` to ``dest`` (local or URI). Locally the copy is built under a temporary
    name and swapped in, so ``dest`` is the old or the new directory, never a mix."""
    dest = os.fspath(dest)
    if "://" in dest:
        fs, path = resolve(dest)
        pafs.copy_files(src, path, destination_filesystem=fs)
        return dest
    dest = os.path.abspath(dest)
    with atomic_path(dest) as tmp:
        shutil.copytree(src, tmp)
        if os.path.exists(dest):
            shutil.rmtree(dest)
    return dest
