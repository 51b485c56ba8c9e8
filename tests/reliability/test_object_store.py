"""Object stores and tar shards for real: a local S3-compatible server (moto, on 127.0.0.1) holds a manifest, its
audio and WebDataset-style shards; feature extraction and labeling read them through the one decode path and write
their outputs back to the bucket. Real Ray, real vLLM, real Parquet; nothing of pyarrow is mocked.

The endpoint reaches every Ray worker the way it would in production: ``AWS_ENDPOINT_URL`` and credentials in the
environment the cluster was started with (pyarrow's S3 client reads them).
"""

import json
import logging
import os

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

moto_server = pytest.importorskip("moto.server")
ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")]

BUCKET = "archive"
S3_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on a free loopback port, its endpoint and credentials in the environment (so that the Ray
    workers started after it inherit them), one bucket; everything restored afterwards."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {**S3_ENV, "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    fs = pafs.S3FileSystem(
        access_key="test",
        secret_key="test",
        endpoint_override=env["AWS_ENDPOINT_URL"],
        region="us-east-1",
        allow_bucket_creation=True,
    )
    fs.create_dir(BUCKET)
    if ray.is_initialized():
        ray.shutdown()
    from pipeline.ray_env import init_ray

    init_ray(num_cpus=4)
    yield fs
    ray.shutdown()
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _put(fs, key: str, data: bytes) -> str:
    with fs.open_output_stream(f"{BUCKET}/{key}") as f:
        f.write(data)
    return f"s3://{BUCKET}/{key}"


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Eight labelled clips of the demo corpus (4 speakers), as a local manifest."""
    from pipeline.demo.corpus import CorpusConfig, make_emotion_corpus

    root = tmp_path_factory.mktemp("corpus")
    df = pd.read_csv(make_emotion_corpus(root, CorpusConfig(n_speakers=4, n_sentences=1, mode="easy", workers=1)))
    return df.groupby("label").head(2).reset_index(drop=True)


def test_extraction_from_s3_manifest_and_shards(s3, clips, tmp_path):
    """The same clips three ways -- local manifest, S3 manifest (relative paths), S3 tar shards -- give identical
    features; the S3 manifest's missing file and the shards' bad members are error rows; the cache is on S3."""
    from emoq_model import features as F
    from pipeline.shards import write_shard
    from pipeline.training.extract import extract_features

    cols = ["utt_id", "label", "transcript", "speaker", "split"]
    rows = []
    for r in clips.itertuples():
        data = open(r.path, "rb").read()
        _put(s3, f"train/audio/{r.utt_id}.wav", data)
        rows.append({**{c: getattr(r, c) for c in cols}, "path": f"audio/{r.utt_id}.wav"})
    rows.append({**rows[0], "utt_id": "gone", "path": "audio/gone.wav"})
    man = _put(s3, "train/manifest.csv", pd.DataFrame(rows).to_csv(index=False).encode())
    samples = [
        (r.utt_id, {"wav": open(r.path, "rb").read(), "json": json.dumps({c: getattr(r, c) for c in cols}).encode()})
        for r in clips.itertuples()
    ]
    write_shard(str(tmp_path / "s.tar"), samples[:4] + [("junk", {"wav": b"RIFF" + b"\x00" * 300})])
    whole = (tmp_path / "s.tar").read_bytes()
    write_shard(str(tmp_path / "t.tar"), samples[4:])
    cut = (tmp_path / "t.tar").read_bytes()
    _put(s3, "train/shards/shard-000.tar", whole)
    _put(s3, "train/shards/shard-001.tar", cut[: len(cut) - 11000])  # truncated: the last member is cut off

    local_man = tmp_path / "local.csv"
    clips.to_csv(local_man, index=False)
    # batches of one: the encoder sees each clip alone, so equal samples must give bit-equal features
    local = extract_features(str(local_man), str(tmp_path / "local"), batch_size=1)
    on_s3 = extract_features(man, f"s3://{BUCKET}/features/manifest", batch_size=1)
    sharded = extract_features(f"s3://{BUCKET}/train/shards/", f"s3://{BUCKET}/features/shards", batch_size=1)

    assert local["n_rows"] == 8 and local["n_errors"] == 0
    assert on_s3["n_rows"] == 9 and on_s3["n_errors"] == 1 and "not found" in on_s3["errors"][0]["error"]
    assert sharded["n_rows"] == 9 and sharded["n_errors"] == 2
    errors = {e["utt_id"]: e["error"] for e in sharded["errors"]}
    assert errors["shard-000/junk"].startswith("decode: not a readable audio file")
    last = samples[-1][0]
    cut_off = [e for u, e in errors.items() if u.endswith(last)]  # its sidecar may be cut off too: then no utt_id
    assert len(cut_off) == 1 and "truncated tar shard" in cut_off[0]
    ref = {it["utt_id"]: it for it in F.FeatureCache(str(tmp_path / "local")).load()}
    for cache in (F.FeatureCache(f"s3://{BUCKET}/features/manifest"), F.FeatureCache(f"s3://{BUCKET}/features/shards")):
        items = {it["utt_id"]: it for it in cache.load()}
        assert set(items) <= set(ref) and len(items) >= 7
        for u, it in items.items():
            assert it["label"] == ref[u]["label"] and it["speaker"] == ref[u]["speaker"]
            np.testing.assert_array_equal(it["frames"], ref[u]["frames"])  # the same samples, the same features


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from emoq_model.bundle import save_bundle
    from emoq_model.model import EmoQModel
    from emoq_model.testing import tiny_config

    return str(save_bundle(EmoQModel(tiny_config()), tmp_path_factory.mktemp("b") / "bundle"))


def test_label_shards_on_s3_with_resume(s3, bundle, tmp_path):
    """Stereo calls packed into shards on S3, labelled into an S3 output: every sample is a row (bad ones with
    their reason); a lost part file is relabelled member by member on the rerun, nothing duplicated."""
    from pipeline.demo.calls import make_call_archive
    from pipeline.labeling.job import LabelJobConfig, StageResources, run
    from pipeline.labeling.sink import segments_dir
    from pipeline.shards import write_shard

    calls = pd.read_csv(make_call_archive(tmp_path / "calls", n_calls=3, minutes=0.25, seed=5, workers=1))
    samples = [
        (
            r.recording_id,
            {"wav": open(r.path, "rb").read(), "json": json.dumps({"channels": r.channels.split(",")}).encode()},
        )
        for r in calls.itertuples()
    ]
    write_shard(str(tmp_path / "a.tar"), samples[:2] + [("corrupt", {"wav": b"RIFFxxxxWAVEnot audio" * 20})])
    write_shard(str(tmp_path / "b.tar"), samples[2:] + [("silent", {"json": b"{}"})])
    for name in ("a", "b"):
        _put(s3, f"calls/{name}.tar", (tmp_path / f"{name}.tar").read_bytes())
    out = f"s3://{BUCKET}/labels"

    def job():
        return LabelJobConfig(
            inputs=[f"s3://{BUCKET}/calls/*.tar"],
            output=out,
            bundle=bundle,
            batch_recordings=1,
            encode=StageResources(1, 0.5),
            label=StageResources(1, 0.5),
            engine={"enforce_eager": True, "max_model_len": 512, "max_num_seqs": 64},
        )

    rep = run(job())
    expect = {f"a/{k}" for k, _ in samples[:2]} | {"a/corrupt"} | {f"b/{k}" for k, _ in samples[2:]} | {"b/silent"}
    fs, seg_path = pafs.FileSystem.from_uri(segments_dir(out))
    df = pq.read_table(seg_path, filesystem=fs).to_pandas()
    assert set(df.recording_id) == expect and rep["recordings_found"] == len(expect) == 5
    assert rep["labeled"] == 3 and rep["failed"] == 2
    errors = df[df.error.notna()].set_index("recording_id").error
    assert "not a readable audio file" in errors["a/corrupt"] and errors["b/silent"] == "sample has no audio member"
    ok = df[df.error.isna()]
    assert set(ok.channel) == {"agent", "customer"} and len(ok) >= 6

    parts = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(seg_path)) if i.path.endswith(".parquet"))
    lost = set(pq.read_table(parts[0], filesystem=fs, columns=["recording_id"]).column(0).to_pylist())
    fs.delete_file(parts[0])
    rep2 = run(job())
    assert rep2["labeled"] + rep2["failed"] == len(lost) and rep2["already_done"] == 5 - len(lost)
    df2 = pq.read_table(seg_path, filesystem=fs).to_pandas()
    assert len(df2) == len(df) and not df2.duplicated(["recording_id", "channel", "segment_index"]).any()
    key = ["recording_id", "channel", "segment_index"]
    merged = ok.merge(df2[df2.error.isna()], on=key, suffixes=("", "_new"))
    assert len(merged) == len(ok) and (merged.label == merged.label_new).all()
