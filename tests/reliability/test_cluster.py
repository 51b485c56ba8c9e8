"""Node loss during labeling, on a real multi-node Ray cluster (``ray.cluster_utils.Cluster``: one head and two
worker nodes, each its own raylet and object store on this machine).

The encoder stage is placed on the worker nodes through a custom resource. Mid-job, the node running the encoder
actor is removed (its raylet, object store and workers die, with the batches and blocks they held). Ray restarts
the actor on the other worker node; blocks lost with the node are rebuilt or, where Ray cannot rebuild them
(outputs of actor tasks), their batches fail and the job's one-by-one pass labels those recordings again.
The job must finish with every recording exactly once and no error rows.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pyarrow.parquet as pq
import pytest

from pipeline.labeling.sink import recording_counts, segments_dir

pytestmark = pytest.mark.slow  # real Ray + vLLM end to end: `pytest -m 'not slow'` skips it

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from emoq_model.bundle import save_bundle
    from emoq_model.model import EmoQModel
    from emoq_model.testing import tiny_config

    return str(save_bundle(EmoQModel(tiny_config()), tmp_path_factory.mktemp("b") / "bundle"))


def _encoder_actor_raylet() -> int | None:
    """pid of the raylet whose node runs the encoder actor (worker process titles name the actor class)."""
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "EncodePrompts" not in " ".join(p.info["cmdline"] or []):
                continue
            for parent in p.parents():
                if "raylet" in parent.name():
                    return parent.pid
        except psutil.Error:
            continue
    return None


def test_worker_node_lost_mid_job(bundle, tmp_path, monkeypatch):
    from ray.cluster_utils import Cluster

    from pipeline.demo.calls import make_call_archive

    manifest = make_call_archive(tmp_path / "calls", n_calls=6, minutes=0.2, seed=11, workers=1)
    calls = pd.read_csv(manifest)
    faults = tmp_path / "faults"
    faults.mkdir()
    (faults / "encode.sleep").write_text("4")  # slow encoder batches: the node loss lands mid-job
    monkeypatch.setenv("EMOQ_FAULTS_DIR", str(faults))  # inherited by the raylets and their workers
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    out = tmp_path / "out"
    # The job runs as the CLI in its own process (its own driver): whatever happens, this test process never
    # joins the cluster, so it can always tear it down.
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False, "resources": {"label_node": 1}}
    )
    workers = [cluster.add_node(num_cpus=1, resources={"encoder_node": 1}) for _ in range(2)]
    cmd = [
        sys.executable,
        str(REPO / "jobs" / "label_corpus.py"),
        str(manifest),
        "--bundle",
        bundle,
        "--output",
        str(out),
        "--address",
        cluster.address,
        "--batch-recordings",
        "1",
        "--encode-cpus",
        "0.5",
        "--encode-resources",
        '{"encoder_node": 1}',
        "--label-cpus",
        "0.5",
        "--label-resources",
        '{"label_node": 1}',
        "--engine",
        "max_model_len=512",
        "max_num_seqs=64",
    ]
    log = open(tmp_path / "driver.log", "wb")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    seg = Path(segments_dir(str(out)))
    try:
        deadline = time.time() + 400
        raylet = None
        # find the encoder actor's node while the job starts (its process title names the actor class), then wait
        # for the first part file: the node loss lands after some recordings are written and before the rest
        while time.time() < deadline and proc.poll() is None:
            raylet = raylet or _encoder_actor_raylet()
            if raylet is not None and list(seg.glob("part-*.parquet")):
                break
            time.sleep(0.2)
        assert proc.poll() is None and raylet is not None, (
            f"the job ended (or no encoder actor) before the node loss: {(tmp_path / 'driver.log').read_text()[-3000:]}"
        )
        lost = next(n for n in workers if n.all_processes["raylet"][0].process.pid == raylet)
        done_before = len(list(seg.glob("part-*.parquet")))
        cluster.remove_node(lost, allow_graceful=False)
        rc = proc.wait(timeout=600)
        assert rc == 0, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        log.close()
        cluster.shutdown()
    rep = json.loads((out / "report.json").read_text())
    n = len(calls)
    assert done_before < n, "the node loss did not land mid-job"
    assert rep["recordings_found"] == n == rep["labeled"] == rep["recordings_in_output"], rep
    assert rep["failed"] == 0 and rep["duplicate_recordings"] == 0
    counts = recording_counts(str(out))
    assert sorted(counts) == sorted(calls.recording_id) and set(counts.values()) == {1}
    df = pq.read_table(segments_dir(str(out))).to_pandas()
    assert df.error.isna().all() and not df.duplicated(["recording_id", "channel", "segment_index"]).any()
    print(f"node lost after {done_before}/{n} recordings; retried one by one afterwards: {rep['isolated']}")
