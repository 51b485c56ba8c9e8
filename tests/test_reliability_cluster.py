"""Node loss during labeling, on a real multi-node Ray cluster (``ray.cluster_utils.Cluster``: one head and two
worker nodes, each its own raylet and object store on this machine).

The encoder stage is placed on the worker nodes through a custom resource. Mid-job, the node running the encoder
actor is removed (its raylet, object store and workers die, with the batches and blocks they held). Ray restarts
the actor on the other worker node; blocks lost with the node are rebuilt or, where Ray cannot rebuild them
(outputs of actor tasks), their batches fail and the job's one-by-one pass labels those recordings again.
The job must finish with every recording exactly once and no error rows.
"""
import os
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pyarrow.parquet as pq
import pytest
import ray

from pipeline.label_job import LabelJobConfig, StageResources, run
from pipeline.sink import recording_counts, segments_dir

ENGINE = {"enforce_eager": True, "max_model_len": 512, "max_num_seqs": 64}


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


def test_worker_node_lost_mid_job(bundle, tmp_path):
    from ray.cluster_utils import Cluster

    from pipeline.demo_calls import make_call_archive

    manifest = make_call_archive(tmp_path / "calls", n_calls=6, minutes=0.2, seed=11, workers=1)
    calls = pd.read_csv(manifest)
    faults = tmp_path / "faults"
    faults.mkdir()
    (faults / "encode.sleep").write_text("2")  # slow encoder batches: the node loss lands mid-job
    env = {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "VLLM_CPU_KVCACHE_SPACE", "TOKENIZERS_PARALLELISM")
           if k in os.environ}
    env["EMOQ_FAULTS_DIR"] = str(faults)
    os.environ.pop("RAY_ADDRESS", None)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1, resources={"encoder_node": 1}) for _ in range(2)]
    try:
        ray.init(address=cluster.address, runtime_env={"env_vars": env})
        cfg = LabelJobConfig(inputs=[str(manifest)], output=str(tmp_path / "out"),
                             bundle=bundle, batch_recordings=1, engine=dict(ENGINE),
                             encode=StageResources(1, 0.5, resources={"encoder_node": 1}),
                             label=StageResources(1, 0.5))
        box: dict = {}
        th = threading.Thread(target=lambda: box.update(rep=run(cfg)), daemon=True)
        th.start()
        seg = Path(segments_dir(cfg.output))
        deadline = time.time() + 400
        while time.time() < deadline and th.is_alive() and not list(seg.glob("part-*.parquet")):
            time.sleep(0.2)
        raylet = _encoder_actor_raylet()
        assert th.is_alive() and raylet is not None, "the job ended (or no encoder actor) before the node loss"
        lost = next(n for n in workers if n.all_processes["raylet"][0].process.pid == raylet)
        done_before = len(list(seg.glob("part-*.parquet")))
        cluster.remove_node(lost, allow_graceful=False)
        th.join(timeout=600)
        assert not th.is_alive(), "the job did not finish after the node loss"
        rep = box["rep"]
    finally:
        ray.shutdown()
        cluster.shutdown()
    n = len(calls)
    print({k: rep[k] for k in ("recordings_found", "labeled", "failed", "isolated", "crashed", "already_done")})
    if rep["failed"]:
        print(pq.read_table(segments_dir(cfg.output)).to_pandas().dropna(subset=["error"])[["recording_id", "error"]])
    assert done_before < n, "the node loss did not land mid-job"
    assert rep["recordings_found"] == n == rep["labeled"] == rep["recordings_in_output"]
    assert rep["failed"] == 0 and rep["duplicate_recordings"] == 0
    counts = recording_counts(cfg.output)
    assert sorted(counts) == sorted(calls.recording_id) and set(counts.values()) == {1}
    df = pq.read_table(segments_dir(cfg.output)).to_pandas()
    assert df.error.isna().all() and not df.duplicated(["recording_id", "channel", "segment_index"]).any()
    print(f"node lost after {done_before}/{n} recordings; isolated afterwards: {rep['isolated']}")
