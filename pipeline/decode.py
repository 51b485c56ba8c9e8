"""One guarded decode path for every job: open a recording, check it from its header, decode and resample.

Labeling (:mod:`pipeline.labeling.prepare`) and feature extraction (:mod:`pipeline.training.extract`) both read
audio through :func:`load_recording`, so a file that one job refuses the other refuses with the same message, and
a turn cut for training is cut from exactly the samples labeling sees. A recording is

* a local path (``raw_path``: the exact bytes of a name that is not valid UTF-8),
* a URI on any pyarrow filesystem (``s3://``, ``gs://``, ``hdfs://``, ``file://``), or
* a member of a tar shard (``member``: its byte span inside the shard, see :mod:`pipeline.shards`): the member is
  read through a window on the shard, never extracted or read whole.

Limits are checked before any sample is decoded: a FIFO or device is refused without reading, a file over
``max_bytes`` without opening it further, a header over ``max_duration_s`` / ``max_channels`` / the decoded-size
budget without decoding; the block-wise decode then stops as soon as it passes the duration limit.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow.fs as pafs

from emoq_model.io import resolve
from pipeline import audio

__all__ = ["DecodeLimits", "MemberSpan", "open_file", "open_source", "read_bytes", "check_header", "load_recording"]


@dataclass
class DecodeLimits:
    """What a job accepts as a recording; everything outside is an error row with the reason."""

    sample_rate: int = 16000  # the encoder's rate: recordings are resampled to it
    max_duration_s: float = 4 * 3600.0  # longer recordings are refused from the header, before decoding
    max_bytes: int = 2 * 1024**3  # larger files (or tar members) are refused before reading
    max_decoded_mb: float = 4096.0  # refuse if channels x duration at ``sample_rate`` (float32) is larger
    max_channels: int = 4
    min_sample_rate: int = 4000
    max_sample_rate: int = 384000
    allow_truncated: bool = False  # True: use what a truncated WAV holds instead of refusing it


@dataclass(frozen=True)
class MemberSpan:
    """A tar member's data inside its shard: ``size`` bytes from byte ``offset``."""

    name: str
    offset: int
    size: int

    def to_json(self) -> str:
        import json

        return json.dumps({"name": self.name, "offset": self.offset, "size": self.size})

    @classmethod
    def from_json(cls, text: str) -> MemberSpan:
        import json

        d = json.loads(text)
        return cls(str(d["name"]), int(d["offset"]), int(d["size"]))


class _Window(io.RawIOBase):
    """A read-only, seekable view of ``size`` bytes from ``offset`` of an open file (a tar member in its shard)."""

    def __init__(self, f, offset: int, size: int):
        self._f, self._offset, self._size, self._pos = f, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, b) -> int:
        n = max(0, min(len(b), self._size - self._pos))
        if n == 0:
            return 0
        self._f.seek(self._offset + self._pos)
        data = self._f.read(n)
        b[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()


def _check_regular(st: os.stat_result) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise audio.AudioError("not a regular file (a directory)")
    if not stat.S_ISREG(st.st_mode):  # FIFOs, devices, sockets: reading could block forever or never end
        raise audio.AudioError("not a regular file (a pipe, device or socket)")


def open_file(uri: str, raw_path: bytes | None):
    """(open seekable binary file, its size) of a regular file; raises :class:`audio.AudioError` with the reason."""
    fs, path = resolve(uri) if raw_path is None else (pafs.LocalFileSystem(), None)
    if isinstance(fs, pafs.LocalFileSystem):
        local = raw_path if raw_path is not None else path
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused right after by fstat
            fd = os.open(local, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            if os.path.lexists(local):
                raise audio.AudioError("broken symbolic link (target missing)") from None
            raise audio.AudioError("file not found (missing or vanished)") from None
        except IsADirectoryError:
            raise audio.AudioError("not a regular file (a directory)") from None
        except OSError as e:
            raise audio.AudioError(f"cannot read file: {e.strerror or e}") from None
        try:
            st = os.fstat(fd)
            _check_regular(st)
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return os.fdopen(fd, "rb"), st.st_size
    try:
        info = fs.get_file_info(path)
    except OSError as e:
        raise audio.AudioError(f"cannot read file: {e}") from None
    if info.type == pafs.FileType.NotFound:
        raise audio.AudioError("file not found (missing or vanished)")
    if info.type != pafs.FileType.File:
        raise audio.AudioError("not a regular file")
    try:
        return fs.open_input_file(path), info.size
    except FileNotFoundError:
        raise audio.AudioError("file not found (missing or vanished)") from None
    except OSError as e:
        raise audio.AudioError(f"cannot read file: {e}") from None


def open_source(uri: str, max_bytes: int, raw_path: bytes | None = None, member: MemberSpan | None = None):
    """An open, seekable binary file for a recording, after checking it is a regular file (or a whole tar member)
    within ``max_bytes``. Raises :class:`audio.AudioError` with the reason (missing, vanished, broken link, not a
    file, empty, too large, member cut off by a truncated shard)."""
    f, size = open_file(uri, raw_path)
    try:
        if member is not None:
            if size is not None and member.offset + member.size > size:
                held = max(0, size - member.offset)
                raise audio.AudioError(
                    f"truncated tar shard: member {member.name!r} holds {held} of its {member.size} bytes"
                )
            size = member.size
            f = io.BufferedReader(_Window(f, member.offset, member.size))
        if size == 0:
            raise audio.AudioError("empty file (0 bytes)")
        if size is not None and size > max_bytes:
            raise audio.AudioError(f"file is {size} bytes, over the limit of {max_bytes}")
    except BaseException:
        f.close()
        raise
    return f


def read_bytes(uri: str, max_bytes: int, raw_path: bytes | None = None, member: MemberSpan | None = None) -> bytes:
    """The whole file or member (small files only: sidecars; audio streams through :func:`open_source`)."""
    with open_source(uri, max_bytes, raw_path, member) as f:
        try:
            return f.read()
        except OSError as e:
            raise audio.AudioError(f"cannot read file: {e}") from None


def check_header(h: audio.Header, limits: DecodeLimits) -> None:
    """Refuse a recording from its header alone: rate, channels, duration and decoded size limits."""
    if not limits.min_sample_rate <= h.sample_rate <= limits.max_sample_rate:
        raise audio.AudioError(
            f"sample rate {h.sample_rate} Hz outside [{limits.min_sample_rate}, {limits.max_sample_rate}]"
        )
    if h.channels > limits.max_channels:
        raise audio.AudioError(f"{h.channels} channels, more than the limit of {limits.max_channels}")
    audio.check_duration(h.duration_s, limits.max_duration_s)
    decoded_mb = h.channels * h.duration_s * limits.sample_rate * 4 / 2**20
    if decoded_mb > limits.max_decoded_mb:
        raise audio.AudioError(
            f"{h.channels} channels x {h.duration_s:.0f} s would decode to {decoded_mb:.0f} MB, "
            f"over the limit of {limits.max_decoded_mb:.0f} MB"
        )
    if h.truncated and not limits.allow_truncated:
        raise audio.AudioError(h.truncation_message())


def load_recording(
    uri: str,
    limits: DecodeLimits,
    raw_path: bytes | None = None,
    member: MemberSpan | None = None,
    on_header: Callable[[audio.Header], None] | None = None,
) -> tuple[audio.Header, audio.Audio]:
    """(header as found, audio ``[channels, frames]`` at ``limits.sample_rate``) of one recording.

    Raises :class:`audio.AudioError` (a user-facing reason) for anything unusable; the caller turns it into the
    recording's error row. ``on_header`` sees the header before it is checked (so an error row can still say what
    the file is)."""
    with open_source(uri, limits.max_bytes, raw_path, member) as f:
        h = audio.probe_file(f)
        if on_header is not None:
            on_header(h)
        check_header(h, limits)  # nothing decoded yet
        rec = audio.decode_file(
            f, limits.max_duration_s, target_rate=limits.sample_rate, allow_truncated=limits.allow_truncated, header=h
        )
    return h, rec
