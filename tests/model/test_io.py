"""Shared I/O: every write lands whole or not at all, and leaves no temporary behind."""

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from emoq_model import io


def test_writes_are_complete_and_leave_no_temporaries(tmp_path):
    io.write_text(tmp_path / "a" / "b.txt", "one")
    io.write_text(tmp_path / "a" / "b.txt", "two")  # a rewrite replaces
    io.write_json(tmp_path / "r.json", {"x": 1})
    io.write_parquet(pa.table({"x": [1, 2]}), str(tmp_path / "t.parquet"))
    assert io.read_text(str(tmp_path / "a" / "b.txt")) == "two"
    assert pq.read_table(tmp_path / "t.parquet").num_rows == 2
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(io.TEMP_PREFIX)]
    with pytest.raises(ValueError):  # NaN in a report is a bug, not a value
        io.write_json(tmp_path / "bad.json", {"x": float("nan")})
    assert not (tmp_path / "bad.json").exists()


def test_a_failing_writer_keeps_the_old_file(tmp_path):
    target = tmp_path / "m.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError), io.atomic_path(target) as tmp:
        open(tmp, "w").write("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["m.csv"]


def test_publish_dir_swaps_a_whole_directory(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    (src / "f").write_text("new")
    dest.mkdir()
    (dest / "stale").write_text("old")
    io.publish_dir(str(src), dest)
    assert sorted(os.listdir(dest)) == ["f"]
    assert io.join("s3://b/x", "y", "z") == "s3://b/x/y/z" and io.uri_of(*io.resolve(str(dest))) == str(dest)
