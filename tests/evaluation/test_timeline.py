"""pipeline/evaluation/timeline.py on hand-made segments and a hand-written labeling output (no Ray)."""

import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from matplotlib.colors import to_rgb
from matplotlib.image import imread

from emoq_model.errors import ConfigError
from pipeline.evaluation.timeline import MIN_ALPHA, label_colours, plot_timeline, write_timelines
from pipeline.labeling.job import LabelJobConfig
from pipeline.labeling.sink import SEGMENT_SCHEMA, part_name, segments_dir, write_atomic

LABELS = ["neutral", "happy", "angry", "sad"]
NAMES = ("agent", "customer")


def seg(rid: str, ch: int, start: float, end: float, label: str, conf: float = 0.9, i: int = 0) -> dict:
    probs = [(lab, conf if lab == label else (1 - conf) / 3) for lab in LABELS]
    return dict(
        recording_id=rid,
        path=f"/a/{rid}.wav",
        channel=NAMES[ch],
        channel_index=ch,
        segment_index=i,
        start_s=start,
        end_s=end,
        label=label,
        confidence=conf,
        probabilities=probs,
        label_mass=0.9,
        transcript=None,
        recording_duration_s=12.0,
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
        label_mass=None,
        transcript=None,
        recording_duration_s=None,
        model_id="m",
        error="file not found",
    )


CALL = [
    seg("c1", 0, 0.5, 3.0, "neutral", 0.95),
    seg("c1", 1, 3.5, 6.0, "angry", 1.0, 1),
    seg("c1", 1, 7.0, 9.5, "angry", 0.3, 2),
]
TRUTH = pd.DataFrame(
    [
        dict(recording_id="c1", channel=0, channel_name="agent", start_s=0.4, end_s=3.1, label="neutral"),
        dict(recording_id="c1", channel=1, channel_name="customer", start_s=3.4, end_s=9.6, label="sad"),
    ]
)


def near(img: np.ndarray, hex_colour: str, alpha: float, tol: float = 0.03) -> np.ndarray:
    """Mask of the pixels showing ``hex_colour`` at opacity ``alpha`` over the white background."""
    want = 1.0 - alpha * (1.0 - np.asarray(to_rgb(hex_colour)))
    return (np.abs(img[..., :3] - want) < tol).all(-1)


def count_near(img: np.ndarray, hex_colour: str, alpha: float) -> int:
    return int(near(img, hex_colour, alpha).sum())


def test_png_lanes_colours_and_confidence_as_opacity(tmp_path):
    path = tmp_path / "c1.png"
    lanes = plot_timeline(pd.DataFrame(CALL), path, labels=LABELS)
    assert lanes == ["agent", "customer"] and not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]
    img = imread(path)
    assert img.shape[:2] == (220, 1200)  # 12 x (1.3 + 0.45 per lane) inches at 100 dpi
    assert img[..., :3].std() > 0.05  # not blank
    red = label_colours(LABELS)["angry"]
    sure, unsure = count_near(img, red, 1.0), count_near(img, red, 0.3)
    assert sure > 2000 and unsure > 2000  # the confident bar in full colour, the unsure one faded to 30 %
    # along the customer lane: two bars, the confident (left) one more saturated than the unsure (right) one
    row = img[int(np.median(np.nonzero(near(img, red, 1.0))[0])), :, :3]
    sat = row.max(-1) - row.min(-1)  # 0 for white background and grey grid lines
    cols = np.nonzero(sat > 0.05)[0]
    runs = np.split(cols, np.nonzero(np.diff(cols) > 1)[0] + 1)
    assert len(runs) == 2 and sat[runs[0]].mean() > 2 * sat[runs[1]].mean()
    # confidence below the floor still draws a visible bar
    low = plot_timeline(pd.DataFrame([seg("c1", 0, 1.0, 8.0, "sad", 0.05)]), tmp_path / "low.png", labels=LABELS)
    assert low == ["agent"] and count_near(imread(tmp_path / "low.png"), label_colours(LABELS)["sad"], MIN_ALPHA) > 2000


def test_truth_lanes_above_predicted_ones(tmp_path):
    lanes = plot_timeline(pd.DataFrame(CALL), tmp_path / "t.png", truth=TRUTH, labels=LABELS)
    assert lanes == ["agent (truth)", "agent", "customer (truth)", "customer"]
    img = imread(tmp_path / "t.png")
    assert img.shape[:2] == (310, 1200)  # taller than without truth (220)
    assert count_near(img, label_colours(LABELS)["sad"], 1.0) > 2000  # the truth's sad turn, only in the truth lane
    # integer channels only (no channel_name): matched to the predicted channel of that index
    lanes = plot_timeline(pd.DataFrame(CALL), tmp_path / "t2.png", truth=TRUTH.drop(columns="channel_name"))
    assert lanes == ["agent (truth)", "agent", "customer (truth)", "customer"]
    # a truth channel without predictions still gets its lanes
    lanes = plot_timeline(pd.DataFrame(CALL[:1]), tmp_path / "t3.png", truth=TRUTH)
    assert lanes == ["agent (truth)", "agent", "customer (truth)", "customer"]


def test_error_recording_gets_a_note_and_uri_paths_work(tmp_path):
    assert plot_timeline(pd.DataFrame([error_row("bad")]), tmp_path / "bad.png") == []
    img = imread(tmp_path / "bad.png")
    assert img[..., :3].std() > 0.01  # axis, title and the note
    plot_timeline(pd.DataFrame(CALL), f"file://{tmp_path}/uri.png")
    assert imread(tmp_path / "uri.png").shape[:2] == (220, 1200)


def labeling_output(root) -> str:
    """A labeling output as the sink writes it: one part of labelled recordings, one of failed ones."""
    out = str(root / "out")
    ok = CALL + [seg("a/b", 0, 0.0, 2.0, "happy"), seg("z9", 1, 1.0, 2.0, "sad")]
    for rows in (ok, [error_row("b0")]):
        write_atomic(
            pa.Table.from_pylist(rows, schema=SEGMENT_SCHEMA),
            segments_dir(out),
            name=part_name({r["recording_id"] for r in rows}),
        )
    return out


def test_write_timelines_first_n_recordings(tmp_path):
    out = labeling_output(tmp_path)
    paths = write_timelines(out, 3)
    assert [os.path.basename(p) for p in paths[1:]] == ["b0.png", "c1.png"]
    assert os.path.basename(paths[0]).startswith("a_b-") and paths[0].endswith(".png")  # safe name + id hash
    assert all(os.path.dirname(p) == os.path.join(out, "timelines") and os.path.getsize(p) > 0 for p in paths)
    assert sorted(os.listdir(os.path.join(out, "timelines"))) == sorted(os.path.basename(p) for p in paths)
    assert write_timelines(out, 0) == [] and len(write_timelines(out, 99, out_dir=str(tmp_path / "all"))) == 4
    # with truth, from the chosen recordings only: truth lanes make the picture taller
    paths = write_timelines(out, 5, truth=TRUTH, out_dir=str(tmp_path / "eval"), recording_ids=["c1", "nope"])
    assert paths == [str(tmp_path / "eval" / "c1.png")] and imread(paths[0]).shape[:2] == (310, 1200)
    assert write_timelines(str(tmp_path / "empty"), 3) == []


def test_label_job_config_validates_timeline_calls():
    assert LabelJobConfig(inputs=["x"], output="o", bundle="b").timeline_calls == 3
    with pytest.raises(ConfigError, match="timeline_calls"):
        LabelJobConfig(inputs=["x"], output="o", bundle="b", timeline_calls=-1)
