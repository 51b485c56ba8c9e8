"""Input discovery: folders, globs and manifests (CSV, JSONL, Parquet) of audio files on any pyarrow filesystem.

Produces one :class:`SourceRecord` per input recording. Problems with individual rows (missing path, duplicate
ids, bad given segments) become records with ``error`` set, so every input row is accounted for in the output;
problems with the manifest as a whole (unreadable, no ``path`` column) raise :class:`ManifestError`.
"""
from __future__ import annotations

import fnmatch
import json
import posixpath
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.json as pajson
import pyarrow.parquet as pq

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".oga", ".au", ".aiff", ".aif", ".gsm", ".m4a", ".webm")
MANIFEST_EXTENSIONS = (".csv", ".jsonl", ".json", ".parquet")
MANIFEST_COLUMNS = {"path", "recording_id", "transcript", "channels", "segments"}


class ManifestError(ValueError):
    """The input as a whole is unusable (clear message for the user)."""


@dataclass
class SourceRecord:
    recording_id: str
    path: str  # absolute local path or URI understood by pyarrow.fs
    transcript: str | None = None
    channel_names: list[str] | None = None
    segments: str | None = None  # JSON list of {"start", "end", "channel"?, "transcript"?}
    error: str | None = None
    extra: dict = field(default_factory=dict)

    def to_row(self) -> dict:
        return {
            "recording_id": self.recording_id,
            "path": self.path,
            "transcript": self.transcript,
            "channel_names": ",".join(self.channel_names) if self.channel_names else None,
            "given_segments": self.segments,
            "error": self.error,
        }


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Filesystem and path for a local path or URI (s3://, gs://, hdfs://, file://)."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    import os

    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def _uri(fs: pafs.FileSystem, path: str) -> str:
    return path if isinstance(fs, pafs.LocalFileSystem) else f"{fs.type_name}://{path}"


def _recording_id_from_path(path: str, root: str) -> str:
    rel = posixpath.relpath(path, root) if root and path.startswith(root.rstrip("/") + "/") else posixpath.basename(path)
    stem, _ = posixpath.splitext(rel)
    return stem


def list_audio(uri: str) -> list[SourceRecord]:
    """Records for a folder (recursive), a single audio file or a glob pattern (``*``, ``?``, ``[]``)."""
    if any(c in uri for c in "*?["):
        base = uri
        while any(c in posixpath.basename(base) for c in "*?[") or any(c in base for c in "*?["):
            base = posixpath.dirname(base)
        fs, root = resolve(base or ".")
        _, pattern = resolve(uri)
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
        paths = sorted(i.path for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, pattern))
    else:
        fs, root = resolve(uri)
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.NotFound:
            raise ManifestError(f"input not found: {uri}")
        if info.type == pafs.FileType.File:
            return [SourceRecord(_recording_id_from_path(root, ""), _uri(fs, root))]
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
        paths = sorted(
            i.path for i in infos if i.type == pafs.FileType.File and i.path.lower().endswith(AUDIO_EXTENSIONS)
        )
    return [SourceRecord(_recording_id_from_path(p, root), _uri(fs, p)) for p in paths]


def read_manifest_table(uri: str) -> pa.Table:
    fs, path = resolve(uri)
    try:
        with fs.open_input_file(path) as f:
            if path.endswith(".parquet"):
                return pq.read_table(f)
            if path.endswith((".jsonl", ".json")):
                return pajson.read_json(f)
            # All columns as strings: values are never interpreted as options or numbers by accident.
            return pacsv.read_csv(f, convert_options=pacsv.ConvertOptions(column_types={}, strings_can_be_null=True,
                                                                          auto_dict_encode=False))
    except (OSError, pa.ArrowInvalid) as e:
        raise ManifestError(f"cannot read manifest {uri}: {e}") from None


def _str_or_none(v) -> str | None:
    if v is None:
        return None
    s = str(v)
    return s if s.strip() else None


def read_manifest(uri: str) -> list[SourceRecord]:
    """Records from a manifest with a ``path`` column and optional recording_id, transcript, channels, segments.

    Relative paths are resolved against the manifest's folder.
    """
    table = read_manifest_table(uri)
    cols = set(table.column_names)
    if "path" not in cols:
        raise ManifestError(f"manifest {uri} has no 'path' column (columns: {sorted(cols)})")
    fs, mpath = resolve(uri)
    base = posixpath.dirname(mpath)
    records = []
    for i, row in enumerate(table.to_pylist()):
        raw_path = row.get("path")
        rid = _str_or_none(row.get("recording_id"))
        if not isinstance(raw_path, str) or not raw_path.strip():
            records.append(SourceRecord(rid or f"row-{i}", str(raw_path), error=f"manifest row {i}: missing or non-text 'path'"))
            continue
        p = raw_path if ("://" in raw_path or posixpath.isabs(raw_path)) else posixpath.normpath(posixpath.join(base, raw_path))
        rec = SourceRecord(rid or _recording_id_from_path(p, base), p if "://" in p else _uri(fs, p))
        rec.transcript = _str_or_none(row.get("transcript"))
        ch = _str_or_none(row.get("channels"))
        rec.channel_names = [c.strip() for c in ch.split(",")] if ch else None
        seg = row.get("segments")
        if seg is not None and not isinstance(seg, str):
            seg = json.dumps(seg)
        rec.segments = _str_or_none(seg)
        if rec.segments:
            rec.error = validate_segments(rec.segments)
        records.append(rec)
    return records


def validate_segments(text: str) -> str | None:
    """None if ``text`` is a valid JSON segment list, else the reason."""
    try:
        segs = json.loads(text)
    except json.JSONDecodeError as e:
        return f"given segments are not valid JSON: {e}"
    if not isinstance(segs, list):
        return "given segments must be a JSON list"
    for s in segs:
        if isinstance(s, (list, tuple)) and len(s) == 2:
            s = {"start": s[0], "end": s[1]}
        if not isinstance(s, dict) or not all(isinstance(s.get(k), (int, float)) for k in ("start", "end")):
            return f"bad given segment {s!r}: needs numeric start and end"
        if not 0 <= s["start"] < s["end"]:
            return f"bad given segment {s!r}: needs 0 <= start < end"
    return None


def discover(inputs: list[str]) -> list[SourceRecord]:
    """All records for a list of folders, globs, audio files and manifests; duplicate ids become error rows."""
    records: list[SourceRecord] = []
    for uri in inputs:
        if uri.lower().endswith(MANIFEST_EXTENSIONS):
            records.extend(read_manifest(uri))
        else:
            records.extend(list_audio(uri))
    seen: dict[str, str] = {}
    for r in records:
        if r.recording_id in seen and r.error is None:
            r.error = f"duplicate recording_id (first seen for {seen[r.recording_id]})"
            r.recording_id = f"{r.recording_id}#dup{sum(1 for k in seen if k.startswith(r.recording_id))}"
        seen.setdefault(r.recording_id, r.path)
    return records
