"""The demo's command line: flags come from DemoConfig; ``--set`` passes model/training overrides through."""

import pytest

from emoq_model.errors import ConfigError
from jobs.demo import parse_args


def test_flags_and_overrides():
    argv = ["--workdir", "w", "--speed-perturb", "0.9,1.1", "--set", "seed=1", "--set", "train.stage1.ema=0.99"]
    c = parse_args(argv)
    assert (c.workdir, c.speed_perturb) == ("w", (0.9, 1.1))
    assert c.overrides == ("seed=1", "train.stage1.ema=0.99")
    assert parse_args([]).overrides == ()
    assert parse_args([]).speed_perturb == (0.9, 1.1)  # the demo's default training augmentation
    assert parse_args(["--speed-perturb", ""]).speed_perturb == ()  # and how to turn it off


def test_unknown_modality_is_refused():
    with pytest.raises(ConfigError, match="modality"):
        parse_args(["--modality", "video"])


def test_validation_scripts_are_checked_early():
    c = parse_args(["--val-scripts", "calm,upset"])
    assert c.val_scripts == "calm,upset"
    with pytest.raises(ConfigError, match="unknown scripts"):
        parse_args(["--val-scripts", "calm,furious"])
