"""pipeline/labeling/sink.py::summarize: one summary row per recording and channel (no Ray)."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.labeling.sink import SEGMENT_SCHEMA, part_name, segments_dir, summarize, write_atomic

LABELS = ["neutral", "angry"]


def seg(rid: str, ch: int, name: str, start: float, end: float, label: str, conf: float, i: int) -> dict:
    return dict(
        recording_id=rid,
        path=f"/a/{rid}.wav",
        channel=name,
        channel_index=ch,
        segment_index=i,
        start_s=start,
        end_s=end,
        label=label,
        confidence=conf,
        probabilities=[(lab, conf if lab == label else 1 - conf) for lab in LABELS],
        label_mass=0.9,
        transcript=None,
        recording_duration_s=30.0,
        model_id="m",
        error=None,
    )


def error_row(rid: str, error: str) -> dict:
    return dict(
        recording_id=rid,
        path=f"/a/{rid}.wav",
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
        recording_duration_s=None,
        model_id="m",
        error=error,
    )


def test_one_row_per_recording_and_channel(tmp_path):
    out = str(tmp_path / "out")
    # a calm agent talking longer than an angry customer: pooled, the call would read "neutral"
    call = [
        seg("call", 1, "customer", 2.0, 4.0, "angry", 0.8, 1),
        seg("call", 0, "agent", 0.0, 2.0, "neutral", 0.9, 0),
        seg("call", 0, "agent", 4.0, 9.0, "neutral", 0.7, 2),
        seg("call", 1, "customer", 9.0, 10.0, "neutral", 0.6, 3),
    ]
    for rows in (call, [error_row("bad", "file not found")]):
        write_atomic(
            pa.Table.from_pylist(rows, schema=SEGMENT_SCHEMA),
            segments_dir(out),
            name=part_name({r["recording_id"] for r in rows}),
        )
    summary = summarize(out)
    assert summary.equals(pq.read_table(tmp_path / "out" / "summary.parquet"))
    rows = summary.to_pylist()
    assert [(r["recording_id"], r["channel"]) for r in rows] == [("bad", None), ("call", "agent"), ("call", "customer")]
    bad, agent, customer = rows
    assert agent["dominant_label"] == "neutral" and customer["dominant_label"] == "angry"
    assert (agent["num_segments"], customer["num_segments"]) == (2, 2)
    assert (agent["speech_s"], customer["speech_s"]) == (7.0, 3.0)
    assert agent["mean_confidence"] == pytest.approx(0.8) and customer["mean_confidence"] == pytest.approx(0.7)
    assert json.loads(agent["label_shares"]) == {"neutral": 1.0}
    assert json.loads(customer["label_shares"]) == {"angry": 0.6667, "neutral": 0.3333}
    assert agent["duration_s"] == customer["duration_s"] == 30.0 and agent["error_count"] == 0 and not agent["error"]
    assert bad["error_count"] == 1 and bad["error"] == "file not found" and bad["num_segments"] == 0
    assert bad["dominant_label"] is None and bad["mean_confidence"] is None


def test_empty_output(tmp_path):
    summary = summarize(str(tmp_path / "none"))
    assert summary.num_rows == 0 and "channel" in summary.column_names
