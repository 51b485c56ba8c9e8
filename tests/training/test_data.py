"""A worker's training rows (pipeline/training/data.py): rank shares and the speed-perturbed copies (no Ray)."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from emoq_model import features as F
from emoq_model.config import demo_config_path, load_config
from pipeline.training.data import WorkerData, rank_share
from pipeline.training.settings import TrainSettings

LABELS = ("neutral", "happy", "angry", "sad")


def _cache(root, n_recorded=11, factors=(0.9, 1.1)):
    """A feature cache of ``n_recorded`` training turns, a speed-perturbed copy of each per factor, 4 val turns."""
    rng = np.random.default_rng(0)
    rows = []

    def row(utt, speaker, split, label):
        data, (n_layers, t, d) = F.encode_frames(rng.normal(size=(2, 6, 8)).astype(np.float32))
        return dict(
            utt_id=utt,
            path="/x.wav",
            label=label,
            transcript=None,
            speaker=speaker,
            split=split,
            error=None,
            num_samples=8000,
            duration_s=1.0,
            n_layers=n_layers,
            n_frames=t,
            dim=d,
            frames=data,
        )

    for i in range(n_recorded):
        rows.append(row(f"t{i:02d}", f"s{i % 3}", "train", LABELS[i % 4]))
        rows += [
            row(f"t{i:02d}{F.SPEED_COPY_TAG}{f:g}", f"s{i % 3}{F.SPEED_COPY_TAG}{f:g}", "train", LABELS[i % 4])
            for f in factors
        ]
    rows += [row(f"v{i}", "sv", "val", LABELS[i]) for i in range(4)]
    (root / F.SHARDS_DIR).mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=F.feature_schema()), root / F.SHARDS_DIR / "0.parquet")
    (root / F.META_FILE).write_text(
        json.dumps({"format": F.FORMAT, "dtype": "float16", "n_layers": 2, "dim": 8, "encoder": {"layer": "weighted"}})
    )
    return root


def test_rank_share_pads_every_rank_to_the_same_length():
    order = np.arange(7)
    shares = [rank_share(order, r, 3) for r in range(3)]
    assert [len(s) for s in shares] == [3, 3, 3]
    assert sorted(np.concatenate(shares).tolist()) == [0, 0, 1, 1, 2, 3, 4, 5, 6]  # wrap-around: the first two again
    assert rank_share(np.arange(6), 1, 2).tolist() == [1, 3, 5]


def test_recorded_rows_leave_out_the_speed_copies_with_equal_rank_shares(tmp_path):
    """``train.stage*.speed_copies=false`` trains on the recorded rows only: each rank's share holds no copy, all
    ranks take as many steps, and together they cover every recorded row; with copies, every row."""
    root = _cache(tmp_path / "cache")
    small = ["former.num_queries=4", "former.num_layers=1"]
    s = TrainSettings(features=str(root), storage_path=str(tmp_path / "runs"), name="t", feature_norm="none")
    default = WorkerData(s, load_config(demo_config_path(), small), 0, 2)
    assert default.train_recorded == [] and default.rows_per_rank(recorded_only=True) == 6  # not loaded unless used
    cfg = load_config(demo_config_path(), [*small, "train.stage2.speed_copies=false"])
    ranks = [WorkerData(s, cfg, r, 2) for r in range(2)]
    assert {d.rows_per_rank() for d in ranks} == {17}  # 33 rows: 17 per rank with one wrapped around
    assert {d.rows_per_rank(recorded_only=True) for d in ranks} == {6}  # 11 recorded rows
    recorded = [it["utt_id"] for d in ranks for it in d.train_recorded]
    assert not any(F.is_speed_copy(u) for u in recorded)
    assert set(recorded) == {f"t{i:02d}" for i in range(11)}
    assert {it["utt_id"] for d in ranks for it in d.train} == {
        u for i in range(11) for u in (f"t{i:02d}", f"t{i:02d}~sp0.9", f"t{i:02d}~sp1.1")
    }
    rng = np.random.default_rng(0)
    got = [it["utt_id"] for b in ranks[0].epoch_batches(4, rng, recorded_only=True) for it in b]
    assert sorted(got) == sorted(it["utt_id"] for it in ranks[0].train_recorded)
    assert sum(len(b) for b in ranks[0].epoch_batches(4, rng)) == 17


def test_streamed_recorded_rows_leave_out_the_speed_copies(tmp_path, ray_session):
    """``data="stream"``: the driver's ``train_recorded`` dataset filters the copies in the Parquet scan."""
    from pipeline.training.driver import stream_datasets

    root = _cache(tmp_path / "cache")
    s = TrainSettings(features=str(root), storage_path=str(tmp_path / "runs"), name="t", data="stream")
    cfg = load_config(demo_config_path(), [])
    assert set(stream_datasets(cfg, s)) == {"train"}  # every stage trains on the copies: no second dataset
    cfg = load_config(demo_config_path(), ["train.stage2.speed_copies=false"])
    ds = stream_datasets(cfg, s)
    ids = lambda d: sorted(r["utt_id"] for r in d.select_columns(["utt_id"]).take_all())  # noqa: E731
    assert ids(ds["train_recorded"]) == [f"t{i:02d}" for i in range(11)]
    assert len(ids(ds["train"])) == 33
