"""Fault tolerance end to end, with real Ray Data and the real vLLM engine (CPU):

* the driver is SIGKILLed mid-job (the job runs as the ``jobs/label_corpus.py`` CLI in a subprocess) and a rerun
  resumes: every recording exactly once;
* one encoder actor and one vLLM actor die (SIGKILL of their own process, mid-batch, work done but not returned)
  during a job over the hostile-input matrix: Ray restarts them and retries the batches; every input row comes
  out exactly once, each bad input as one clear error row, and every good file gets the same segments, labels and
  probabilities as when it was labelled alone (batches of one, in the run above).

Four vLLM engine starts in all (killed run, resume, matrix run + the restarted actor): ~3-5 min on 2 cores.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow.parquet as pq
import pytest
import ray

from pipeline.labeling import job as label_job
from pipeline.labeling.job import LabelJobConfig, StageResources, run
from pipeline.labeling.sink import recording_counts, segments_dir
from tests.reliability.hostile_inputs import MATRIX, build_matrix

pytestmark = pytest.mark.slow  # real Ray + vLLM end to end: `pytest -m 'not slow'` skips it

REPO = Path(__file__).resolve().parents[2]
ENGINE = {"enforce_eager": True, "max_model_len": 512, "max_num_seqs": 64}
NON_UTF8 = b"caf\xe9-\xff"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from emoq_model.bundle import save_bundle
    from emoq_model.model import EmoQModel
    from emoq_model.testing import tiny_config

    return str(save_bundle(EmoQModel(tiny_config()), tmp_path_factory.mktemp("b") / "bundle"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Good recordings (3 stereo calls + the matrix's good files + a non-UTF-8 name) and the full hostile matrix.

    ``good.csv`` lists only the good ones; ``matrix.csv`` interleaves them with every bad kind, duplicates, a
    file that vanishes after discovery and bad manifest rows, under the same recording ids.
    """
    from pipeline.demo.calls import make_call_archive

    root = tmp_path_factory.mktemp("corpus")
    calls = pd.read_csv(make_call_archive(root / "archive", n_calls=3, minutes=0.25, seed=5, workers=1))
    m = build_matrix(root / "matrix")
    good = [(r.recording_id, r.path, r.channels) for r in calls.itertuples()]
    good += [(name, str(p), None) for name, (p, expect) in m.items() if expect is None]
    raw = os.fsencode(str(root)) + b"/" + NON_UTF8 + b".wav"
    with open(raw, "wb") as f:
        f.write(m["good"][0].read_bytes())
    bad = [(name, str(p), None) for name, (p, expect) in m.items() if expect is not None]
    vanish = root / "vanish.wav"
    shutil.copy(m["good"][0], vanish)
    bad += [
        ("vanishes", str(vanish), None),
        ("good", str(m["good"][0]), None),  # same id again -> good#dup1
        ("good_again", str(m["good"][0]), None),  # same file, same options, another id
        ("no_path", "", None),
    ]

    def write(path, rows, extra=b""):
        text = pd.DataFrame(rows, columns=["recording_id", "path", "channels"]).to_csv(index=False).encode()
        path.write_bytes(text + extra)

    non_utf8_row = b"nonutf8," + raw + b",\n"  # the name's exact bytes, as a shell script would write them
    write(root / "good.csv", good, non_utf8_row)
    mixed = []  # good files share batches with bad ones
    for i in range(max(len(good), len(bad))):
        mixed += ([bad[i]] if i < len(bad) else []) + ([good[i]] if i < len(good) else [])
    bad_channels = b"bad_channels," + str(calls.path.iloc[0]).encode() + b',"a,b,c"\n'
    write(root / "matrix.csv", mixed, non_utf8_row + bad_channels)
    good_ids = [g[0] for g in good] + ["nonutf8"]
    return {
        "root": root,
        "good_csv": str(root / "good.csv"),
        "matrix_csv": str(root / "matrix.csv"),
        "good_ids": good_ids,
        "n_matrix": len(mixed) + 2,
        "vanish": vanish,
        "calls": calls,
    }


@pytest.fixture(scope="module")
def faults_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def ray_local(faults_dir):
    env = {
        k: os.environ[k]
        for k in ("HF_HUB_OFFLINE", "VLLM_CPU_KVCACHE_SPACE", "TOKENIZERS_PARALLELISM")
        if k in os.environ
    }
    env["EMOQ_FAULTS_DIR"] = str(faults_dir)
    ray.init(num_cpus=4, include_dashboard=False, ignore_reinit_error=True, runtime_env={"env_vars": env})
    yield
    ray.shutdown()


def job(manifest, bundle, out, batch=1, **kw):
    return LabelJobConfig(
        inputs=[manifest],
        output=str(out),
        bundle=bundle,
        batch_recordings=batch,
        encode=StageResources(1, 0.5),
        label=StageResources(1, 0.5),
        engine=dict(ENGINE),
        **kw,
    )


def segments(out) -> pd.DataFrame:
    return pq.read_table(segments_dir(str(out))).to_pandas()


def _session_pids(sid: int) -> list[int]:
    pids = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid:
                pids.append(p.pid)
        except (ProcessLookupError, PermissionError, psutil.Error):
            pass
    return pids


def _kill_session(sid: int, grace_s: float = 10.0) -> None:
    """After the driver died: give Ray's own cleanup a moment, then SIGKILL what is left of *this* job's
    process session (only processes the test started: the subprocess was made a session leader)."""
    deadline = time.time() + grace_s
    while time.time() < deadline and _session_pids(sid):
        time.sleep(1)
    for pid in _session_pids(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def alone(corpus, bundle, faults_dir, ray_local, tmp_path_factory):
    """The good recordings labelled one per batch by the CLI, whose driver is SIGKILLed once part files exist,
    then resumed in-process. Returns (output dir, parts at kill time, report of the resumed run)."""
    out = tmp_path_factory.mktemp("alone") / "out"
    (faults_dir / "label.sleep").write_text("1.5")  # slow batches: the kill lands mid-run
    env = dict(os.environ, EMOQ_FAULTS_DIR=str(faults_dir))
    env.pop("RAY_ADDRESS", None)  # the CLI starts its own local Ray
    cmd = [
        sys.executable,
        str(REPO / "jobs" / "label_corpus.py"),
        corpus["good_csv"],
        "--bundle",
        bundle,
        "--output",
        str(out),
        "--batch-recordings",
        "1",
        "--encode-cpus",
        "0.5",
        "--label-cpus",
        "0.5",
        "--engine",
        "max_model_len=512",
        "max_num_seqs=64",
    ]
    log = open(out.parent / "driver.log", "wb")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    seg = Path(segments_dir(str(out)))
    try:
        deadline = time.time() + 400
        while time.time() < deadline and proc.poll() is None and not list(seg.glob("part-*.parquet")):
            time.sleep(0.2)
        assert proc.poll() is None, f"driver ended before the kill: {(out.parent / 'driver.log').read_text()[-3000:]}"
        assert list(seg.glob("part-*.parquet")), "no part file within 400 s"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        _kill_session(proc.pid)
        log.close()
        (faults_dir / "label.sleep").unlink(missing_ok=True)
    parts_at_kill = {p.name for p in seg.glob("part-*.parquet")}
    rep = run(job(corpus["good_csv"], bundle, out))
    return out, parts_at_kill, rep


def test_driver_killed_mid_job_then_resumed(alone, corpus):
    out, parts_at_kill, rep = alone
    n = len(corpus["good_ids"])
    assert 1 <= len(parts_at_kill) < n, "the kill did not land mid-run"
    assert rep["already_done"] == len(parts_at_kill) and rep["labeled"] == n - len(parts_at_kill)
    assert rep["failed"] == 0 and rep["duplicate_recordings"] == 0
    counts = recording_counts(str(out))
    assert sorted(counts) == sorted(corpus["good_ids"]) and set(counts.values()) == {1}
    df = segments(out)
    assert df.error.isna().all() and not df.duplicated(["recording_id", "channel", "segment_index"]).any()
    assert parts_at_kill <= {p.name for p in Path(segments_dir(str(out))).glob("part-*.parquet")}  # kept as is
    assert not list(Path(segments_dir(str(out))).glob(".tmp-*"))
    assert df[df.recording_id == "nonutf8"].path.iloc[0].endswith("caf\\xe9-\\xff.wav")


def test_hostile_matrix_with_actor_kills(alone, corpus, bundle, faults_dir, tmp_path, monkeypatch):
    for f in faults_dir.iterdir():
        f.unlink()
    (faults_dir / "encode").write_text("2")  # each stage's actor dies on its 2nd batch, once
    (faults_dir / "label").write_text("2")
    real_discover = label_job.discover

    def discover_then_vanish(inputs):  # a file that disappears between discovery and reading
        recs = real_discover(inputs)
        corpus["vanish"].unlink()
        return recs

    monkeypatch.setattr(label_job, "discover", discover_then_vanish)
    out = tmp_path / "out"
    rep = run(job(corpus["matrix_csv"], bundle, out, batch=3, object_store_limit_mb=64))
    fired = sorted(p.name for p in faults_dir.iterdir())
    assert fired == ["encode.fired", "encode.pid", "label.fired", "label.pid"], fired  # both actors were killed
    for stage in ("encode", "label"):  # ... and really gone
        assert (
            not psutil.pid_exists(int((faults_dir / f"{stage}.pid").read_text()))
            or psutil.Process(int((faults_dir / f"{stage}.pid").read_text())).status() == psutil.STATUS_ZOMBIE
        )
    assert rep["object_store_limit_bytes"] == 64 * 1024 * 1024  # the budget the executor ran under

    # rows in = rows out, each exactly once
    n = corpus["n_matrix"]
    assert rep["recordings_found"] == n == rep["labeled"] + rep["failed"] == rep["recordings_in_output"]
    counts = recording_counts(str(out))
    assert len(counts) == n and set(counts.values()) == {1} and rep["duplicate_recordings"] == 0
    df = segments(out)
    assert not df.duplicated(["recording_id", "channel", "segment_index"]).any()

    # each bad input: one row, with its clear error
    errors = df[df.error.notna()].set_index("recording_id").error
    assert errors.index.is_unique
    for name, (_, expect) in MATRIX.items():
        if expect is not None:
            assert expect in errors[name], (name, errors[name])
    assert "file not found (missing or vanished)" in errors["vanishes"]
    assert "duplicate recording_id" in errors["good#dup1"]
    assert "duplicate input" in errors["good_again"]
    assert "missing or non-text 'path'" in errors["no_path"]
    assert "manifest names 3 channels, recording has 2" in errors["bad_channels"]
    summary = pq.read_table(out / "summary.parquet").to_pandas().set_index("recording_id")
    # one row per recording and channel; a failed recording has one row (channel null) with its error
    assert summary.index.nunique() == n and (summary.loc[errors.index].error_count == 1).all()
    assert summary.loc[errors.index].channel.isna().all() and len(summary.loc[errors.index]) == len(errors)

    # good files: labelled as when alone (same segments, labels and probabilities)
    alone_df = segments(alone[0])
    ok = df[df.error.isna()]
    assert set(ok.recording_id) == set(corpus["good_ids"])
    key = ["recording_id", "channel", "segment_index"]
    merged = ok.merge(alone_df, on=key, suffixes=("", "_alone"), validate="one_to_one")
    assert len(merged) == len(ok) == len(alone_df)
    assert np.array_equal(merged.start_s, merged.start_s_alone) and np.array_equal(merged.end_s, merged.end_s_alone)
    p = np.array([[v for _, v in kv] for kv in merged.probabilities])
    q = np.array([[v for _, v in kv] for kv in merged.probabilities_alone])
    diff = np.abs(p - q).max()
    spread = np.ptp(p, axis=0).max()  # how much probabilities differ between segments
    print(f"max |p - p_alone| = {diff:.2e}; spread between segments {spread:.2e}")
    assert diff < 2e-6 and diff < spread / 10
    assert (merged.label == merged.label_alone).all()


def test_poison_recording_isolated_then_retried(alone, corpus, bundle, faults_dir, tmp_path):
    """A recording that kills its worker on every try (a decoder crash) cannot stall or fail the job: its batch is
    tried ``max_attempts`` times, its recordings then one by one; only the poison one gets an error row, its
    batch-mates are labelled as when alone. ``retry_failed`` on a rerun labels it once it no longer crashes."""
    for f in faults_dir.iterdir():
        f.unlink()
    poison = corpus["calls"].recording_id.iloc[1]
    (faults_dir / "encode.poison").write_text(poison)
    out = tmp_path / "out"
    rep = run(job(corpus["good_csv"], bundle, out, batch=4, max_attempts=2))
    kills = [line.split() for line in (faults_dir / "encode.poison.log").read_text().splitlines()]
    assert [int(n) > 1 for _, n in kills] == [True, True, False, False], kills  # 2 tries in a batch, 2 alone
    n = len(corpus["good_ids"])
    # the poison's batch, plus any batch in flight on the same actor when it died, went to the one-by-one pass
    assert min(4, n) <= rep["isolated"] <= n and rep["crashed"] == 1 and rep["failed"] == 1
    assert rep["labeled"] == n - 1 == rep["recordings_in_output"] - 1
    counts = recording_counts(str(out))
    assert sorted(counts) == sorted(corpus["good_ids"]) and set(counts.values()) == {1}
    df = segments(out)
    err = df[df.error.notna()]
    assert list(err.recording_id) == [poison] and "processing failed 2 times" in err.error.iloc[0]

    alone_df = segments(alone[0])
    key = ["recording_id", "channel", "segment_index"]
    ok = df[df.error.isna()].merge(alone_df, on=key, suffixes=("", "_alone"), validate="one_to_one")
    assert len(ok) == (alone_df.recording_id != poison).sum() and (ok.label == ok.label_alone).all()

    (faults_dir / "encode.poison").unlink()  # the crash is gone (fixed decoder, file replaced ...)
    again = run(job(corpus["good_csv"], bundle, out, batch=4, retry_failed=True))
    assert again["retried_failed"] == 1 and again["labeled"] == 1 and again["failed"] == 0
    assert again["already_done"] == n - 1
    counts = recording_counts(str(out))
    assert sorted(counts) == sorted(corpus["good_ids"]) and set(counts.values()) == {1}
    df = segments(out)
    assert df.error.isna().all()
    merged = df.merge(alone_df, on=key, suffixes=("", "_alone"), validate="one_to_one")
    assert len(merged) == len(alone_df) and (merged.label == merged.label_alone).all()
