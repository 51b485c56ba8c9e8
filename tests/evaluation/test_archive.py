"""pipeline/evaluation/archive.py and jobs/evaluate_archive.py on hand-written label outputs and truth tables
(no Ray)."""

import json
import os

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.evaluation.archive import evaluate_archive, format_archive_report
from pipeline.labeling.sink import SEGMENT_SCHEMA

LABELS = ["neutral", "happy", "angry", "sad"]
NAMES = ("agent", "customer")


def seg(rid: str, ch: int, start: float, end: float, label: str | None, i: int = 0) -> dict:
    """One output row as the sink writes it (ch -1 = the mix)."""
    probs = [(lab, 0.7 if lab == label else 0.1) for lab in LABELS]
    return dict(
        recording_id=rid,
        path=f"/a/{rid}.wav",
        channel=NAMES[ch] if ch >= 0 else "mix",
        channel_index=ch,
        segment_index=i,
        start_s=start,
        end_s=end,
        label=label,
        confidence=0.7,
        probabilities=probs,
        transcript=None,
        recording_duration_s=60.0,
        model_id="m",
        error=None,
    )


def error_row(rid: str) -> dict:
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
        transcript=None,
        recording_duration_s=None,
        model_id="m",
        error="no speech detected",
    )


def write_labels(root, *parts: list[dict]) -> str:
    d = root / "labels" / "segments"
    d.mkdir(parents=True, exist_ok=True)
    for i, rows in enumerate(parts):
        pq.write_table(pa.Table.from_pylist(rows, schema=SEGMENT_SCHEMA), d / f"part-{i:04d}.parquet")
    return str(root / "labels")


def turn(rid: str, ch: int, start: float, end: float, label: str) -> dict:
    """A truth turn in the demo archive's layout (integer channel + channel_name)."""
    return dict(recording_id=rid, channel=ch, channel_name=NAMES[ch], start_s=start, end_s=end, label=label)


# the "known mix": agent turns all neutral, customer angry/sad; every turn 1 s, predicted exactly on its turn
MIX_TRUTH = [
    ("r1", 0, 0, "neutral", "neutral"),
    ("r1", 0, 2, "neutral", "neutral"),
    ("r1", 0, 4, "neutral", "neutral"),
    ("r1", 0, 6, "neutral", "happy"),
    ("r1", 1, 1, "angry", "angry"),
    ("r1", 1, 3, "angry", "neutral"),
    ("r1", 1, 5, "sad", "sad"),
    ("r1", 1, 7, "sad", "neutral"),
]


def test_perfect_predictions(tmp_path):
    truth = [
        turn("r1", 0, 0.0, 2.0, "neutral"),
        turn("r1", 1, 2.5, 4.0, "angry"),
        turn("r1", 1, 5.0, 6.0, "sad"),
        turn("r1", 0, 6.5, 7.25, "happy"),
    ]
    labels = write_labels(
        tmp_path, [seg(t["recording_id"], t["channel"], t["start_s"], t["end_s"], t["label"]) for t in truth]
    )
    rep = evaluate_archive(labels, pd.DataFrame(truth))
    assert rep["labels"] == LABELS  # from the probabilities' keys, not sorted
    assert rep["segment"]["ua"] == 1.0 and rep["segment"]["accuracy"] == 1.0 and rep["coverage"] == 1.0
    assert rep["time_weighted"]["ua"] == 1.0 and rep["time_weighted"]["accuracy"] == 1.0
    assert rep["n_pred_segments"] == 4 and rep["n_scored"] == 4 and rep["n_false_alarms"] == 0
    assert set(rep["by_channel"]) == {"agent", "customer"} and rep["by_channel"]["customer"]["n"] == 2
    assert rep["channel_dominant_accuracy"] == 1.0 and rep["n_dominant_channels"] == 2
    json.dumps(rep, allow_nan=False)


def test_calibration_on_the_archive(tmp_path):
    """Every segment says 0.7 for its label: right on all of them -> ECE 0.3 (under-confident), right on half ->
    ECE 0.2 (over-confident by 0.2); no probabilities column -> no calibration block."""
    truth = [turn("r1", 1, 2.0 * i, 2.0 * i + 1, "angry") for i in range(4)]
    right = write_labels(tmp_path / "a", [seg("r1", 1, t["start_s"], t["end_s"], "angry") for t in truth])
    cal = evaluate_archive(right, pd.DataFrame(truth))["calibration"]
    assert cal["ece"] == pytest.approx(0.3) and cal["accuracy"] == 1.0 and cal["mean_confidence"] == pytest.approx(0.7)
    half = [seg("r1", 1, t["start_s"], t["end_s"], "angry" if i % 2 else "sad") for i, t in enumerate(truth)]
    cal = evaluate_archive(write_labels(tmp_path / "b", half), pd.DataFrame(truth))["calibration"]
    assert cal["ece"] == pytest.approx(0.2) and cal["accuracy"] == 0.5
    bare = [dict(seg("r1", 1, t["start_s"], t["end_s"], "angry"), probabilities=None) for t in truth]
    assert evaluate_archive(write_labels(tmp_path / "c", bare), pd.DataFrame(truth))["calibration"] is None


def test_known_mix_majority_channels_calm(tmp_path):
    labels = write_labels(tmp_path, [seg(r, c, s, s + 1, p) for r, c, s, _, p in MIX_TRUTH])
    truth = pd.DataFrame([turn(r, c, s, s + 1, t) for r, c, s, t, _ in MIX_TRUTH])
    rep = evaluate_archive(labels, truth)
    s = rep["segment"]
    assert s["accuracy"] == pytest.approx(5 / 8)
    assert s["ua"] == pytest.approx((3 / 4 + 1 / 2 + 1 / 2) / 3)
    # F1: neutral P 3/5 R 3/4 -> 2/3, happy 0 (predicted once), angry 2/3, sad 2/3
    assert s["macro_f1"] == pytest.approx(0.5)
    assert rep["majority"] == pytest.approx({"label": "neutral", "accuracy": 0.5, "ua": 1 / 3, "macro_f1": 2 / 9})
    assert rep["time_weighted"]["ua"] == pytest.approx(s["ua"])  # all turns 1 s: time = segment weighting
    ag, cu = rep["by_channel"]["agent"], rep["by_channel"]["customer"]
    assert (ag["n"], ag["accuracy"], ag["ua"], ag["majority_accuracy"]) == (4, 0.75, 0.75, 1.0)
    assert ag["per_class_recall"] == {"neutral": 0.75, "happy": None, "angry": None, "sad": None}
    assert (cu["n"], cu["accuracy"], cu["ua"], cu["majority_accuracy"]) == (4, 0.5, 0.5, 0.5)
    # calm: the agent channel (all neutral), 3 of its 4 segments labelled neutral
    assert rep["n_calm_channels"] == 1 and rep["calm_channel_neutral_share"] == 0.75
    # dominant: agent neutral == neutral; customer angry (tie with sad, label order) != neutral (2 s predicted)
    assert rep["channel_dominant_accuracy"] == 0.5
    text = format_archive_report(rep)
    assert text.splitlines()[0] == (
        "segment UA 0.583, accuracy 0.625, macro-F1 0.500 (always-majority 'neutral': "
        "accuracy 0.500, UA 0.333) | time-weighted UA 0.583 | coverage 1.000 | "
        "false alarms 0"
    )
    assert "customer" in text and "calm channels" in text


def test_false_alarms(tmp_path):
    labels = write_labels(
        tmp_path,
        [
            seg("r1", 0, 0.0, 1.0, "neutral"),  # truth [0.6, 1.0]: 0.4 s of 1 s -> false alarm at 0.5, scored at 0.3
            seg("r1", 0, 2.0, 4.0, "angry"),  # truth [3, 5]: exactly half -> scored
            seg("r1", 0, 10.0, 11.0, "sad"),  # silence
            seg("r1", 1, 3.0, 4.0, "happy"),  # a channel without truth turns
        ],
    )
    truth = pd.DataFrame([turn("r1", 0, 0.6, 1.0, "neutral"), turn("r1", 0, 3.0, 5.0, "angry")])
    rep = evaluate_archive(labels, truth)
    assert (rep["n_pred_segments"], rep["n_scored"], rep["n_false_alarms"]) == (4, 1, 3)
    assert rep["segment"]["per_class"]["angry"]["support"] == 1 and rep["segment"]["accuracy"] == 1.0
    assert rep["coverage"] == pytest.approx((0.4 + 1.0) / 2.4)
    rep = evaluate_archive(labels, truth, min_overlap=0.3)
    assert (rep["n_scored"], rep["n_false_alarms"]) == (2, 2)


def test_channel_matching_name_index_string(tmp_path):
    # both channels speak over the same second: only the channel decides which truth a segment gets
    labels = write_labels(tmp_path, [seg("r1", 0, 0.0, 2.0, "neutral"), seg("r1", 1, 0.0, 2.0, "angry")])
    by_name = pd.DataFrame([turn("r1", 0, 0.0, 2.0, "neutral"), turn("r1", 1, 0.0, 2.0, "angry")])
    swapped = by_name.assign(channel=[1, 0])  # names say agent/customer, indices say the opposite
    assert evaluate_archive(labels, swapped)["segment"]["accuracy"] == 1.0  # channel_name wins
    csv = tmp_path / "truth.csv"
    by_name.drop(columns="channel_name").to_csv(csv, index=False)
    rep = evaluate_archive(labels, str(csv))  # integer channel -> channel_index
    assert rep["segment"]["accuracy"] == 1.0 and set(rep["by_channel"]) == {"0", "1"}
    assert evaluate_archive(labels, swapped.drop(columns="channel_name"))["segment"]["accuracy"] == 0.0
    strings = by_name.drop(columns="channel_name").assign(channel=["agent", "customer"])
    rep = evaluate_archive(labels, strings)  # string channel -> channel name
    assert rep["segment"]["accuracy"] == 1.0 and set(rep["by_channel"]) == {"agent", "customer"}


def test_mix_only_recording_scored_against_pooled_truth(tmp_path):
    labels = write_labels(tmp_path, [seg("r1", -1, 0.0, 3.0, "neutral")])
    truth = pd.DataFrame([turn("r1", 0, 0.0, 1.0, "happy"), turn("r1", 1, 1.5, 3.0, "neutral")])
    rep = evaluate_archive(labels, truth)
    assert rep["n_scored"] == 1 and rep["segment"]["accuracy"] == 1.0 and rep["coverage"] == 1.0
    assert list(rep["by_channel"]) == ["mix"]


def test_error_unmatched_missing_recordings(tmp_path):
    good = [seg("r1", 0, 0.0, 1.0, "neutral"), seg("rx", 0, 0.0, 1.0, "sad")]
    labels = write_labels(tmp_path, good, [error_row("r_err")])
    # a temporary file of an unfinished write is not a part file
    pq.write_table(
        pa.Table.from_pylist([seg("r1", 0, 5.0, 6.0, "sad")], schema=SEGMENT_SCHEMA),
        os.path.join(labels, "segments", ".tmp-x-part-9.parquet"),
    )
    truth = pd.DataFrame(
        [turn("r1", 0, 0.0, 1.0, "neutral"), turn("r_err", 0, 0.0, 5.0, "angry"), turn("r_missing", 1, 0.0, 5.0, "sad")]
    )
    rep = evaluate_archive(labels, truth)
    assert (rep["n_pred_segments"], rep["n_scored"], rep["n_false_alarms"]) == (2, 1, 0)
    assert (rep["n_error_recordings"], rep["n_unmatched_recordings"]) == (1, 1)
    assert (rep["n_truth_recordings"], rep["n_truth_recordings_missing"]) == (3, 1)
    assert rep["coverage"] == 1.0  # neither the failed nor the unlabelled recording counts as missed speech


def test_uncovered_turn_lowers_coverage(tmp_path):
    labels = write_labels(tmp_path, [seg("r1", 0, 0.0, 2.0, "neutral"), seg("r1", 0, 5.0, 6.0, "sad")])
    truth = pd.DataFrame(
        [turn("r1", 0, 0.0, 2.0, "neutral"), turn("r1", 0, 3.0, 4.0, "angry"), turn("r1", 0, 5.0, 9.0, "sad")]
    )
    rep = evaluate_archive(labels, truth)
    assert rep["coverage"] == pytest.approx(3 / 7)
    assert rep["coverage_per_class"] == pytest.approx({"neutral": 1.0, "happy": None, "angry": 0.0, "sad": 0.25})
    assert rep["time_weighted"]["ua"] == 1.0  # over the covered time only; the miss is in the coverage
    assert rep["segment"]["ua"] == 1.0 and rep["segment"]["n"] == 2


def test_time_weighted_differs_from_segment(tmp_path):
    labels = write_labels(
        tmp_path,
        [
            seg("r1", 1, 0.0, 8.0, "neutral"),
            seg("r1", 1, 8.0, 10.0, "angry"),
            seg("r1", 1, 10.0, 14.0, "neutral"),
            seg("r1", 1, 14.0, 15.0, "angry"),
        ],
    )
    truth = pd.DataFrame(
        [
            turn("r1", 1, 0.0, 8.0, "neutral"),
            turn("r1", 1, 8.0, 10.0, "angry"),
            turn("r1", 1, 10.0, 14.0, "angry"),
            turn("r1", 1, 14.0, 15.0, "angry"),
        ]
    )
    rep = evaluate_archive(labels, truth)
    assert rep["segment"]["ua"] == pytest.approx((1 + 2 / 3) / 2) and rep["segment"]["accuracy"] == 0.75
    tw = rep["time_weighted"]
    assert tw["ua"] == pytest.approx((1 + 3 / 7) / 2) and tw["accuracy"] == pytest.approx(11 / 15)
    assert tw["per_class_recall"] == pytest.approx({"neutral": 1.0, "happy": None, "angry": 3 / 7, "sad": None})


def test_label_order_and_unknown_truth_label(tmp_path):
    labels = write_labels(tmp_path, [seg("r1", 0, 0.0, 1.0, "sad"), seg("r1", 0, 1.0, 2.0, "sad")])
    truth = pd.DataFrame([turn("r1", 0, 0.0, 1.0, "sad"), turn("r1", 0, 1.0, 2.0, "bored")])
    rep = evaluate_archive(labels, truth, label_names=["sad", "neutral"])
    assert rep["labels"] == ["sad", "neutral", "bored"]  # truth-only labels appended: they count as misses
    assert rep["segment"]["ua"] == 0.5 and rep["segment"]["per_class"]["bored"]["recall"] == 0.0


def test_cli_writes_json_png_parquet(tmp_path, capsys):
    from jobs.evaluate_archive import main

    rows = [seg(r, c, s, s + 1, p, i) for i, (r, c, s, _, p) in enumerate(MIX_TRUTH)]
    labels = write_labels(tmp_path, rows + [seg("r1", 0, 20.0, 21.0, "happy", 8)], [error_row("r2")])
    pd.DataFrame([turn(r, c, s, s + 1, t) for r, c, s, t, _ in MIX_TRUTH]).to_csv(tmp_path / "t.csv", index=False)
    rep = main([labels, str(tmp_path / "t.csv"), "--name", "demo eval"])
    out = os.path.join(labels, "eval")
    assert rep["files"] == {
        "json": os.path.join(out, "demo_eval.json"),
        "png": os.path.join(out, "demo_eval_confusion.png"),
        "segments": os.path.join(out, "demo_eval_segments.parquet"),
        "timelines": [os.path.join(out, "timelines", "r1.png")],
    }  # r2 failed: not evaluated
    files = [rep["files"][k] for k in ("json", "png", "segments")] + rep["files"]["timelines"]
    assert all(os.path.getsize(p) > 0 for p in files)
    saved = json.load(open(rep["files"]["json"]))
    assert saved["segment"]["ua"] == pytest.approx(rep["segment"]["ua"]) and saved["n_false_alarms"] == 1
    assert saved["n_error_recordings"] == 1 and saved["files"] == rep["files"]
    t = pq.read_table(rep["files"]["segments"])
    assert t.num_rows == 9 and pa.types.is_map(t.schema.field("probabilities").type)
    df = t.drop(["probabilities"]).to_pandas()
    assert df["false_alarm"].tolist() == [False] * 8 + [True]
    assert df["true_label"].tolist()[:8] == [x[3] for x in MIX_TRUTH] and df["overlap_s"].iloc[8] == 0.0
    assert t.column("true_label")[8].as_py() is None and t.column("scored").to_pylist() == [True] * 8 + [False]
    assert capsys.readouterr().out.startswith("segment UA 0.583, accuracy 0.625")
    assert (
        main([labels, str(tmp_path / "t.csv"), "--out", str(tmp_path / "e0"), "--timelines", "0"])["files"]["timelines"]
        == []
    )
    with pytest.raises(SystemExit):
        main([labels, str(tmp_path / "t.csv"), "--timelines", "-1"])
