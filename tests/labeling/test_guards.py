"""Resume guards of the labeling output: the model id covers every label-relevant bundle file, an output keeps one
model's labels, and one job at a time holds an output (no Ray: the guards act before any stage runs)."""

import json
import os
import shutil
import subprocess
import sys
import time

import pyarrow as pa
import pytest

from pipeline.labeling.guards import (
    DIGEST_CACHE,
    LOCK_FILE,
    OutputError,
    OutputLock,
    bundle_digest,
    check_output_model,
    output_model_ids,
)
from pipeline.labeling.sink import SEGMENT_SCHEMA, segments_dir, write_atomic


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from emoq_model.bundle import save_bundle
    from emoq_model.model import EmoQModel
    from emoq_model.testing import tiny_config

    return str(save_bundle(EmoQModel(tiny_config()), tmp_path_factory.mktemp("b") / "bundle", merge_llm=True))


def test_digest_covers_every_weight_and_is_cached(bundle, tmp_path):
    d0 = bundle_digest(bundle)
    assert os.path.exists(os.path.join(bundle, DIGEST_CACHE))
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    (copy / DIGEST_CACHE).unlink()
    assert bundle_digest(copy) == d0  # content, not place or time
    merged = sorted((copy / "llm_merged").glob("*.safetensors"))[0]
    raw = bytearray(merged.read_bytes())
    raw[-1] ^= 1  # one bit of the merged LLM's last tensor: past the first MiB the old id read
    merged.write_bytes(bytes(raw))
    assert bundle_digest(copy) != d0
    from pipeline.labeling.job import model_id

    assert model_id(bundle) != model_id(str(copy))


def _output(out, mid):
    row = {f.name: None for f in SEGMENT_SCHEMA}
    row.update(recording_id="r1", path="/a/r1.wav", model_id=mid, error="no segments")
    write_atomic(pa.Table.from_pylist([row], schema=SEGMENT_SCHEMA), segments_dir(str(out)), b"r1")


def test_an_output_keeps_one_models_labels(bundle, tmp_path):
    out = tmp_path / "out"
    assert output_model_ids(str(out)) == set()
    _output(out, "other@123")
    check_output_model(str(out), "other@123")
    with pytest.raises(OutputError, match="holds labels of"):
        check_output_model(str(out), "mine@456")
    check_output_model(str(out), "mine@456", allow_other=True)
    # the job refuses before any stage starts (no Ray here), and says how to proceed
    from pipeline.labeling.job import LabelJobConfig, run

    cfg = LabelJobConfig(inputs=[str(tmp_path)], output=str(out), bundle=bundle)
    with pytest.raises(OutputError, match="--allow-other-model"):
        run(cfg, log=lambda *_: None)
    assert not (out / LOCK_FILE).exists()  # released on the way out


def test_one_job_per_output_and_stale_locks_are_taken_over(tmp_path):
    out = str(tmp_path / "out")
    with OutputLock(out):
        with pytest.raises(OutputError, match="another labeling job holds"):
            OutputLock(out).acquire()
    assert not os.path.exists(os.path.join(out, LOCK_FILE))
    # a holder that died on this host: its pid is gone
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = os.path.join(out, LOCK_FILE)
    with open(lock, "w") as f:
        json.dump(
            {"host": OutputLock(out).me["host"], "pid": int(dead.stdout), "token": "x", "heartbeat": time.time()}, f
        )
    with OutputLock(out) as held:
        assert json.load(open(lock))["token"] == held.me["token"]
    # a holder on another host whose heartbeat stopped
    with open(lock, "w") as f:
        json.dump({"host": "elsewhere", "pid": 1, "token": "y", "heartbeat": time.time() - 600}, f)
    with OutputLock(out, stale_s=120):
        pass
    # ... and one that is alive elsewhere is respected
    with open(lock, "w") as f:
        json.dump({"host": "elsewhere", "pid": 1, "token": "z", "heartbeat": time.time()}, f)
    with pytest.raises(OutputError):
        OutputLock(out).acquire()


def test_the_lock_heartbeat_moves(tmp_path):
    out = str(tmp_path / "out")
    with OutputLock(out, heartbeat_s=0.1) as lock:
        first = lock._read()["heartbeat"]
        time.sleep(0.5)
        assert lock._read()["heartbeat"] > first
