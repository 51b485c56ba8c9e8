"""Quality under deployment conditions, end to end at small scale: a model trained on labelled calls (Ray Data
features, Ray Train) labels an archive of unseen speakers with the real pipeline (Ray Data + vLLM), and the archive
evaluation must show it beats chance and the majority by a margin; an all-angry channel must not be normalised
into fewer angry labels; training-time and labeling-time features of the same turns must be the same.

The thresholds are real: an untrained, a label-shuffled or a normalise-everything-away model fails them.
"""

import json
import os

import numpy as np
import pandas as pd
import pytest

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")]

OVERRIDES = [
    "train.stage1.epochs=12",
    "train.stage1.batch_size=16",
    "train.stage2.epochs=4",
    "train.stage2.batch_size=16",
]


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    """Labelled training and validation calls and a scripted evaluation archive, with disjoint voices."""
    from pipeline.demo.calls import SCRIPT_ORDER, archive_voices, make_call_archive
    from pipeline.recipes import call_archive_manifest, write_manifest

    root = tmp_path_factory.mktemp("quality")
    train = make_call_archive(
        root / "train",
        n_calls=24,
        minutes=1.5,
        seed=31,
        scripts="mixed",
        lines="training",
        n_customers=10,
        id_prefix="train",
        workers=2,
    )
    val = make_call_archive(
        root / "val",
        n_calls=4,
        minutes=1.0,
        seed=32,
        scripts="mixed",
        lines="training",
        id_prefix="val",
        exclude_voices=archive_voices(train),
        workers=2,
    )
    seen = archive_voices(train) | archive_voices(val)
    archive = make_call_archive(
        root / "eval", n_calls=2 * len(SCRIPT_ORDER), minutes=1.0, seed=33, exclude_voices=seen, workers=2
    )
    manifest = write_manifest(
        pd.concat(
            [
                call_archive_manifest(train.parent / "segments.csv", "train"),
                call_archive_manifest(val.parent / "segments.csv", "val"),
            ]
        ),
        root / "manifest.csv",
        add_recording_id=False,
    )
    return {"root": root, "manifest": manifest, "archive": archive, "truth": archive.parent / "segments.csv"}


@pytest.fixture(scope="module")
def trained(ray_session, archives):
    from emoq_model.config import demo_config_path, load_config
    from pipeline.training import TrainSettings, run_training
    from pipeline.training.extract import extract_features

    cfg = load_config(demo_config_path(), OVERRIDES)
    features = archives["root"] / "features"
    meta = extract_features(str(archives["manifest"]), str(features), cfg, batch_size=16)
    s = TrainSettings(
        features=str(features),
        storage_path=str(archives["root"] / "ray"),
        name="quality",
        bundle_out=str(archives["root"] / "bundle"),
        num_workers=2,
    )
    return {"summary": run_training(cfg, s), "features": features, "meta": meta, "cfg": cfg}


@pytest.fixture(scope="module")
def labelled(trained, archives):
    from jobs.evaluate_archive import main as evaluate_archive
    from jobs.label_corpus import main as label_corpus

    out = archives["root"] / "labels"
    label_corpus(
        [
            str(archives["archive"]),
            "--bundle",
            trained["summary"]["bundle"],
            "--output",
            str(out),
            "--encode-cpus",
            "0.5",
            "--label-cpus",
            "0.5",
        ]
    )
    return {"out": out, "report": evaluate_archive([str(out), str(archives["truth"])])}


def test_archive_quality_beats_chance_and_majority(labelled, trained):
    rep = labelled["report"]
    assert trained["meta"]["groups"] == "channels"  # trained on call channels: statistics as at labeling time
    assert rep["n_scored"] > 150 and rep["coverage"] > 0.9
    seg = rep["segment"]
    # chance UA is 0.25 and always-neutral's UA 0.25: a trained model must clear both by a margin. Training is
    # deterministic for a given feature cache (FeatureCache.index is ordered by utt_id, not by shard write order):
    # this run scores UA 0.52, macro-F1 0.50 (majority 0.18) on every run; before that fix, runs differed and
    # scored 0.37-0.52 (one CI run had macro-F1 0.32). The demo's full-size runs score 0.46-0.59.
    assert seg["ua"] >= 0.40, json.dumps(seg["per_class"])
    assert seg["macro_f1"] > rep["majority"]["macro_f1"] + 0.15
    # calibration was fitted on the validation calls and the output carries the label mass
    cal = json.load(open(os.path.join(trained["summary"]["bundle"], "calibration.json")))
    assert cal["ece_after"] <= cal["ece_before"] + 1e-9 and 0.05 < cal["temperature"] < 20
    assert 0 <= cal["ece_crossfit"] <= 1  # held out by recording: the worker passed each validation row's call
    seg_rows = pd.read_parquet(rep["files"]["segments"])
    assert seg_rows["label_mass"].between(0, 1.0001).all()


def _turns(truth: pd.DataFrame, rid: str, channel: int, rate: int):
    """The turns of one channel as the label job cuts them (``prepare_recording`` with the turns as given segments)."""
    from pipeline.labeling.prepare import PrepareConfig, prepare_recording, split_segments

    t = truth[(truth.recording_id == rid) & (truth.channel == channel)].sort_values("start_s")
    segs = [{"start": r.start_s, "end": r.end_s, "channel": channel} for r in t.itertuples()]
    row = prepare_recording(
        {
            "recording_id": rid,
            "path": t.path.iloc[0],
            "channel_names": "agent,customer",
            "given_segments": json.dumps(segs),
        },
        PrepareConfig(sample_rate=rate),
    )
    assert row["error"] is None, row["error"]
    return [np.array(w) for w in split_segments(row)], t.label.tolist()


def _predict(model, norm, waves, groups):
    import torch

    from emoq_model.model import collate_features

    enc = model.encoder(waves)
    items = norm.apply([{"frames": enc.item(i).float(), "speaker": g, "utt_id": str(i)} for i, g in enumerate(groups)])
    with torch.no_grad():
        probs = model.predict_proba(collate_features(items))
    return [model.label_names[i] for i in probs.argmax(-1).tolist()]


def test_an_all_angry_channel_stays_angry(trained, archives):
    """The failure of plain per-channel normalisation: a channel that is angry all call has an angry average, so
    subtracting it makes every turn look neutral. Labelled alone (all angry) its turns must be called angry at
    least as often as when the same turns share the channel with the same speaker's neutral turns."""
    from emoq_model.bundle import load_bundle
    from emoq_model.features import FeatureNorm

    bundle = trained["summary"]["bundle"]
    model = load_bundle(bundle, device="cpu", with_encoder=True)
    norm = FeatureNorm.load(bundle)
    truth = pd.read_csv(archives["truth"])
    calls = pd.read_csv(archives["archive"])
    alone_pred, mixed_pred = [], []
    for rid in calls[calls.customer_arc == "escalate"].recording_id:  # customers: neutral, then angry, then neutral
        waves, labels = _turns(truth, rid, 1, model.encoder.sample_rate)
        angry = [i for i, lab in enumerate(labels) if lab == "angry"]
        assert 0 < len(angry) < len(labels)
        mixed = _predict(model, norm, waves, [f"{rid}/mixed"] * len(waves))
        mixed_pred += [mixed[i] for i in angry]
        alone_pred += _predict(model, norm, [waves[i] for i in angry], [f"{rid}/alone"] * len(angry))
    n = len(alone_pred)
    assert n >= 5
    share = lambda preds, lab: float(np.mean([p == lab for p in preds]))  # noqa: E731
    # one turn of slack: the property is about the direction, subtraction would flip most of them
    assert share(alone_pred, "angry") >= share(mixed_pred, "angry") - 1 / n, (alone_pred, mixed_pred)


def test_training_and_labeling_normalise_the_same_audio_the_same(trained, archives):
    """The training path (feature cache of call turns, per-channel statistics over the cache's channel groups) and
    the labeling path (the label stage's encoder + per-channel normalisation on the given turns) must give the
    same normalised features, so a model is served exactly as it was trained."""
    import torch

    from emoq_model import features as F
    from pipeline.labeling.encode import EncodePrompts

    bundle = trained["summary"]["bundle"]
    cache = F.FeatureCache(trained["features"])
    rid = cache.index(["utt_id", "speaker", "split"]).query("split == 'val'")["speaker"].iloc[0]
    idx = cache.index(["utt_id", "speaker", "split", "label"])
    rows = idx[idx.speaker == rid]
    groups = F.norm_groups(cache, rows, "channels")
    stats = F.group_stats(cache, groups)
    norm = F.FeatureNorm.load(bundle)
    train_items = norm.apply([dict(it, speaker=groups[it["utt_id"]]) for it in cache.load(utt_ids=rows.utt_id)], stats)
    # labeling side: the same turns cut from the call, encoded and normalised by the label stage
    truth = pd.concat([pd.read_csv(archives["root"] / d / "segments.csv") for d in ("train", "val")])
    rec, ch_name = rid.split("/")
    ch = 0 if ch_name == "agent" else 1
    stage = EncodePrompts(bundle, device="cpu")
    waves, _ = _turns(truth, rec, ch, stage.sample_rate)
    captured = []
    stage._former = lambda idx_, items, out: captured.extend(items)  # the normalised items the Former gets
    stage.encode(waves, [None] * len(waves), [rid] * len(waves))
    order = sorted(range(len(train_items)), key=lambda i: int(train_items[i]["utt_id"].split("/")[-1]))
    assert len(captured) == len(train_items) == len(waves)
    lab = sorted(captured, key=lambda it: int(it["utt_id"]))
    for k, i in enumerate(order):
        a = torch.as_tensor(np.asarray(train_items[i]["frames"], np.float32))
        b = lab[k]["frames"].float()
        assert a.shape == b.shape
        # equal to the cache's float16 storage and the encoder's batching tolerance (another population for the
        # statistics, e.g. per-speaker or per-utterance, would move every value by 0.1-1)
        diff = (a - b).abs()
        assert float(diff.max()) < 0.05 and float(diff.mean()) < 3e-3, (float(diff.max()), float(diff.mean()))
