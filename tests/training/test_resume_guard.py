"""A training resume continues a checkpoint only if it was trained on the same config and feature cache (no Ray:
the driver checks the run folder before starting Ray Train)."""

import json

import pytest

from emoq_model.errors import ConfigError
from pipeline.training.checkpoint import check_resume, latest_state, run_identity
from pipeline.training.settings import STATE_FILE


def _checkpoint(run_dir, name, identity):
    d = run_dir / name
    d.mkdir(parents=True)
    (d / STATE_FILE).write_text(json.dumps({"history": [], "identity": identity}))


def test_resume_guard(tmp_path):
    run = tmp_path / "run"
    ident = run_identity({"seed": 0, "train": {"lr": 1e-3}}, "meta-a")
    check_resume(str(run), ident)  # a new run: nothing to compare
    _checkpoint(run, "checkpoint_2026-12-01_10-00-00.000001", run_identity({"seed": 0}, "meta-a"))
    _checkpoint(run, "checkpoint_2026-12-01_11-00-00.000001", ident)  # the newest one counts
    assert latest_state(str(run))["identity"] == ident
    check_resume(str(run), run_identity({"train": {"lr": 1e-3}, "seed": 0}, "meta-a"))  # key order is not a change
    with pytest.raises(ConfigError, match="different feature cache"):
        check_resume(str(run), run_identity({"seed": 0, "train": {"lr": 1e-3}}, "meta-b"))
    with pytest.raises(ConfigError, match="config and feature cache"):
        check_resume(str(run), run_identity({"seed": 1}, "meta-b"))
    check_resume(str(run), run_identity({"seed": 1}, "meta-b"), allow_changed=True)
    _checkpoint(run, "checkpoint_2026-12-01_12-00-00.000001", None)  # written before identities existed
    (run / "checkpoint_2026-12-01_12-00-00.000001" / STATE_FILE).write_text(json.dumps({"history": []}))
    check_resume(str(run), run_identity({"seed": 1}, "meta-b"))


def test_stats_frames_need_per_speaker_normalisation(tmp_path, monkeypatch):
    """``former.stats_frames`` with ``--feature-norm none``: refused before any worker starts, with the flag to use."""
    from emoq_model import features as F
    from emoq_model.config import demo_config_path, load_config
    from pipeline.training import TrainSettings, driver

    monkeypatch.setattr(driver, "check_cache_matches", lambda cache, cfg: None)  # no cache needed for this check
    monkeypatch.setattr(F, "FeatureCache", lambda path: None)
    cfg = load_config(demo_config_path(), ["former.stats_frames=true"])
    s = TrainSettings(features=str(tmp_path), storage_path=str(tmp_path / "ray"), name="x", feature_norm="none")
    with pytest.raises(ConfigError, match="--feature-norm speaker"):
        driver.run_training(cfg, s)
