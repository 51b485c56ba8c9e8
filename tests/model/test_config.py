"""Config loading, overrides, placeholders and validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from emoq_model.config import ConfigError, EmoQConfig, config_from_dict, demo_config_path, load_config
from emoq_model.testing import tiny_config


@pytest.fixture(scope="module")
def tiny():
    return tiny_config()


def test_defaults_without_asset_checks():
    cfg = load_config(None, check_assets=False)
    assert isinstance(cfg, EmoQConfig)
    assert cfg.former.num_queries == 32 and cfg.labels.names == ["neutral", "happy", "angry", "sad"]
    assert Path(cfg.llm.path).is_absolute()


def test_demo_config_resolves_assets_and_overrides():
    from emoq_model.assets import cache_dir

    cfg = load_config(
        demo_config_path(),
        ["former.num_layers=3", "lora.target_modules=[q_proj, v_proj]", "encoder.layer=2", "loss.alpha=[1, 2, 3, 4]"],
        check_assets=False,
    )
    assert cfg.encoder.path == str(cache_dir() / "whisper-tiny.en")
    assert cfg.llm.path == str(cache_dir() / "tiny-qwen2")
    assert cfg.former.num_layers == 3 and cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.encoder.layer == 2 and cfg.loss.alpha == [1.0, 2.0, 3.0, 4.0]


def test_yaml_round_trip(tmp_path, tiny):
    p = tmp_path / "c.yaml"
    p.write_text(tiny.to_yaml())
    assert load_config(p) == tiny


def test_placeholders(tmp_path, monkeypatch, tiny):
    monkeypatch.setenv("EMOQ_TEST_LLM", tiny.llm.path)
    d = tiny.to_dict()
    d["llm"]["path"] = "${env:EMOQ_TEST_LLM}"
    d["encoder"]["path"] = "${config_dir}/enc"
    (tmp_path / "enc").symlink_to(tiny.encoder.path)
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(d))
    cfg = load_config(p)
    assert cfg.llm.path == tiny.llm.path and cfg.encoder.path == str((tmp_path / "enc").resolve())
    d["llm"]["path"] = "${nope}/x"
    p.write_text(yaml.safe_dump(d))
    with pytest.raises(ConfigError, match="unknown placeholder"):
        load_config(p)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["former.num_layer=2"], "unknown key 'num_layer'"),
        (["nosection.x=1"], "unknown key 'nosection'"),
        (["former.num_layers=two"], "former.num_layers: expected an integer"),
        (["former.num_layers=true"], "former.num_layers: expected an integer"),
        (["former.text_fusion=cross"], "not one of"),
        (["former.hidden=100", "former.num_heads=8"], "multiple of former.num_heads"),
        (["former.cross_attention_frequency=5"], "cross_attention_frequency"),
        (["former.num_layers"], "not of the form"),
        (["labels.names=[neutral]"], "at least 2 labels"),
        (["labels.names=[neutral, neutral]"], "duplicates"),
        (["loss.alpha=[1, 2]"], "2 weights for 4 labels"),
        (["loss.alpha=balanced"], "loss.alpha must be"),
        (["llm.dtype=float64"], "llm.dtype must be one of"),
        (["llm.device=gpu"], "llm.device must be"),
        (["encoder.layer=middle"], "encoder.layer must be"),
        (["train.stage2.mal_weight=0.5"], "former_trainable"),
    ],
)
def test_validation_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides, check_assets=False)


def test_unknown_yaml_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("former:\n  queries: 4\n")
    with pytest.raises(ConfigError, match=r"former\.queries"):
        load_config(p, check_assets=False)
    with pytest.raises(ConfigError, match="expected a mapping"):
        config_from_dict({"former": 3})


def test_asset_checks(tiny):
    base = [f"llm.path={tiny.llm.path}", f"encoder.path={tiny.encoder.path}"]
    with pytest.raises(ConfigError, match="must be single tokens"):
        load_config(None, base + ["labels.names=[neutral, frustration and rage]"])
    with pytest.raises(ConfigError, match="out of range"):
        load_config(None, base + ["encoder.layer=7"])  # tiny wav2vec2: 2 layers -> 3 hidden states
    with pytest.raises(ConfigError, match="is not a directory"):
        load_config(None, ["llm.path=/nonexistent/llm"])
    cfg = load_config(None, base + ["encoder.layer=weighted", "encoder.weighted_layers=[1, -1]"])
    assert cfg.encoder.weighted_layers == [1, -1]
