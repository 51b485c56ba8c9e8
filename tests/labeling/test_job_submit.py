"""The labeling job through ``ray job submit`` against a ``ray start --head`` cluster (real Ray, real vLLM)."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow  # real Ray + vLLM end to end: `pytest -m 'not slow'` skips it

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: all bound at once (ports taken one at a time can repeat: a CI run once gave the
    head's object manager and client server the same one)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture()
def ray_head(tmp_path):
    """A private head node (own ports and temp dir), stopped by terminating its ``--block`` process."""
    import tempfile

    names = (
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "metrics-export-port",
        "runtime-env-agent-port",
        "ray-client-server-port",
        "node-manager-port",
        "object-manager-port",
    )
    port, dash, *rest = free_ports(2 + len(names))
    ray_tmp = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))  # short: AF_UNIX socket paths are <= 107 bytes
    # one auth mode for the head and every client (Ray 2.60 enables token auth on a head by default)
    env = dict(os.environ, RAY_TMPDIR=str(ray_tmp), RAY_AUTH_MODE="token")
    log = open(tmp_path / "head.log", "w")
    # every listening port explicit: other Ray instances on the host (tests, users) hold the defaults
    ports = [f"--{name}={p}" for name, p in zip(names, rest)]
    proc = subprocess.Popen(
        [
            RAY,
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            "--num-cpus=4",
            "--include-dashboard=true",
            "--disable-usage-stats",
            f"--temp-dir={ray_tmp}",
            *ports,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            r = subprocess.run([RAY, "job", "list", "--address", url], capture_output=True, text=True, env=env)
            if r.returncode == 0:
                break
            if proc.poll() is not None:
                pytest.fail(f"ray head exited: {(tmp_path / 'head.log').read_text()[-2000:]}")
            time.sleep(2)
        else:
            pytest.fail(f"ray head did not come up: {r.stderr[-1500:]}")
        yield url, env
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_label_corpus_via_job_submit(ray_head, tmp_path):
    import numpy as np
    import soundfile as sf

    from emoq_model.bundle import save_bundle
    from emoq_model.model import EmoQModel
    from emoq_model.testing import tiny_config

    url, env = ray_head
    bundle = save_bundle(EmoQModel(tiny_config()), tmp_path / "bundle")
    audio = tmp_path / "audio"
    audio.mkdir()
    t = np.arange(16000 * 3) / 16000
    voiced = (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    for i in range(3):
        sf.write(audio / f"rec{i}.flac", np.concatenate([np.zeros(8000, np.float32), voiced]), 16000)
    (audio / "broken.wav").write_bytes(b"RIFF\x00\x00")
    out = tmp_path / "out"
    cmd = [
        RAY,
        "job",
        "submit",
        "--address",
        url,
        "--working-dir",
        str(REPO),
        "--runtime-env-json",
        '{"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}}',
        "--",
        sys.executable,
        "jobs/label_corpus.py",
        str(audio),
        "--bundle",
        str(bundle),
        "--output",
        str(out),
        "--encode-cpus",
        "0.5",
        "--label-cpus",
        "0.5",
        "--engine",
        "max_model_len=512",
    ]
    for _ in range(30):  # the head's job agent comes up a little after its HTTP server
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if "No available agent" not in r.stderr + r.stdout:
            break
        time.sleep(3)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "succeeded" in (r.stdout + r.stderr)
    df = pq.read_table(out / "segments").to_pandas()
    assert set(df.recording_id) == {"rec0", "rec1", "rec2", "broken"}
    assert df[df.recording_id == "broken"].error.iloc[0]
    assert df[df.recording_id != "broken"].label.notna().all()
    assert pd.read_parquet(out / "summary.parquet").recording_id.nunique() == 4  # rows: per recording and channel
