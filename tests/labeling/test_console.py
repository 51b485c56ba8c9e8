"""What a person sees: progress lines, the final table, library logs in a file (and the label CLI's console)."""

import io
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from pipeline.console import Progress, final_table, follow_train_metrics, quiet_logs

REPO = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_progress_lines_are_throttled_and_carry_counts_and_eta():
    clock, out = Clock(), io.StringIO()
    p = Progress(10, phase="label", stream=out, interactive=False, interval_s=10.0, clock=clock)
    for _ in range(4):  # 4 recordings within 6 s: no line yet
        clock.t += 1.5
        p.update(1, segments=5, audio_s=90.0)
    assert out.getvalue() == ""
    clock.t += 4.0  # 10 s since the start
    p.update(1, segments=5, audio_s=90.0)
    lines = out.getvalue().splitlines()
    assert lines == ["[label] 5/10 recordings · 25 segments · 0.12 h audio · 10 s elapsed · ETA 10 s"]
    for _ in range(3):  # again within the interval: nothing
        clock.t += 2.0
        p.update(1, segments=1, audio_s=40.0, failed=1)
    assert len(out.getvalue().splitlines()) == 1
    clock.t += 4.0
    p.update(1, segments=0, audio_s=0.0)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].startswith("[label] 9/10 recordings · 28 segments · 0.16 h audio · 3 failed")
    assert lines[1].endswith("ETA 2 s")
    clock.t += 1.0
    p.update(1)
    p.close()
    p.close()  # once only
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and lines[2] == (
        "[label] 10/10 recordings · 28 segments · 0.16 h audio · 3 failed · 21 s elapsed · done"
    )


def test_progress_eta_in_minutes_and_before_the_first_file():
    clock, out = Clock(), io.StringIO()
    p = Progress(96, stream=out, interactive=False, interval_s=60.0, clock=clock)
    assert p.eta_s() is None and p.line().endswith("ETA ?")
    for _ in range(12):
        clock.t += 35.0 / 12
        p.update(1, segments=28, audio_s=63.0)
    assert out.getvalue() == ""  # within the interval
    assert p.line() == "[label] 12/96 recordings · 336 segments · 0.21 h audio · 35 s elapsed · ETA 4 min"


def test_progress_bar_on_a_terminal():
    out = io.StringIO()
    with Progress(3, stream=out, interactive=True) as p:
        for _ in range(3):
            p.update(1, segments=2, audio_s=60.0)
    text = out.getvalue()
    assert "[label]" in text and "3/3" in text and "6 segments" in text


REPORT = {
    "recordings_found": 96,
    "already_done": 10,
    "labeled": 80,
    "failed": 6,
    "segments": 2345,
    "audio_s": 7200.0,
    "speech_s": 3600.0,
    "output": "/out",
    "model_id": "b@1",
    "retried_failed": 0,
    "isolated": 4,
    "crashed": 1,
    "asr": None,
    "duplicate_recordings": 0,
    "wall_s": 123.4,
    "audio_hours": 2.0,
    "audio_s_per_s": 58.35,
    "segments_dir": "/out/segments",
    "summary": "/out/summary.parquet",
    "recordings_in_output": 96,
}


def test_final_table_has_every_field_aligned():
    text = final_table(REPORT, log_path="/out/logs/label.log")
    lines = text.splitlines()
    for name, value in [
        ("recordings found", "96"),
        ("already done", "10"),
        ("labelled", "80"),
        ("failed", "6"),
        ("segments", "2345"),
        ("audio", "2.000 h"),
        ("speech", "1.000 h"),
        ("wall time", "123.4 s"),
        ("speed", "58.4 audio s/s"),
        ("output", "/out"),
        ("summary", "/out/summary.parquet"),
        ("log file", "/out/logs/label.log"),
        ("retried one by one", "4"),
        ("failed every attempt", "1"),
    ]:
        row = next(ln for ln in lines if ln.strip().startswith(name + " "))
        assert row.split()[-len(value.split()) :] == value.split(), row
    starts = {re.match(r"\s+\S+(?: \S+)*\s{2,}", ln).end() for ln in lines[1:]}
    assert len(starts) == 1  # one value column
    assert "retried (failed before)" not in text  # zero counters of rare events are left out


class StderrHandler(logging.StreamHandler):
    """Writes to the sys.stderr of the moment (as Ray's handler does), so that capfd sees it."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


@pytest.fixture()
def noisy_loggers():
    """Loggers set up the way Ray / vLLM set theirs: a console handler of their own, no propagation."""
    made = []
    for name in ("ray.fake_component", "vllm"):
        lg = logging.getLogger(name)
        before = (list(lg.handlers), lg.propagate, lg.level)
        h = StderrHandler()
        lg.addHandler(h)
        lg.propagate = False
        lg.setLevel(logging.INFO)
        made.append((lg, before, h))
    yield
    for lg, (handlers, propagate, level), h in made:
        lg.removeHandler(h)
        lg.handlers[:] = handlers
        lg.propagate, lg.level = propagate, level


def test_quiet_logs_send_library_logs_to_the_file(noisy_loggers, tmp_path, capfd):
    path = tmp_path / "logs" / "label.log"
    with quiet_logs(path, verbose=False) as got:
        assert got == path and os.environ["TRANSFORMERS_VERBOSITY"] == "error"
        logging.getLogger("vllm").info("vllm engine says hello")
        logging.getLogger("ray.fake_component").warning("ray says hello")
        logging.getLogger("ray.data").info("ray data says hello")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("a deprecation nobody asked for", DeprecationWarning, stacklevel=2)
        import ray.data

        assert ray.data.DataContext.get_current().enable_progress_bars is False
    out, err = capfd.readouterr()
    assert out.strip() == f"logs: {path}"
    assert "hello" not in err and "deprecation" not in err
    text = path.read_text()
    for msg in ("vllm engine says hello", "ray says hello", "ray data says hello", "a deprecation nobody asked"):
        assert msg in text
    # restored: the console handlers are back, the file gets nothing more
    logging.getLogger("vllm").warning("after the job")
    assert "after the job" in capfd.readouterr().err
    assert "after the job" not in path.read_text()


def test_quiet_logs_verbose_changes_nothing(noisy_loggers, tmp_path, capfd):
    with quiet_logs(tmp_path / "x.log", verbose=True) as got:
        assert got is None
        logging.getLogger("vllm").warning("shown")
    assert "shown" in capfd.readouterr().err and not (tmp_path / "x.log").exists()


def test_quiet_init_ray_keeps_worker_output_off_the_console(monkeypatch, tmp_path):
    import ray

    from pipeline.ray_env import init_ray

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("TRANSFORMERS_VERBOSITY", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # init_ray sets it for a local Ray: restored after the test
    init_ray(log_to_driver=False)
    init_ray()
    quiet, loud = calls
    assert quiet["log_to_driver"] is False and loud["log_to_driver"] is True
    env = quiet["runtime_env"]["env_vars"]
    assert env["TRANSFORMERS_VERBOSITY"] == "error" and env["VLLM_LOGGING_LEVEL"] == "WARNING"
    assert env["RAY_DATA_DISABLE_PROGRESS_BARS"] == "1"
    assert "TRANSFORMERS_VERBOSITY" not in loud["runtime_env"]["env_vars"]
    init_ray(address="ray://head:10001", log_to_driver=False)
    assert calls[-1] == {"address": "ray://head:10001", "log_to_driver": False}


def test_follow_train_metrics_prints_new_epochs_only(tmp_path):
    import json
    import time

    path = tmp_path / "metrics.jsonl"
    old = {"stage": 1, "epoch": 0, "train_loss": 2.0, "val_ua": 0.3, "val_wa": 0.3, "val_loss": 1.9, "epoch_s": 3}
    path.write_text(json.dumps(old) + "\n")  # a resumed run's earlier epoch
    printed = []
    with follow_train_metrics(path, interval_s=0.05, out=printed.append):
        new = dict(old, epoch=1, val_ua=0.4512, is_best=True, epoch_s=4.2)
        path.write_text(json.dumps(old) + "\n" + json.dumps(new) + "\n")
        time.sleep(0.3)
        path.write_text(json.dumps(old) + "\n" + json.dumps(new) + "\n" + '{"stage": 2, "ep')  # mid-write
        time.sleep(0.2)
    assert printed == ["[train] stage 1 epoch 1: loss 2.000 · val UA 0.451 WA 0.300 loss 1.900 · 4 s *"]
    with follow_train_metrics(path, enabled=False, out=printed.append):
        pass
    assert len(printed) == 1


def test_follow_train_metrics_drives_an_epoch_bar(tmp_path):
    """With ``epochs``: a resumed run's earlier epochs count as done, each new epoch's line is written through the
    bar (here a non-terminal stream: no redraws), and the bar's last line closes the phase."""
    import io
    import json
    import time

    path = tmp_path / "metrics.jsonl"
    old = {"stage": 1, "epoch": 0, "train_loss": 2.0, "val_ua": 0.3, "val_wa": 0.3, "val_loss": 1.9, "epoch_s": 3}
    path.write_text(json.dumps(old) + "\n")
    stream = io.StringIO()
    with follow_train_metrics(path, interval_s=0.05, epochs=3, stream=stream):
        path.write_text(json.dumps(old) + "\n" + json.dumps(dict(old, epoch=1, val_ua=0.5)) + "\n")
        time.sleep(0.3)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[train] stage 1 epoch 1: loss 2.000 · val UA 0.500 WA 0.300 loss 1.900 · 3 s"
    assert len(lines) == 2 and lines[1].startswith("[train] 2/3 epochs · ") and lines[1].endswith("done")


def test_progress_without_counts():
    now = [0.0]
    stream = io.StringIO()
    p = Progress(3, phase="extract", unit="turns", stream=stream, interactive=False, clock=lambda: now[0], counts=())
    now[0] = 30.0
    p.update(1)
    assert stream.getvalue() == "[extract] 1/3 turns · 30 s elapsed · ETA 60 s\n"


# ---------------------------------------------------------------- the label CLI, end to end (real Ray + vLLM)


@pytest.fixture(scope="module")
def tiny_job(tmp_path_factory):
    from emoq_model.bundle import save_bundle
    from emoq_model.model import EmoQModel
    from emoq_model.testing import tiny_config
    from pipeline.demo.calls import make_call_archive

    root = tmp_path_factory.mktemp("console")
    bundle = save_bundle(EmoQModel(tiny_config()), root / "bundle")
    manifest = make_call_archive(root / "archive", n_calls=2, minutes=0.3, seed=5, workers=1)
    return {"root": root, "bundle": str(bundle), "manifest": str(manifest)}


def label_cli(job: dict, out: Path, *extra: str) -> list[str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    cmd = [
        sys.executable,
        str(REPO / "jobs" / "label_corpus.py"),
        job["manifest"],
        "--bundle",
        job["bundle"],
        "--output",
        str(out),
        "--encode-cpus",
        "0.5",
        "--label-cpus",
        "0.5",
        "--engine",
        "max_model_len=512",
        "max_num_seqs=64",
        *extra,
    ]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return (r.stdout + r.stderr).splitlines()


@pytest.mark.slow
def test_label_cli_console_is_short_and_logs_go_to_a_file(tiny_job):
    out = tiny_job["root"] / "quiet"
    lines = label_cli(tiny_job, out)
    log = out / "logs" / "label.log"
    text = "\n".join(lines)
    print(f"quiet console: {len(lines)} lines\n{text}")
    assert len(lines) < 40, text
    assert f"logs: {log}" in text and "Labelling finished" in text
    assert any(ln.split()[:3] == ["recordings", "found", "2"] for ln in lines)
    assert any(ln.startswith("[label] 2/2 recordings") and ln.endswith("done") for ln in lines)
    assert "logging_progress" not in text and "INFO" not in text
    assert log.is_file() and "Ray session dir" in log.read_text() and len(log.read_text().splitlines()) > 5

    verbose = label_cli(tiny_job, tiny_job["root"] / "verbose", "--verbose")
    print(f"--verbose console: {len(verbose)} lines")
    assert len(verbose) > 2 * len(lines) and "Labelling finished" in "\n".join(verbose)
    assert not (tiny_job["root"] / "verbose" / "logs").exists()


def test_summary_table_one_row_per_recording_and_channel():
    import pandas as pd

    from pipeline.labeling.cli import summary_table

    summary = pd.DataFrame(
        {
            "recording_id": ["call_1", "call_1", "bad.wav"],
            "channel": ["agent", "customer", None],
            "duration_s": [60.0, 60.0, None],
            "num_segments": [7, 5, 0],
            "dominant_label": ["neutral", "angry", None],
            "mean_confidence": [0.812, 0.55, float("nan")],
            "error": [None, None, "decode: not a WAV file"],
        }
    )
    lines = summary_table(summary).splitlines()
    assert lines[0].split() == ["recording", "channel", "duration", "segments", "dominant", "confidence", "error"]
    assert lines[1].split() == ["call_1", "agent", "60.0", "s", "7", "neutral", "0.81"]
    assert lines[2].split() == ["call_1", "customer", "60.0", "s", "5", "angry", "0.55"]
    assert lines[3].split() == ["bad.wav", "mix", "0", "decode:", "not", "a", "WAV", "file"]
    assert "nan" not in summary_table(summary).lower().split()  # missing values are blank cells
