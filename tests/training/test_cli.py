"""pipeline/training/cli.py: the training job's flags become settings the Train workers can use (no Ray)."""

import os

from pipeline.training.cli import train_parser, train_settings


def test_local_paths_become_absolute(tmp_path, monkeypatch):
    """Train workers run in their own working directory: a relative --init-bundle (stage 2 alone from a stage-1
    bundle) failed there with 'No such file or directory: runs/demo/bundle/former.safetensors'."""
    monkeypatch.chdir(tmp_path)
    a = train_parser().parse_args(
        ["feats", "--stages", "2", "--init-bundle", "runs/demo/bundle", "--out", "b", "--storage-path", "rt"]
    )
    s = train_settings(a)
    assert s.stages == (2,)
    for got, rel in ((s.features, "feats"), (s.init_bundle, "runs/demo/bundle"), (s.bundle_out, "b")):
        assert got == os.path.join(str(tmp_path), rel)
    assert s.storage_path == os.path.join(str(tmp_path), "rt")
    uri = train_settings(train_parser().parse_args(["feats", "--storage-path", "s3://bucket/runs"]))
    assert uri.storage_path == "s3://bucket/runs" and uri.init_bundle is None  # URIs and unset paths stay as given
