"""Input discovery: folders, globs, manifests (CSV, JSONL, Parquet) and tar shards of audio on any pyarrow filesystem.

Produces one :class:`SourceRecord` per input recording. Problems with individual rows (missing path, bad types,
duplicate ids, bad given segments, an unparsable JSONL line) become records with ``error`` set, so every input
row is accounted for in the output; problems with an input as a whole (not found, unreadable, no ``path``
column) raise :class:`ManifestError` before any work starts.

Manifest values are data, never options: CSV cells are read as text (no type inference: ``007`` stays ``007``),
paths are only ever opened as files, and nothing is passed to a shell.

A tar shard (``.tar``, given directly, matched by a glob or found in a folder) is expanded into one record per
sample (:mod:`pipeline.shards`): ``recording_id`` ``<shard name>/<key>``, ``path`` the shard, ``member`` the audio
member's byte span; the sample's ``key.json`` gives transcript, channels and segments as a manifest row would.

File names that are not valid UTF-8 (possible on Linux) are kept: the record's ``path`` shows the name with the
bad bytes escaped (``caf\\xe9.wav``) and ``raw_path`` holds the exact bytes used to open the file.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import os
import posixpath
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from emoq_model.errors import EmoQError
from emoq_model.io import resolve, uri_of
from pipeline.audio import AUDIO_EXTENSIONS
from pipeline.shards import index_shard, is_shard

MANIFEST_EXTENSIONS = (".csv", ".jsonl", ".json", ".parquet")
MANIFEST_COLUMNS = {"path", "recording_id", "transcript", "channels", "segments"}
MAX_MANIFEST_BYTES = 4 * 1024**3
ROW_ERROR = "\x00row_error"  # key of a row's problem in read_manifest_rows (never a real column name)


class ManifestError(EmoQError, ValueError):
    """The input as a whole is unusable (clear message for the user)."""


@dataclass
class SourceRecord:
    recording_id: str
    path: str  # absolute local path or URI understood by pyarrow.fs (always valid UTF-8, see raw_path)
    transcript: str | None = None
    channel_names: list[str] | None = None
    segments: str | None = None  # JSON list of {"start", "end", "channel"?, "transcript"?}
    error: str | None = None
    extra: dict = field(default_factory=dict)  # a manifest row's or sidecar's other fields (label, speaker, ...)
    raw_path: bytes | None = None  # exact local path bytes when the name is not valid UTF-8
    member: str | None = None  # a tar shard's member: JSON MemberSpan of its bytes in ``path``

    def to_row(self) -> dict:
        return {
            "recording_id": self.recording_id,
            "path": self.path,
            "raw_path": self.raw_path,
            "member": self.member,
            "transcript": self.transcript,
            "channel_names": ",".join(self.channel_names) if self.channel_names else None,
            "given_segments": self.segments,
            "error": self.error,
        }


def clean_text(s: str) -> str:
    """``s`` as valid UTF-8 text: undecodable bytes (surrogate escapes) shown as ``\\xNN``."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _local_record(path: str, rid: str) -> SourceRecord:
    """A record for a local path that may carry undecodable bytes (surrogate escapes)."""
    shown = clean_text(path)
    raw = None if shown == path else os.fsencode(path)
    return SourceRecord(clean_text(rid), shown, raw_path=raw)


def _recording_id_from_path(path: str, root: str) -> str:
    rel = (
        posixpath.relpath(path, root) if root and path.startswith(root.rstrip("/") + "/") else posixpath.basename(path)
    )
    stem, _ = posixpath.splitext(rel)
    return stem


def _walk_local(root: str) -> list[str]:
    """Every file below ``root`` (str paths; names that are not UTF-8 come back with surrogate escapes).

    Symlinked folders are followed, each real folder once (no loops)."""
    out, seen = [], set()
    for d, dirs, files in os.walk(root, followlinks=True):
        try:
            st = os.stat(d)
        except OSError:
            dirs[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()
        out.extend(os.path.join(d, f) for f in files)
    return sorted(out)


def _has_magic(s: str) -> bool:
    return any(c in s for c in "*?[")


def _is_input(path: str) -> bool:
    return path.lower().endswith(AUDIO_EXTENSIONS) or is_shard(path)


def _expand(records: list[SourceRecord]) -> list[SourceRecord]:
    """Each tar shard among ``records`` replaced by the records of its samples."""
    out: list[SourceRecord] = []
    for r in records:
        out.extend(shard_records(r) if is_shard(r.path) and r.error is None else [r])
    return out


def shard_records(shard: SourceRecord) -> list[SourceRecord]:
    """One record per sample of a tar shard (``shard``: the record the shard file itself would be)."""
    records = []
    for s in index_shard(shard.path, shard.raw_path):
        rid = f"{shard.recording_id}/{s.key}" if s.key else shard.recording_id
        rec = SourceRecord(rid, shard.path, raw_path=shard.raw_path, error=s.error)
        if s.audio is not None:
            rec.member = s.audio.to_json()
        meta = dict(s.meta)
        if isinstance(meta.get("recording_id"), str) and meta["recording_id"].strip():
            rec.recording_id = clean_text(meta.pop("recording_id"))
        _apply_fields(rec, meta, f"sample {s.key!r}")
        records.append(rec)
    return records


def list_audio(uri: str) -> list[SourceRecord]:
    """Records for a folder (recursive), a single audio file or tar shard, or a glob pattern (``*``, ``?``,
    ``[]``); tar shards are expanded into their samples."""
    return _expand(_list_files(uri))


def _list_files(uri: str) -> list[SourceRecord]:
    if _has_magic(uri):
        base = uri
        while _has_magic(base):
            base = posixpath.dirname(base)
        fs, root = resolve(base or ".")
        _, pattern = resolve(uri)
        if isinstance(fs, pafs.LocalFileSystem):
            return [
                _local_record(p, _recording_id_from_path(p, root))
                for p in _walk_local(root)
                if fnmatch.fnmatchcase(p, pattern)
            ]
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
        paths = sorted(i.path for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatchcase(i.path, pattern))
        return [SourceRecord(_recording_id_from_path(p, root), uri_of(fs, p)) for p in paths]
    fs, root = resolve(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        if not os.path.lexists(root):
            raise ManifestError(f"input not found: {uri}")
        if not os.path.isdir(root):
            return [_local_record(root, _recording_id_from_path(root, ""))]
        return [_local_record(p, _recording_id_from_path(p, root)) for p in _walk_local(root) if _is_input(p)]
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise ManifestError(f"input not found: {uri}")
    if info.type == pafs.FileType.File:
        return [SourceRecord(_recording_id_from_path(root, ""), uri_of(fs, root))]
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    paths = sorted(i.path for i in infos if i.type == pafs.FileType.File and _is_input(i.path))
    return [SourceRecord(_recording_id_from_path(p, root), uri_of(fs, p)) for p in paths]


def _read_text(fs: pafs.FileSystem, path: str, uri: str) -> str:
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise ManifestError(f"manifest not found: {uri}")
    if info.type != pafs.FileType.File:
        raise ManifestError(f"manifest {uri} is not a regular file")
    if info.size is not None and info.size > MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest {uri} is {info.size} bytes, over the limit of {MAX_MANIFEST_BYTES}")
    with fs.open_input_stream(path) as f:
        data = f.read()
    # utf-8-sig drops an Excel byte-order mark; undecodable bytes survive as surrogate escapes (see clean_text)
    return data.decode("utf-8-sig" if data.startswith(b"\xef\xbb\xbf") else "utf-8", "surrogateescape")


class _BadLine(str):
    """A JSONL line that did not parse (kept apart from a line that is a JSON string)."""


def read_manifest_rows(uri: str) -> tuple[list[str], list[dict | str]]:
    """(column names, rows) of a manifest; a row is a dict of values (with ``ROW_ERROR`` set if it is unusable),
    or a string saying why a row could not be read at all.

    CSV cells are text (empty cells None); JSONL is parsed line by line, so one bad line is one bad row.
    """
    fs, path = resolve(uri)
    low = path.lower()
    try:
        if low.endswith(".parquet"):
            with fs.open_input_file(path) as f:
                table = pq.read_table(f)
            return list(table.column_names), table.to_pylist()
        text = _read_text(fs, path, uri)
    except ManifestError:
        raise
    except (OSError, pa.ArrowInvalid, ValueError) as e:
        raise ManifestError(f"cannot read manifest {uri}: {e}") from None
    if low.endswith((".jsonl", ".json")):
        stripped = text.lstrip()
        if stripped.startswith("["):  # a JSON array of objects
            try:
                items = json.loads(stripped)
            except json.JSONDecodeError as e:
                raise ManifestError(f"manifest {uri} is not valid JSON: {e}") from None
            lines = [(i + 1, it) for i, it in enumerate(items)]
        else:
            lines = []
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    lines.append((n, json.loads(line)))
                except json.JSONDecodeError as e:
                    lines.append((n, _BadLine(f"manifest line {n}: invalid JSON ({e.msg})")))
        rows: list[dict | str] = []
        cols: list[str] = []
        for n, it in lines:
            if isinstance(it, dict):
                cols.extend(k for k in it if k not in cols)
                rows.append(it)
            else:
                rows.append(str(it) if isinstance(it, _BadLine) else f"manifest line {n}: not a JSON object")
        return cols, rows
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise ManifestError(f"manifest {uri} is empty") from None
    except csv.Error as e:
        raise ManifestError(f"cannot read manifest {uri}: {e}") from None
    cols = [h.strip() for h in header]
    rows = []
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as e:  # e.g. a NUL byte: one bad row, the reader carries on with the next line
            rows.append(f"manifest line {reader.line_num}: {e}")
            continue
        if not any(c.strip() for c in cells):
            continue
        r = {k: (v if v != "" else None) for k, v in zip(cols, cells)}
        if len(cells) > len(cols):
            r[ROW_ERROR] = f"manifest line {reader.line_num}: {len(cells)} cells for {len(cols)} columns"
        rows.append(r)
    return cols, rows


def read_manifest_table(uri: str) -> pa.Table:
    """The manifest as a table of its usable rows (all CSV columns as text)."""
    cols, rows = read_manifest_rows(uri)
    good = [
        {c: (_str_or_none(r.get(c)) if not isinstance(r.get(c), (list, dict)) else json.dumps(r.get(c))) for c in cols}
        for r in rows
        if isinstance(r, dict) and ROW_ERROR not in r
    ]
    return pa.Table.from_pylist(good, schema=pa.schema([(c, pa.string()) for c in cols]))


def _str_or_none(v) -> str | None:
    if v is None or (isinstance(v, float) and v != v):  # None / NaN
        return None
    s = clean_text(str(v))
    return s if s.strip() else None


def _channels(v) -> list[str] | None:
    if isinstance(v, (list, tuple)):
        names = [clean_text(str(c)).strip() for c in v]
    else:
        s = _str_or_none(v)
        names = [c.strip() for c in s.split(",")] if s else []
    return names or None


def read_manifest(uri: str, required: tuple[str, ...] = ()) -> list[SourceRecord]:
    """Records from a manifest with a ``path`` column and optional recording_id, transcript, channels, segments.

    Relative paths are resolved against the manifest's folder. ``required``: further columns the caller needs
    (feature extraction: label, speaker, split, ...); a manifest without them is refused before any row is used.
    """
    cols, rows = read_manifest_rows(uri)
    if "path" not in cols:
        raise ManifestError(f"manifest {uri} has no 'path' column (columns: {sorted(cols)})")
    missing = [c for c in required if c not in cols]
    if missing:
        raise ManifestError(f"{uri}: manifest lacks required columns {missing}")
    fs, mpath = resolve(uri)
    base = posixpath.dirname(mpath)
    local = isinstance(fs, pafs.LocalFileSystem)
    records = []
    for i, row in enumerate(rows):
        if isinstance(row, str):
            records.append(SourceRecord(f"row-{i}", "", error=row))
            continue
        raw_path = row.get("path")
        rid = _str_or_none(row.get("recording_id")) if not isinstance(row.get("recording_id"), (list, dict)) else None
        if ROW_ERROR in row:
            records.append(
                SourceRecord(clean_text(rid) if rid else f"row-{i}", "", error=row[ROW_ERROR], extra=_extra(row))
            )
            continue
        if not isinstance(raw_path, str) or not raw_path.strip():
            shown = "" if raw_path is None else clean_text(raw_path if isinstance(raw_path, str) else repr(raw_path))
            why = f"manifest row {i}: missing or non-text 'path' ({shown or 'empty'})"
            records.append(SourceRecord(rid or f"row-{i}", shown, error=why, extra=_extra(row)))
            continue
        p = (
            raw_path
            if ("://" in raw_path or posixpath.isabs(raw_path))
            else posixpath.normpath(posixpath.join(base, raw_path))
        )
        if "://" in p:
            rec = SourceRecord(clean_text(rid or _recording_id_from_path(p, base)), clean_text(p))
        elif local:
            rec = _local_record(p, rid or _recording_id_from_path(p, base))
        else:
            rec = SourceRecord(clean_text(rid or _recording_id_from_path(p, base)), uri_of(fs, clean_text(p)))
        _apply_fields(rec, row, f"manifest row {i}")
        records.append(rec)
    return records


def _apply_fields(rec: SourceRecord, row: dict, where: str) -> None:
    """A manifest row's or sidecar's transcript, channels and segments onto ``rec`` (a bad value is the record's
    error); the remaining fields go to ``rec.extra`` as text."""
    tr = row.get("transcript")
    rec.transcript = _str_or_none(tr) if not isinstance(tr, (list, dict)) else None
    if isinstance(tr, (list, dict)):
        rec.error = rec.error or f"{where}: 'transcript' must be text"
    rec.channel_names = _channels(row.get("channels"))
    seg = row.get("segments")
    if seg is not None and not isinstance(seg, str):
        try:
            seg = json.dumps(seg)
        except (TypeError, ValueError):
            seg = None
            rec.error = rec.error or f"{where}: 'segments' is not JSON-serialisable"
    rec.segments = _str_or_none(seg)
    if rec.segments and not rec.error:
        rec.error = validate_segments(rec.segments)
    rec.extra = _extra(row)


def _extra(row: dict) -> dict:
    """A row's fields other than the labeling columns, as text (label, speaker, split, utt_id, ...)."""
    return {
        k: _str_or_none(v) if not isinstance(v, (list, dict)) else json.dumps(v)
        for k, v in row.items()
        if k not in MANIFEST_COLUMNS and k != ROW_ERROR
    }


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
        if not isinstance(s, dict) or not all(
            isinstance(s.get(k), (int, float)) and not isinstance(s.get(k), bool) for k in ("start", "end")
        ):
            return f"bad given segment {s!r}: needs numeric start and end"
        if not 0 <= s["start"] < s["end"] < float("inf"):
            return f"bad given segment {s!r}: needs 0 <= start < end"
    return None


def _input_key(r: SourceRecord) -> tuple:
    """What makes two inputs the same work: the file (resolved) and the options given with it."""
    path = r.raw_path or r.path
    if r.raw_path is None and "://" not in r.path:
        path = os.path.normpath(r.path)
    return (path, r.member, r.transcript, tuple(r.channel_names or ()), r.segments)


def discover(inputs: list[str]) -> list[SourceRecord]:
    """All records for a list of folders, globs, audio files and manifests.

    Every input row yields exactly one record, in input order. A repeated recording id, or the same file listed
    again with the same options under another id, becomes an error record with a unique id (``<id>#dup<n>``).
    """
    records: list[SourceRecord] = []
    for uri in inputs:
        if uri.lower().endswith(MANIFEST_EXTENSIONS):
            records.extend(read_manifest(uri))
        else:
            records.extend(list_audio(uri))
    ids: set[str] = {r.recording_id for r in records}
    first_id: dict[str, str] = {}
    first_input: dict[tuple, str] = {}
    dup_count: dict[str, int] = {}
    for r in records:
        rid = r.recording_id
        if rid in first_id:
            r.error = r.error or f"duplicate recording_id (first seen for {first_id[rid]})"
            n = dup_count.get(rid, 0) + 1
            while f"{rid}#dup{n}" in ids:
                n += 1
            dup_count[rid] = n
            r.recording_id = f"{rid}#dup{n}"
            ids.add(r.recording_id)
            first_id[r.recording_id] = r.path
            continue
        first_id[rid] = r.path
        if r.error is None and r.path:
            key = _input_key(r)
            if key in first_input:
                r.error = f"duplicate input: same file and options as recording_id {first_input[key]!r}"
            else:
                first_input[key] = rid
    return records
