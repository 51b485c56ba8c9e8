"""Parquet output: atomic part files of complete recordings, resume bookkeeping and per-channel summaries.

Layout under the output directory::

    segments/part-<hash>.parquet   one row per segment, and one row per recording without segments (error set)
    summary.parquet                per recording and channel (rebuilt from all segment files at the end of each run)
    timelines/<id>.png             timeline pictures of the first few recordings (pipeline.evaluation.timeline)

Each part file holds whole recordings only, either all labelled or all failed (error rows), and appears complete
or not at all (written to a temporary name in
the same folder, then renamed). A recording is done once it appears in any part file: reruns skip it. Output
file names are hashes of the (sorted) recording ids a part holds: ids cannot steer where files go (``../x`` is
just hashed), and a retried write of the same batch (a task re-run after a worker died) replaces the same file
instead of adding a second copy. A part file that cannot be read (e.g. damaged by hand) is moved aside as
``.corrupt-<name>`` and its recordings are labelled again. Failed recordings are kept apart from labelled ones
so that ``--retry-failed`` can drop their part files whole. One job at a time per output directory.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from emoq_model.io import TEMP_PREFIX, join, resolve, uri_of, write_parquet
from pipeline.labeling import columns as C

SEGMENT_SCHEMA = pa.schema(
    [
        ("recording_id", pa.string()),
        ("path", pa.string()),
        ("channel", pa.string()),
        ("channel_index", pa.int32()),
        ("segment_index", pa.int32()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("label", pa.string()),
        ("confidence", pa.float32()),
        ("probabilities", pa.map_(pa.string(), pa.float32())),
        ("label_mass", pa.float32()),
        ("transcript", pa.string()),
        ("recording_duration_s", pa.float64()),
        ("model_id", pa.string()),
        ("error", pa.string()),
    ]
)


def segments_dir(out_uri: str) -> str:
    return out_uri.rstrip("/") + "/segments"


def part_files(fs: pafs.FileSystem, root: str) -> list[pafs.FileInfo]:
    """The finished part files under ``root`` (temporary and set-aside files excluded), sorted by name."""
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    return sorted(
        (
            i
            for i in infos
            if i.type == pafs.FileType.File and i.base_name.startswith("part-") and i.base_name.endswith(".parquet")
        ),
        key=lambda i: i.base_name,
    )


def recording_counts(out_uri: str, quarantine: bool = True) -> dict[str, int]:
    """Recording id -> number of part files holding it (exactly-once output: every count is 1).

    Unreadable part files are moved aside (``.corrupt-<name>``) when ``quarantine``, else skipped.
    """
    fs, root = resolve(segments_dir(out_uri))
    counts: dict[str, int] = {}
    for info in part_files(fs, root):
        try:
            ids = pq.read_table(info.path, columns=["recording_id"], filesystem=fs).column(0).to_pylist()
        except (OSError, pa.ArrowException) as e:
            if quarantine:
                fs.move(info.path, f"{root}/.corrupt-{info.base_name}")
                print(f"[sink] unreadable part file {info.base_name} moved aside ({e}); its recordings are redone")
            continue
        for rid in set(ids):
            counts[rid] = counts.get(rid, 0) + 1
    return counts


def completed_recordings(out_uri: str) -> set[str]:
    """Recording ids present in finished part files (temporary files are ignored, unreadable ones set aside)."""
    return set(recording_counts(out_uri))


def clean_temporary(out_uri: str) -> int:
    """Remove temporary files left by an interrupted run (call before a run starts); returns how many."""
    n = 0
    for d in (segments_dir(out_uri), out_uri):
        fs, root = resolve(d)
        for info in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
            if info.type == pafs.FileType.File and info.base_name.startswith(TEMP_PREFIX):
                fs.delete_file(info.path)
                n += 1
    return n


def part_name(recording_ids) -> str:
    """File name of the part holding exactly these recordings (order-independent, unambiguous)."""
    key = json.dumps(sorted(str(r) for r in recording_ids), ensure_ascii=True).encode()
    return f"part-{hashlib.sha1(key).hexdigest()[:24]}.parquet"


def write_atomic(table: pa.Table, dir_uri: str, name_hint: bytes | None = None, name: str | None = None) -> str:
    """Write ``table`` as ``name`` (default ``part-<sha1(name_hint)>.parquet``) in ``dir_uri`` via a temporary
    file and a rename, so that the file appears complete or not at all and a rewrite replaces it."""
    fs, root = resolve(dir_uri)
    fs.create_dir(root, recursive=True)
    if name is None:
        name = f"part-{hashlib.sha1(name_hint).hexdigest()[:20]}.parquet"
    if "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"bad part file name {name!r}")
    return write_parquet(table, uri_of(fs, f"{root}/{name}"))


def _mass(rec: dict, i: int) -> float | None:
    m = rec.get("label_mass")
    v = None if m is None else float(m[i])
    return None if v is None or not np.isfinite(v) else v


def segment_rows(rec: dict, labels: list[str], model_id: str) -> list[dict]:
    """Output rows of one labelled recording (see ``SEGMENT_SCHEMA``)."""
    names = rec["channel_names"].split(",") if rec.get("channel_names") else []
    base = {
        "recording_id": rec["recording_id"],
        "path": rec["path"],
        "recording_duration_s": rec.get("duration_s"),
        "model_id": model_id,
    }
    n = len(rec["seg_start_s"]) if rec.get("seg_start_s") is not None else 0
    if n == 0:
        return [
            dict(
                base,
                channel=None,
                channel_index=None,
                segment_index=None,
                start_s=None,
                end_s=None,
                label=None,
                confidence=None,
                probabilities=None,
                label_mass=None,
                transcript=None,
                error=rec.get("error") or "no segments",
            )
        ]
    transcripts = json.loads(rec["seg_transcript"]) if rec.get("seg_transcript") else [None] * n
    rows = []
    for i in range(n):
        ch = int(rec["seg_channel"][i])
        probs = np.asarray(rec["probabilities"][i], dtype=np.float32)
        rows.append(
            dict(
                base,
                channel=names[ch] if 0 <= ch < len(names) else "mix",
                channel_index=ch,
                segment_index=i,
                start_s=float(rec["seg_start_s"][i]),
                end_s=float(rec["seg_end_s"][i]),
                label=rec["labels"][i],
                confidence=float(rec["confidence"][i]),
                probabilities=list(zip(labels, probs.tolist())),
                label_mass=_mass(rec, i),
                transcript=transcripts[i],
                error=None,
            )
        )
    return rows


SUMMARY_SCHEMA = pa.schema(
    [
        ("recording_id", pa.string()),
        ("path", pa.string()),
        ("channel", pa.string()),
        ("duration_s", pa.float64()),
        ("num_segments", pa.int32()),
        ("speech_s", pa.float64()),
        ("dominant_label", pa.string()),
        ("label_shares", pa.string()),
        ("mean_confidence", pa.float32()),
        ("error_count", pa.int32()),
        ("error", pa.string()),
    ]
)


def _first(s):
    s = s.dropna()
    return s.iloc[0] if len(s) else None


def _summary_rows(df) -> list[dict]:
    """One row per (recording, channel) with segments, in channel order, and one row with channel null per
    recording with error rows (its error count and first error)."""
    ok = df[df["error"].isna()].assign(dur=lambda d: d["end_s"] - d["start_s"])
    rows = []
    for (rid, _, ch), g in ok.groupby(["recording_id", "channel_index", "channel"], sort=True):
        d = g["dur"].groupby(g["label"]).sum()  # speech time per label (sorted: ties go to the first label)
        rows.append(
            {
                "recording_id": rid,
                "path": g["path"].iloc[0],
                "channel": ch,
                "duration_s": _first(g["recording_duration_s"]),
                "num_segments": len(g),
                "speech_s": float(d.sum()),
                "dominant_label": d.idxmax() if len(d) else None,
                "label_shares": json.dumps({k: round(float(v / d.sum()), 4) for k, v in d.items()}),
                "mean_confidence": float(g["confidence"].mean()),
                "error_count": 0,
                "error": None,
            }
        )
    for rid, g in df[df["error"].notna()].groupby("recording_id", sort=True):
        rows.append(
            {
                "recording_id": rid,
                "path": g["path"].iloc[0],
                "channel": None,
                "duration_s": _first(g["recording_duration_s"]),
                "num_segments": 0,
                "speech_s": 0.0,
                "dominant_label": None,
                "label_shares": "{}",
                "mean_confidence": None,
                "error_count": len(g),
                "error": g["error"].iloc[0],
            }
        )
    return sorted(rows, key=lambda r: r["recording_id"])  # stable: channel rows keep their order, error row last


def summarize(out_uri: str) -> pa.Table:
    """Per-recording, per-channel summary from all part files (agent and customer usually differ: pooling them
    would hide an angry customer behind a calm agent); written to ``summary.parquet`` atomically and returned.

    One row per (recording, channel) with segments: its num_segments, speech_s, dominant_label (by speech time),
    label_shares (JSON: share of the channel's speech time per label) and mean_confidence; ``duration_s`` is the
    recording's. A recording with error rows (failed, no segments) gets one row with ``channel`` null, its
    ``error_count`` and first ``error``.
    """
    fs, root = resolve(segments_dir(out_uri))
    infos = part_files(fs, root)
    cols = [
        "recording_id",
        "path",
        "channel",
        "channel_index",
        "start_s",
        "end_s",
        "label",
        "confidence",
        "recording_duration_s",
        "error",
    ]
    tables = [pq.read_table(i.path, columns=cols, filesystem=fs) for i in infos]
    rows = _summary_rows(pa.concat_tables(tables).to_pandas()) if tables else []
    summary = pa.Table.from_pylist(rows, schema=SUMMARY_SCHEMA)
    write_parquet(summary, join(out_uri, "summary.parquet"))
    return summary


def _write_recordings(recs: list[dict], out_uri: str, labels: list[str], model_id: str) -> None:
    rows = [r for rec in recs for r in segment_rows(rec, labels, model_id)]
    if rows:
        write_atomic(
            pa.Table.from_pylist(rows, schema=SEGMENT_SCHEMA),
            segments_dir(out_uri),
            name=part_name(r["recording_id"] for r in recs),
        )


def _has_segments(rec: dict) -> bool:
    return rec.get("seg_start_s") is not None and len(rec["seg_start_s"]) > 0


def write_parts(batch: dict, out_uri: str, labels: list[str], model_id: str) -> dict:
    """``map_batches`` function: write the batch's labelled recordings as one atomic part file and its failed ones
    (no segments: one error row each) as another.

    Returns one small row per recording (for the driver's report), so nothing large flows back to the driver.
    """
    n = len(batch["recording_id"])
    recs = [{k: batch[k][i] for k in batch} for i in range(n)]
    for r in recs:  # Ray may hand missing strings over as NaN
        for k in ("error", "channel_names", "seg_transcript", "path"):
            r[k] = r.get(k) if isinstance(r.get(k), str) else None
    _write_recordings([r for r in recs if _has_segments(r)], out_uri, labels, model_id)
    _write_recordings([r for r in recs if not _has_segments(r)], out_uri, labels, model_id)
    return {
        "recording_id": [r["recording_id"] for r in recs],
        "num_segments": [len(r["seg_start_s"]) if _has_segments(r) else 0 for r in recs],
        "duration_s": [float(r["duration_s"]) if r.get("duration_s") is not None else float("nan") for r in recs],
        "speech_s": [
            float(np.sum(np.asarray(r["seg_end_s"]) - np.asarray(r["seg_start_s"]))) if _has_segments(r) else 0.0
            for r in recs
        ],
        "error": [r["error"] for r in recs],
    }


def write_lost(out_uri: str, rows: list[dict], error: str, model_id: str) -> None:
    """One error row for each source row (``Recording.to_row()``) that no worker could process."""
    recs = [
        {
            "recording_id": r["recording_id"],
            "path": r.get("path"),
            "duration_s": None,
            "seg_start_s": None,
            "error": r.get("error") or error,
        }
        for r in rows
    ]
    for i in range(0, len(recs), 256):
        _write_recordings(recs[i : i + 256], out_uri, [], model_id)


def drop_failed_parts(out_uri: str) -> list[str]:
    """Delete the part files that hold only failed recordings (error rows); return those recordings' ids, which
    a resumed run then labels again. Failed recordings in older mixed part files are left as they are."""
    fs, root = resolve(segments_dir(out_uri))
    ids: list[str] = []
    for info in part_files(fs, root):
        try:
            t = pq.read_table(info.path, columns=["recording_id", "error"], filesystem=fs)
        except (OSError, pa.ArrowException):
            continue  # recording_counts moves it aside
        if t.num_rows and t.column("error").null_count == 0:
            ids += sorted(set(t.column("recording_id").to_pylist()))
            fs.delete_file(info.path)
    return ids


write_parts.columns = C.WRITE  # what the sink reads and returns (checked at plan time)
