"""The public surface: the two facades resolve every name they export, the error root covers the project's errors,
and a CLI turns one into a single line and exit code 2."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_facades_export_what_they_list():
    import emoq_model
    import pipeline

    for mod in (pipeline, emoq_model):
        for name in mod.__all__:
            assert getattr(mod, name) is not None, (mod.__name__, name)
        with pytest.raises(AttributeError):
            mod.no_such_name  # noqa: B018
    from pipeline.labeling.job import run

    assert pipeline.LabelJobConfig.__module__ == "pipeline.labeling.job" and callable(run)


def test_importing_the_facades_loads_no_model_code():
    code = "import sys, pipeline, emoq_model, pipeline.labeling.sources; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_one_error_root():
    from emoq_model.errors import BundleError, ConfigError, EmoQError
    from pipeline.audio import AudioError
    from pipeline.labeling.columns import PlanError
    from pipeline.labeling.sources import ManifestError

    for err in (ConfigError, BundleError, AudioError, ManifestError, PlanError):
        assert issubclass(err, EmoQError)
    assert issubclass(ConfigError, ValueError) and issubclass(AudioError, ValueError)  # old `except` still work


@pytest.mark.slow  # one subprocess per job (~9 s)
def test_cli_prints_one_line_and_exits_2(tmp_path):
    for argv in (
        ["jobs/label_corpus.py", "x.csv", "--bundle", "b", "--output", "o", "--batch-recordings", "0"],
        ["jobs/train.py", str(tmp_path), "--stages", "3"],
    ):
        p = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert p.returncode == 2, p.stderr
        lines = [x for x in p.stderr.splitlines() if x.strip()]
        assert lines[-1].startswith("error: ") and "Traceback" not in p.stderr, p.stderr
