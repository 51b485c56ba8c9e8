"""WebDataset-style tar shards as input: one recording per sample key, indexed without extracting anything.

A shard is a plain tar (local or on any pyarrow filesystem) whose members are grouped into samples by key, as
WebDataset does: ``calls/0001.wav`` + ``calls/0001.json`` are the sample ``calls/0001`` (the key is the member
name up to the first dot of its base name). A sample has one audio member (``.wav``, ``.flac``, ... : any of
:data:`pipeline.audio.AUDIO_EXTENSIONS`) and optionally

* ``key.json``: ``transcript``, ``channels``, ``segments`` (as in a labeling manifest), ``label``, ``speaker``,
  ``split``, ``recording_id``, ``utt_id``, ``channel``/``segment_start_s``/``segment_end_s`` (one training turn);
  any other field is kept;
* ``key.txt``: the transcript, when the JSON gives none.

Indexing reads only the tar headers (the shard is seeked, so a 1 GB shard on S3 costs one small ranged read per
member, not a download) and records each audio member's byte span (:class:`~pipeline.decode.MemberSpan`); the
decode later reads that span through a window (:func:`pipeline.decode.open_source`). Every sample is a record:
a corrupt or undecodable member fails at decode time as that recording's error row; a member cut off by a
truncated shard, a sample without audio, an unreadable sidecar, or a shard whose tail cannot be parsed (a
truncated or corrupt header) each give an error record, so no member of a shard is ever silently lost.

Ray Data's ``read_webdataset`` is not used for this: it streams the tar in one task and raises on a truncated
shard (the whole shard is lost), and it reads every member's bytes, where labeling wants the header-first limits
of the one decode path.
"""

from __future__ import annotations

import io
import json
import posixpath
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from emoq_model.io import write_bytes
from pipeline import audio
from pipeline.decode import MemberSpan, open_file

__all__ = ["SHARD_EXTENSIONS", "ShardSample", "index_shard", "is_shard", "write_shard"]

SHARD_EXTENSIONS = (".tar",)
MAX_SIDECAR_BYTES = 1 << 20  # a key.json / key.txt larger than this is an error, not read
TAIL_CHECK_BYTES = 1 << 16  # bytes after the last parsed header checked for a corrupt or cut-off tail


def is_shard(path: str) -> bool:
    return path.lower().endswith(SHARD_EXTENSIONS)


@dataclass
class ShardSample:
    """One sample (recording) of a shard: its key, the audio member's span and the sidecar's fields."""

    key: str
    audio: MemberSpan | None = None
    meta: dict = field(default_factory=dict)
    error: str | None = None


def _split_name(name: str) -> tuple[str, str]:
    """WebDataset's key / extension split: ``a/b.seg.wav`` -> (``a/b``, ``seg.wav``)."""
    d, base = posixpath.split(name)
    stem, dot, ext = base.partition(".")
    return posixpath.join(d, stem) if d else stem, ext.lower() if dot else ""


def _is_audio(ext: str) -> bool:
    return ("." + ext.rsplit(".", 1)[-1]) in audio.AUDIO_EXTENSIONS if ext else False


def _read_member(f, m: tarfile.TarInfo) -> bytes:
    if m.size > MAX_SIDECAR_BYTES:
        raise audio.AudioError(f"sidecar {m.name!r} is {m.size} bytes, over the limit of {MAX_SIDECAR_BYTES}")
    f.seek(m.offset_data)
    data = f.read(m.size)
    if len(data) < m.size:
        raise audio.AudioError(f"truncated tar shard: sidecar {m.name!r} holds {len(data)} of {m.size} bytes")
    return data


def index_shard(uri: str, raw_path: bytes | None = None) -> list[ShardSample]:
    """The samples of one shard, in member order. Problems with the shard as a whole (missing, not a tar) are one
    error sample with key ``""``; a tail that cannot be parsed is an error sample keyed ``@<byte offset>``."""
    try:
        f, size = open_file(uri, raw_path)
    except audio.AudioError as e:
        return [ShardSample("", error=f"tar shard: {e}")]
    with f:
        try:
            tf = tarfile.open(fileobj=f, mode="r:")
        except (tarfile.TarError, OSError, EOFError) as e:
            return [ShardSample("", error=f"not a readable tar shard: {e}")]
        members: list[tarfile.TarInfo] = []
        tail_error = None
        try:
            for m in tf:
                members.append(m)
        except (tarfile.TarError, OSError, EOFError) as e:
            tail_error = str(e)
        stop = tf.offset  # where parsing ended: the end-of-archive blocks of a sound shard
        if size is not None and stop >= size:  # the last member was cut off: that member's error says so
            tail_error = None
        if tail_error is None and size is not None and stop < size:
            f.seek(stop)
            if f.read(TAIL_CHECK_BYTES).strip(b"\0"):
                tail_error = "a header that cannot be parsed (truncated or corrupt)"
        samples: dict[str, ShardSample] = {}
        for m in members:
            key, ext = _split_name(m.name)
            if m.isdir() or not key:
                continue
            s = samples.setdefault(key, ShardSample(key))
            try:
                if not m.isfile():
                    if _is_audio(ext):
                        raise audio.AudioError(f"tar member {m.name!r} is a link or device, not a file")
                    continue
                if size is not None and m.offset_data + m.size > size:
                    held = max(0, size - m.offset_data)
                    raise audio.AudioError(f"truncated tar shard: member {m.name!r} holds {held} of {m.size} bytes")
                if _is_audio(ext):
                    if s.audio is not None:
                        raise audio.AudioError(f"two audio members for one key: {s.audio.name!r} and {m.name!r}")
                    s.audio = MemberSpan(m.name, m.offset_data, m.size)
                elif ext == "json":
                    meta = json.loads(_read_member(f, m).decode("utf-8", "surrogateescape"))
                    if not isinstance(meta, dict):
                        raise audio.AudioError(f"sidecar {m.name!r} is not a JSON object")
                    s.meta = {**meta, **s.meta}
                elif ext == "txt":
                    s.meta.setdefault("transcript_txt", _read_member(f, m).decode("utf-8", "replace").strip())
            except json.JSONDecodeError as e:
                s.error = s.error or f"sidecar {m.name!r} is not valid JSON: {e.msg}"
            except audio.AudioError as e:
                s.error = s.error or str(e)
        out = list(samples.values())
        for s in out:
            if "transcript_txt" in s.meta:
                txt = s.meta.pop("transcript_txt")
                s.meta.setdefault("transcript", txt or None)
            if s.audio is None and s.error is None:
                s.error = "sample has no audio member"
        if tail_error is not None:
            out.append(
                ShardSample(
                    f"@{stop}",
                    error=f"tar shard unreadable after byte {stop} ({tail_error}): "
                    "the members after it could not be read",
                )
            )
        if not out:
            out.append(ShardSample("", error="tar shard holds no samples"))
        return out


def write_shard(uri: str, samples: Iterable[tuple[str, Mapping[str, bytes]]]) -> str:
    """Write a WebDataset-style shard: for each ``(key, {extension: bytes})`` the members ``key.extension`` in
    order (e.g. ``("call1", {"wav": ..., "json": ...})``). Local or a URI; written to a temporary name, then
    renamed (:mod:`emoq_model.io`)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    write_bytes(uri, buf.getvalue())
    return uri
