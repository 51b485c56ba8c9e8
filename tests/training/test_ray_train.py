"""Real Ray: feature extraction (error rows), the two-stage Ray Train job with 2 workers, recovery from a killed
worker, resume of an interrupted run, and evaluation of the exported bundle. Small synthetic corpus, tiny model.

The three training runs use the same config and seeds, so the failure-recovered and the resumed run must end with
the same weights as the uninterrupted one (deterministic shuffling / dropout per (seed, stage, epoch, rank)).
"""

import contextlib
import io
import json
import os

import numpy as np
import pandas as pd
import pytest

ray = pytest.importorskip("ray")
# Ray Data's own DataContext() trips its deprecation warnings (ray/data/context.py); not ours to fix
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")]

from emoq_model import features as F  # noqa: E402
from emoq_model.config import demo_config_path, load_config  # noqa: E402

TRAIN_OVERRIDES = [
    "former.num_queries=4",
    "former.num_layers=1",
    "former.intermediate=256",
    "train.stage1.epochs=3",
    "train.stage1.batch_size=16",
    "train.stage1.ema=0.9",  # the recovery and resume tests then cover the average's checkpointed state
    "train.stage2.epochs=2",
    "train.stage2.batch_size=16",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from pipeline.demo.corpus import CorpusConfig, make_emotion_corpus

    root = tmp_path_factory.mktemp("corpus")
    manifest = make_emotion_corpus(root, CorpusConfig(n_speakers=6, n_sentences=3, mode="easy", workers=1, seed=3))
    df = pd.read_csv(manifest)
    bad = root / "corrupt.wav"
    bad.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage that is not audio")
    extra = df[df["split"] == "train"].head(2).copy()
    extra["utt_id"] = ["corrupt_1", "missing_1"]
    extra["path"] = [str(bad), str(root / "does_not_exist.wav")]
    out = root / "manifest_with_bad.csv"
    pd.concat([df, extra]).to_csv(out, index=False)
    return out


@pytest.fixture(scope="module")
def cfg():
    return load_config(demo_config_path(), TRAIN_OVERRIDES)


@pytest.fixture(scope="module")
def features(ray_session, corpus, cfg, tmp_path_factory):
    from pipeline.training.extract import extract_features

    out = tmp_path_factory.mktemp("features") / "cache"
    console = io.StringIO()
    with contextlib.redirect_stderr(console):  # the progress lines (not a terminal: periodic lines + the last)
        meta = extract_features(str(corpus), str(out), cfg, batch_size=8, progress=True)
    (out.parent / "console.txt").write_text(console.getvalue())
    return out, meta


def test_extract_features_error_rows(features, corpus):
    out, meta = features
    assert meta["n_rows"] == len(pd.read_csv(corpus)) == 74
    assert meta["n_errors"] == 2
    errors = {e["utt_id"]: e["error"] for e in meta["errors"]}
    assert set(errors) == {"corrupt_1", "missing_1"}
    assert "file not found" in errors["missing_1"] and errors["corrupt_1"].startswith("decode:")
    cache = F.FeatureCache(out)
    idx = cache.index()
    good = idx[idx["error"].isna()]
    assert len(good) == 72 and good["n_frames"].notna().all() and good["num_samples"].notna().all()
    assert (good["n_layers"] == 5).all() and (good["dim"] == 384).all()  # Whisper tiny.en, 4 layers + embeddings
    from emoq_model.encoder import whisper_frames

    assert all(whisper_frames(int(n)) == t for n, t in zip(good["num_samples"], good["n_frames"]))
    item = cache.load(utt_ids=[good["utt_id"].iloc[0]])[0]
    assert item["frames"].shape == (5, good["n_frames"].iloc[0], 384) and item["frames"].dtype == np.float16
    assert set(cache.speaker_stats()) == set(good["speaker"])
    assert meta["splits"] == {"train": 48, "val": 12, "test": 12}
    import pyarrow.parquet as pq

    for f in cache.files:  # frames stored raw (float16 states do not compress; decoding snappy costs every read)
        md = pq.ParquetFile(f).metadata
        codecs = {md.schema.column(i).name: md.row_group(0).column(i).compression for i in range(md.num_columns)}
        assert codecs["frames"] == "UNCOMPRESSED" and codecs["utt_id"] == "SNAPPY", codecs
    # the progress bar counted every row (two of them failed) and its audio, fed by the encoder actors
    last = (out.parent / "console.txt").read_text().strip().splitlines()[-1]
    audio_h = meta["audio_s"] / 3600
    assert last.startswith(f"[extract] 74/74 turns · {audio_h:.2f} h audio · 2 failed · ") and last.endswith("done")


def _settings(tmp_path_factory, features, name, **kw):
    from pipeline.training import TrainSettings

    root = tmp_path_factory.getbasetemp() / "train"
    return TrainSettings(
        features=str(features[0]),
        storage_path=str(root / "ray"),
        name=name,
        bundle_out=str(root / f"bundle_{name}"),
        num_workers=2,
        cpus_per_worker=0.5,
        norm_min_frames=100,
        verbose=False,
        **kw,
    )


def _history(summary):
    return [(h["stage"], h["epoch"]) for h in summary["history"]]


def _weights(bundle):
    from safetensors.numpy import load_file

    w = load_file(os.path.join(bundle, "former.safetensors"))
    w.update(
        {f"adapter.{k}": v for k, v in load_file(os.path.join(bundle, "adapter", "adapter_model.safetensors")).items()}
    )
    return w


@pytest.fixture(scope="module")
def full_run(features, cfg, tmp_path_factory):
    """The uninterrupted run, through the training job's command line (the same settings as ``_settings``)."""
    from jobs import train

    s = _settings(tmp_path_factory, features, "full")
    argv = [s.features, "--out", s.bundle_out, "--name", s.name, "--storage-path", s.storage_path]
    argv += ["--workers", "2", "--cpus-per-worker", "0.5", "--norm-min-frames", "100"]
    console = io.StringIO()
    with contextlib.redirect_stdout(console), contextlib.redirect_stderr(console):
        summary = train.main([*argv, *[x for o in TRAIN_OVERRIDES for x in ("--set", o)]])
    summary["console"] = console.getvalue()
    return summary


def test_train_job_console(full_run):
    """The job's console: each epoch's validation line, then the bar's last line over all 5 epochs; the
    libraries' logs are in the run's log file instead."""
    lines = full_run["console"].splitlines()
    epochs = [ln for ln in lines if ln.startswith("[train] stage ")]
    assert [ln.split(":")[0] for ln in epochs] == [
        *(f"[train] stage 1 epoch {e}" for e in range(3)),
        *(f"[train] stage 2 epoch {e}" for e in range(2)),
    ]
    assert any(ln.startswith("[train] 5/5 epochs · ") and ln.endswith("done") for ln in lines)
    assert any(ln.startswith("run full: bundle ") for ln in lines)
    log = full_run["log_file"]
    assert log.endswith(os.path.join("full", "logs", "train.log")) and "Ray session dir" in open(log).read()


def test_two_stage_job_gives_loadable_bundle(full_run, features, tmp_path_factory):
    import torch

    from emoq_model.bundle import load_bundle
    from emoq_model.model import collate_features

    s = full_run
    assert _history(s) == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1)]
    lines = [json.loads(x) for x in open(s["metrics_file"])]
    assert [(r["stage"], r["epoch"]) for r in lines] == _history(s)
    for r in lines:
        assert 0 <= r["val_wa"] <= 1 and 0 <= r["val_ua"] <= 1 and 0 <= r["val_wf1"] <= 1 and r["val_loss"] > 0
        assert r["world_size"] == 2 and r["start"] == 0
    assert lines[0]["train_supcon"] > 0 and lines[0]["train_focal"] > 0 and lines[-1]["train_lm"] > 0
    # the bundle: best stage-2 epoch by validation UA, feature normalisation saved with it
    best = s["best"]["2"]
    assert best["ua"] == max(r["val_ua"] for r in lines if r["stage"] == 2)
    norm = F.FeatureNorm.load(s["bundle"])
    assert norm.mode == "speaker" and norm.global_stats is not None and norm.global_stats.mean.shape == (5, 384)
    info = json.load(open(os.path.join(s["bundle"], "training.json")))
    assert sum(info["class_counts"]) == info["n_train"] == 48 and info["n_val"] == 12
    model = load_bundle(s["bundle"], device="cpu")
    cache = F.FeatureCache(features[0])
    items = norm.apply(cache.load(split="test"))
    batch = collate_features([{"frames": torch.from_numpy(np.asarray(it["frames"], np.float32))} for it in items])
    probs = model.predict_proba(batch)
    assert probs.shape == (12, 4) and torch.allclose(probs.sum(-1), torch.ones(12), atol=1e-5)
    assert set(model.predict(batch)) <= set(model.label_names)


def test_streaming_training_data(full_run, features, cfg, tmp_path_factory):
    """``data="stream"``: the rows come from Ray Data every epoch (``get_dataset_shard``), the same number per
    rank, in another order every epoch; the run trains as the in-memory one does (same epochs, similar losses) and
    exports a loadable bundle."""
    from emoq_model.bundle import load_bundle
    from pipeline.training import run_training

    # stage 2 without speed-perturbed copies reads its own dataset ("train_recorded"; this corpus has no copies, so
    # the same rows: tests/training/test_data.py checks the filter)
    stream_cfg = load_config(demo_config_path(), TRAIN_OVERRIDES + ["train.stage2.speed_copies=false"])
    s = run_training(
        stream_cfg, _settings(tmp_path_factory, features, "stream", data="stream", shuffle_buffer=16, context=True)
    )
    assert _history(s) == _history(full_run)
    # --context on an isolated-utterance corpus: its rows have no place in a call, so no context is fitted
    cal = json.load(open(os.path.join(s["bundle"], "calibration.json")))
    assert cal["context"]["weight"] == 0.0 and cal["context"]["grid"] == []
    n_train = json.loads(open(os.path.join(features[0], "meta.json")).read())["splits"]["train"]
    assert [h["train_rows"] for h in s["history"]] == [n_train // 2] * 5  # equal split: 24 rows per rank
    assert [h["train_rows"] for h in full_run["history"]] == [-(-n_train // 2)] * 5
    mem = [h["train_loss"] for h in full_run["history"] if h["stage"] == 1]
    got = [h["train_loss"] for h in s["history"] if h["stage"] == 1]
    print("stage-1 train loss, memory vs stream:", mem, got)
    assert got[-1] < got[0] and abs(got[-1] - mem[-1]) <= 0.15 * mem[-1]
    assert load_bundle(s["bundle"], load_llm=False) is not None


def test_evaluate_bundle_on_cache(full_run, features, tmp_path):
    from pipeline.evaluation.clips import evaluate

    rep = evaluate(full_run["bundle"], str(tmp_path / "eval"), features=str(features[0]), split="test")
    assert rep["n"] == 12 and rep["feature_norm"] == "speaker"
    assert os.path.exists(rep["files"]["json"]) and os.path.exists(rep["files"]["png"])
    preds = pd.read_parquet(rep["files"]["predictions"])
    assert len(preds) == 12 and np.allclose(preds[[f"p_{c}" for c in rep["labels"]]].sum(axis=1), 1, atol=1e-5)
    back = json.load(open(rep["files"]["json"]))
    assert back["ua"] == rep["ua"] and len(back["confusion_matrix"]) == 4


def test_worker_killed_mid_training_recovers(full_run, features, cfg, tmp_path_factory):
    from pipeline.training import run_training

    marker = tmp_path_factory.getbasetemp() / "killed.marker"
    s = run_training(
        cfg,
        _settings(
            tmp_path_factory,
            features,
            "killed",
            max_failures=1,
            fail_once={"stage": 1, "epoch": 1, "rank": 1, "marker": str(marker), "how": "exit"},
        ),
    )
    assert marker.exists()  # rank 1 really died (os._exit) after the first step of stage 1 epoch 1
    assert _history(s) == _history(full_run)  # every epoch exactly once
    starts = [h["start"] for h in s["history"]]
    assert starts == [0, 1, 1, 1, 1]  # epoch 0 before the failure, the rest after the restart from its checkpoint
    a, b = _weights(full_run["bundle"]), _weights(s["bundle"])
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-5, err_msg=k)


def test_resume_interrupted_run(full_run, features, cfg, tmp_path_factory):
    from pipeline.training import run_training

    marker = tmp_path_factory.getbasetemp() / "interrupted.marker"
    first = _settings(
        tmp_path_factory,
        features,
        "interrupted",
        max_failures=0,
        fail_once={"stage": 2, "epoch": 0, "rank": 0, "marker": str(marker), "how": "raise"},
    )
    with pytest.raises(Exception, match="injected failure"):
        run_training(cfg, first)
    assert marker.exists()
    # a resume with another config is refused before anything starts (it would silently mix two trainings)
    import copy

    from emoq_model.errors import ConfigError

    changed = copy.deepcopy(cfg)
    changed.train.stage2.lr *= 2
    with pytest.raises(ConfigError, match="different model/training config"):
        run_training(changed, _settings(tmp_path_factory, features, "interrupted", max_failures=0))
    # the same name + storage path: Ray Train restores the latest checkpoint (end of stage 1)
    s = run_training(cfg, _settings(tmp_path_factory, features, "interrupted", max_failures=0))
    assert _history(s) == _history(full_run)
    assert [h["start"] for h in s["history"]] == [0, 0, 0, 1, 1]
    a, b = _weights(full_run["bundle"]), _weights(s["bundle"])
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-5, err_msg=k)


def test_evaluate_bundle_on_manifest(full_run, corpus, features, tmp_path):
    """Raw audio: the manifest is encoded with the bundle's encoder config (Ray Data), then evaluated."""
    from pipeline.evaluation.clips import evaluate

    rep = evaluate(full_run["bundle"], str(tmp_path / "eval"), manifest=str(corpus), split="test")
    assert rep["n"] == 12 and rep["n_input_errors"] == 0
    assert os.path.exists(tmp_path / "eval" / "features" / "meta.json")
    # the same utterances through the module's feature cache give the same predictions
    ref = evaluate(full_run["bundle"], str(tmp_path / "eval_cache"), features=str(features[0]), split="test")
    a = pd.read_parquet(rep["files"]["predictions"]).set_index("utt_id").sort_index()
    b = pd.read_parquet(ref["files"]["predictions"]).set_index("utt_id").sort_index()
    assert (a["prediction"] == b["prediction"]).all()
