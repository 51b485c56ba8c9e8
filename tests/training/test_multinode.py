"""Multi-node training on a real multi-node Ray cluster (``ray.cluster_utils.Cluster``: a head and two worker
nodes on this host, each worker node with one ``trainer`` slot, so one Train worker runs per node; a shared
``storage_path``). The two-stage job runs across the nodes; a second run loses a worker node mid-epoch and goes on
elastically (``min_workers=1``) from the last checkpoint on the node that is left, and ends with a loadable bundle
whose validation metrics match the unfaulted run's within the tolerance below.

Tolerance: up to the checkpoint both runs are the same computation, so the first epoch's metrics are equal; the
continuation trains on one rank with the same global batch but another sample order, so it is not bit-equal to
the two-rank run: final validation loss within 10 % and UA within 0.25 of the unfaulted run's (12 validation
utterances, 3 per class; measured on this machine: epoch 0 both 1.363 / 0.417; final loss 1.407 unfaulted vs 1.391
faulted, UA 0.25 both).
"""

import json
import os
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")]

OVERRIDES = [
    "former.num_queries=4",
    "former.num_layers=1",
    "former.intermediate=256",
    "train.stage1.epochs=3",
    "train.stage1.batch_size=16",
    "train.stage2.epochs=1",
    "train.stage2.batch_size=16",
]


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    # after a node loss the elastic controller first asks for both workers again (the node is not yet known to be
    # gone) and falls back to one when that start times out: 30 s instead of the default 60 (read by the
    # controller, which inherits the nodes' environment)
    saved = os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S")
    os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = "30"
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    nodes = [c.add_node(num_cpus=1, resources={"trainer": 1}) for _ in range(2)]
    ray.init(address=c.address)
    c.wait_for_nodes()
    yield c, nodes
    ray.shutdown()
    c.shutdown()
    if saved is None:
        os.environ.pop("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", None)
    else:
        os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = saved


@pytest.fixture(scope="module")
def features(cluster, tmp_path_factory):
    """A small corpus's feature cache, extracted on the cluster (Ray Data tasks and the encoder actor on any node)."""
    from emoq_model.config import demo_config_path, load_config
    from pipeline.demo.corpus import CorpusConfig, make_emotion_corpus
    from pipeline.training.extract import extract_features

    root = tmp_path_factory.mktemp("corpus")
    manifest = make_emotion_corpus(root, CorpusConfig(n_speakers=6, n_sentences=3, mode="easy", workers=1, seed=5))
    cfg = load_config(demo_config_path(), OVERRIDES)
    out = tmp_path_factory.mktemp("features") / "cache"
    meta = extract_features(str(manifest), str(out), cfg, batch_size=8)
    assert meta["n_errors"] == 0
    return cfg, str(out)


def _settings(root: Path, features: str, name: str):
    from pipeline.training import TrainSettings

    return TrainSettings(
        features=features,
        storage_path=str(root / "shared"),  # one folder every node sees: shared storage
        name=name,
        bundle_out=str(root / f"bundle_{name}"),
        num_workers=2,
        min_workers=1,
        resources_per_worker={"CPU": 0.5, "trainer": 1},  # one trainer slot per worker node: one rank per node
        norm_min_frames=100,
        verbose=False,
    )


def _lines(run_dir: str) -> list[dict]:
    p = Path(run_dir, "metrics.jsonl")
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def test_two_stage_training_across_nodes_survives_node_loss(cluster, features, tmp_path, monkeypatch):
    from emoq_model.bundle import load_bundle
    from pipeline.training import run_training

    c, nodes = cluster
    cfg, cache = features
    ref = run_training(cfg, _settings(tmp_path, cache, "unfaulted"))
    ref_lines = _lines(ref["run_dir"])
    assert [(r["stage"], r["epoch"]) for r in ref_lines] == [(1, 0), (1, 1), (1, 2), (2, 0)]
    assert all(r["world_size"] == 2 for r in ref_lines)

    faults = tmp_path / "faults"
    faults.mkdir()
    (faults / "train.sleep").write_text("0.7")  # slow steps: the node loss lands inside an epoch
    monkeypatch.setenv("EMOQ_FAULTS_DIR", str(faults))
    s = _settings(tmp_path, cache, "faulted")
    removed: list = []

    def lose_a_node():
        deadline = time.time() + 600
        while time.time() < deadline and not _lines(s.run_dir):  # the first epoch's checkpoint is committed
            time.sleep(0.5)
        time.sleep(2.0)  # well inside the next epoch
        c.remove_node(nodes[1])
        removed.append(time.time())

    killer = threading.Thread(target=lose_a_node, daemon=True)
    killer.start()
    out = run_training(cfg, s)
    killer.join(timeout=30)
    assert removed, "the node was never removed"
    lines = _lines(out["run_dir"])
    print(
        "faulted run:",
        [(r["stage"], r["epoch"], r["world_size"], r["start"], r["val_ua"], r["val_loss"]) for r in lines],
    )
    print(
        "unfaulted run:", [(r["stage"], r["epoch"], round(r["val_ua"], 3), round(r["val_loss"], 3)) for r in ref_lines]
    )
    assert [(r["stage"], r["epoch"]) for r in out["history"]] == [(1, 0), (1, 1), (1, 2), (2, 0)]
    assert lines[0]["world_size"] == 2 and lines[-1]["world_size"] == 1  # went on with the node that was left
    assert lines[-1]["start"] >= 1  # after a restart of the worker group, from the checkpoint
    assert Path(out["bundle"], "bundle.json").exists()
    assert load_bundle(out["bundle"], load_llm=False) is not None
    assert (lines[0]["val_loss"], lines[0]["val_ua"]) == (ref_lines[0]["val_loss"], ref_lines[0]["val_ua"])
    a, b = ref_lines[-1], lines[-1]
    assert abs(a["val_ua"] - b["val_ua"]) <= 0.25, (a["val_ua"], b["val_ua"])
    assert abs(a["val_loss"] - b["val_loss"]) <= 0.10 * a["val_loss"], (a["val_loss"], b["val_loss"])
    assert pd.Series([r["val_ua"] for r in lines]).notna().all()
