"""Parquet output: atomic part files of complete recordings, resume bookkeeping and per-recording summaries.

Layout under the output directory::

    segments/part-<hash>.parquet   one row per segment, and one row per recording without segments (error set)
    summary.parquet                per recording (rebuilt from all segment files at the end of each run)

Each part file holds whole recordings only and appears complete or not at all (written to a temporary name in
the same folder, then renamed). A recording is done once it appears in any part file: reruns skip it. Output
file names are content hashes, never derived from recording ids, so ids cannot steer where files go.
"""
from __future__ import annotations

import hashlib
import json
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.sources import resolve

SEGMENT_SCHEMA = pa.schema([
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
    ("transcript", pa.string()),
    ("recording_duration_s", pa.float64()),
    ("model_id", pa.string()),
    ("error", pa.string()),
])


def segments_dir(out_uri: str) -> str:
    return out_uri.rstrip("/") + "/segments"


def completed_recordings(out_uri: str) -> set[str]:
    """Recording ids present in finished part files (temporary files are ignored)."""
    fs, root = resolve(segments_dir(out_uri))
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    done: set[str] = set()
    for info in infos:
        if info.type == pafs.FileType.File and info.base_name.startswith("part-") and info.path.endswith(".parquet"):
            done.update(pq.read_table(info.path, columns=["recording_id"], filesystem=fs).column(0).to_pylist())
    return done


def write_atomic(table: pa.Table, dir_uri: str, name_hint: bytes) -> str:
    """Write ``table`` as ``part-<hash>.parquet`` in ``dir_uri`` via a temporary name and a rename."""
    fs, root = resolve(dir_uri)
    fs.create_dir(root, recursive=True)
    name = f"part-{hashlib.sha1(name_hint).hexdigest()[:20]}.parquet"
    final = f"{root}/{name}"
    tmp = f"{root}/.tmp-{uuid.uuid4().hex}-{name}"
    pq.write_table(table, tmp, filesystem=fs)
    fs.move(tmp, final)
    return final


def segment_rows(rec: dict, labels: list[str], model_id: str) -> list[dict]:
    """Output rows of one labelled recording (see ``SEGMENT_SCHEMA``)."""
    names = rec["channel_names"].split(",") if rec.get("channel_names") else []
    base = {"recording_id": rec["recording_id"], "path": rec["path"], "recording_duration_s": rec.get("duration_s"),
            "model_id": model_id}
    n = len(rec["seg_start_s"]) if rec.get("seg_start_s") is not None else 0
    if n == 0:
        return [dict(base, channel=None, channel_index=None, segment_index=None, start_s=None, end_s=None, label=None,
                     confidence=None, probabilities=None, transcript=None, error=rec.get("error") or "no segments")]
    transcripts = json.loads(rec["seg_transcript"]) if rec.get("seg_transcript") else [None] * n
    rows = []
    for i in range(n):
        ch = int(rec["seg_channel"][i])
        probs = np.asarray(rec["probabilities"][i], dtype=np.float32)
        rows.append(dict(
            base, channel=names[ch] if 0 <= ch < len(names) else "mix", channel_index=ch, segment_index=i,
            start_s=float(rec["seg_start_s"][i]), end_s=float(rec["seg_end_s"][i]), label=rec["labels"][i],
            confidence=float(rec["confidence"][i]), probabilities=list(zip(labels, probs.tolist())),
            transcript=transcripts[i], error=None))
    return rows


def summarize(out_uri: str) -> pa.Table:
    """Per-recording summary from all part files; written to ``summary.parquet`` atomically and returned."""
    fs, root = resolve(segments_dir(out_uri))
    infos = [i for i in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
             if i.type == pafs.FileType.File and i.base_name.startswith("part-")]
    cols = ["recording_id", "path", "channel", "start_s", "end_s", "label", "confidence", "recording_duration_s", "error"]
    tables = [pq.read_table(i.path, columns=cols, filesystem=fs) for i in infos]
    schema = pa.schema([("recording_id", pa.string()), ("path", pa.string()), ("duration_s", pa.float64()),
                        ("num_segments", pa.int32()), ("speech_s", pa.float64()), ("dominant_label", pa.string()),
                        ("label_shares", pa.string()), ("mean_confidence", pa.float32()), ("error_count", pa.int32()),
                        ("error", pa.string())])
    if not tables:
        summary = schema.empty_table()
    else:
        df = pa.concat_tables(tables).to_pandas()
        out = []
        for rid, g in df.groupby("recording_id", sort=True):
            ok = g[g["error"].isna()]
            dur = (ok["end_s"] - ok["start_s"]) if len(ok) else None
            shares: dict[str, dict[str, float]] = {}
            for ch, gc in ok.groupby("channel"):
                d = (gc["end_s"] - gc["start_s"]).groupby(gc["label"]).sum()
                shares[str(ch)] = {k: round(float(v / d.sum()), 4) for k, v in d.items()}
            dominant = (dur.groupby(ok["label"]).sum().idxmax() if len(ok) else None)
            errs = g["error"].dropna()
            out.append({
                "recording_id": rid, "path": g["path"].iloc[0], "duration_s": g["recording_duration_s"].iloc[0],
                "num_segments": int(len(ok)), "speech_s": float(dur.sum()) if len(ok) else 0.0,
                "dominant_label": dominant, "label_shares": json.dumps(shares),
                "mean_confidence": float(ok["confidence"].mean()) if len(ok) else None,
                "error_count": int(len(errs)), "error": errs.iloc[0] if len(errs) else None,
            })
        summary = pa.Table.from_pylist(out, schema=schema)
    sfs, sroot = resolve(out_uri)
    tmp = f"{sroot}/.tmp-{uuid.uuid4().hex}-summary.parquet"
    pq.write_table(summary, tmp, filesystem=sfs)
    sfs.move(tmp, f"{sroot}/summary.parquet")
    return summary


def write_parts(batch: dict, out_uri: str, labels: list[str], model_id: str) -> dict:
    """``map_batches`` function: write one atomic part file per batch of labelled recordings.

    Returns one small row per recording (for the driver's report), so nothing large flows back to the driver.
    """
    n = len(batch["recording_id"])
    recs = [{k: batch[k][i] for k in batch} for i in range(n)]
    for r in recs:  # Ray may hand missing strings over as NaN
        for k in ("error", "channel_names", "seg_transcript", "path"):
            r[k] = r.get(k) if isinstance(r.get(k), str) else None
    rows = [r for rec in recs for r in segment_rows(rec, labels, model_id)]
    if rows:
        hint = "\n".join(sorted(str(r["recording_id"]) for r in recs)).encode()
        write_atomic(pa.Table.from_pylist(rows, schema=SEGMENT_SCHEMA), segments_dir(out_uri), hint)
    return {
        "recording_id": [r["recording_id"] for r in recs],
        "num_segments": [len(r["seg_start_s"]) for r in recs],
        "duration_s": [float(r["duration_s"]) if r.get("duration_s") is not None else float("nan") for r in recs],
        "speech_s": [float(np.sum(np.asarray(r["seg_end_s"]) - np.asarray(r["seg_start_s"]))) for r in recs],
        "error": [r["error"] for r in recs],
    }
