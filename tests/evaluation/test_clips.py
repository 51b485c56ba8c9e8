"""jobs/evaluate.py on a hand-written feature cache and an (untrained) bundle: no Ray, a few seconds."""

import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from emoq_model import features as F
from emoq_model.config import demo_config_path, load_config

LABELS = ["neutral", "happy", "angry", "sad"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from emoq_model.bundle import save_bundle
    from emoq_model.model import EmoQModel

    cfg = load_config(demo_config_path(), ["former.num_queries=4", "former.num_layers=1", "llm.device=cpu"])
    out = save_bundle(EmoQModel(cfg), tmp_path_factory.mktemp("b") / "bundle")
    g = F.GroupStats(1000, np.zeros((5, 384), np.float32), np.ones((5, 384), np.float32))
    F.FeatureNorm("speaker", min_frames=50, global_stats=g).save(out)
    return str(out)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("cache")
    rows = []
    for spk in ("s1", "s2", "s3"):
        for i in range(8):
            t = int(rng.integers(20, 60))
            data, (n_layers, tt, d) = F.encode_frames(rng.normal(size=(5, t, 384)).astype(np.float32))
            rows.append(
                dict(
                    utt_id=f"{spk}_{i}",
                    path=f"/a/{spk}_{i}.wav",
                    label=LABELS[i % 4],
                    transcript=None,
                    speaker=spk,
                    split="test" if spk != "s1" else "train",
                    error=None,
                    num_samples=t * 320,
                    duration_s=t / 50,
                    n_layers=n_layers,
                    n_frames=tt,
                    dim=d,
                    frames=data,
                )
            )
    rows.append(
        dict(
            utt_id="broken",
            path="/a/broken.wav",
            label="sad",
            transcript=None,
            speaker="s2",
            split="test",
            error="decode: bad",
            num_samples=None,
            duration_s=None,
            n_layers=None,
            n_frames=None,
            dim=None,
            frames=None,
        )
    )
    (root / "shards").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=F.feature_schema()), root / "shards" / "part0.parquet")
    (root / "meta.json").write_text(
        json.dumps(
            {
                "format": F.FORMAT,
                "dtype": "float16",
                "n_layers": 5,
                "dim": 384,
                "encoder": {"layer": "weighted", "weighted_layers": None, "whisper_real_length": True},
            }
        )
    )
    return str(root)


@pytest.mark.slow
def test_evaluate_writes_report_plot_predictions(bundle, cache, tmp_path):
    from pipeline.evaluation.clips import evaluate

    rep = evaluate(bundle, str(tmp_path), features=cache, split="test")
    assert rep["n"] == 16 and rep["n_input_errors"] == 1 and rep["feature_norm"] == "speaker"
    for key in ("wa", "ua", "weighted_f1"):
        assert 0 <= rep[key] <= 1
    assert set(rep["per_class"]) == set(LABELS) and all(rep["per_class"][c]["support"] == 4 for c in LABELS)
    assert np.asarray(rep["confusion_matrix"]).sum() == 16
    assert os.path.getsize(rep["files"]["png"]) > 1000
    assert json.load(open(rep["files"]["json"]))["backend"] == "hf"
    preds = pd.read_parquet(rep["files"]["predictions"])
    assert list(preds.columns[:5]) == ["utt_id", "speaker", "label", "prediction", "confidence"]
    assert np.allclose(preds[[f"p_{c}" for c in LABELS]].sum(axis=1), 1, atol=1e-5)
    # intervals over the held-out speakers (isolated clips), holding the point estimate
    ci = rep["ci"]
    assert ci["unit"] == "speaker" and ci["n_recordings"] == 2 and ci["ua"][0] <= rep["ua"] <= ci["ua"][1]
    # the aux head (stage-1 bundles) and the CLI
    aux = evaluate(bundle, str(tmp_path), features=cache, split="test", head="aux")
    assert aux["n"] == 16 and aux["files"]["json"].endswith("test_hf_aux.json")
    from jobs.evaluate import main

    cli = main([bundle, str(tmp_path / "cli"), "--features", cache, "--split", "", "--name", "everything"])
    assert cli["n"] == 24 and os.path.exists(tmp_path / "cli" / "everything.json")


def test_evaluate_rejects_mismatches(bundle, cache, tmp_path):
    from pipeline.evaluation.clips import evaluate

    meta = json.load(open(os.path.join(cache, "meta.json")))
    other = tmp_path / "other"
    os.makedirs(other)
    os.symlink(os.path.join(cache, "shards"), other / "shards")
    meta["encoder"]["layer"] = "last"
    (other / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="encoder.layer"):
        evaluate(bundle, str(tmp_path / "o"), features=str(other), split="test")
    with pytest.raises(ValueError, match="no usable rows"):
        evaluate(bundle, str(tmp_path / "o"), features=cache, split="nope")
    with pytest.raises(ValueError, match="exactly one"):
        evaluate(bundle, str(tmp_path / "o"))


class _Cache:
    def __init__(self, groups: str | None):
        self.meta = {"groups": groups} if groups else {}


def _items(units: list[str], key: str) -> list[dict]:
    return [
        {"path": f"/a/{u}_{i}.wav", "speaker": u}
        if key == "speaker"
        else {"path": f"/a/{u}.wav", "speaker": f"{u}/ch{i % 2}"}
        for u in units
        for i in range(8)
    ]


def test_intervals_resample_held_out_units():
    """Speakers for isolated clips, recordings for turns of calls; a split of one perfect and one hopeless unit
    spans nearly everything, however many rows each holds."""
    from pipeline.evaluation.bootstrap import format_intervals
    from pipeline.evaluation.clips import _intervals

    y = np.tile(np.arange(4), 4)  # 16 rows, 8 per unit
    pred = np.where(np.arange(16) < 8, y, (y + 1) % 4)  # the first unit all right, the second all wrong
    probs = np.eye(4)[pred] * 0.9 + 0.025
    ci = _intervals(_Cache(None), _items(["a", "b"], "speaker"), y, pred, probs, 4, 500)
    assert ci["unit"] == "speaker" and ci["n_recordings"] == 2
    assert ci["ua"][0] <= 0.05 and ci["ua"][1] >= 0.95 and "ece" in ci
    calls = _intervals(_Cache("channels"), _items(["c1", "c2"], "recording"), y, pred, probs, 4, 500)
    assert calls["unit"] == "recording" and calls["n_recordings"] == 2  # two channels each, one call
    line = format_intervals(ci, ci["unit"])
    assert "over 2 speakers" in line and "UA 0.000-1.000" in line
    # the same rows as one unit each would give a narrow interval: the unit is what makes it honest
    per_row = _intervals(_Cache(None), [{"path": str(i), "speaker": str(i)} for i in range(16)], y, pred, probs, 4, 500)
    assert per_row["n_recordings"] == 16 and per_row["ua"][1] - per_row["ua"][0] < 0.6
    assert _intervals(_Cache(None), _items(["a"], "speaker")[:8], y[:8], pred[:8], probs[:8], 4, 500) is None
    assert _intervals(_Cache(None), _items(["a", "b"], "speaker"), y, pred, probs, 4, 0) is None
