"""Reduced-precision options (encoder.dtype bfloat16 / int8 / bfloat16-mixed, former.dtype bfloat16) run and give
the float32 prompts within their stated tolerance, on the real Whisper tiny.en weights and real speech."""

import pytest
import soundfile as sf
import torch

from emoq_model.errors import ConfigError

# stated tolerances: relative L2 error of all prompt embeddings against float32 (measured: 0.0007, 0.005, 0.0003;
# label agreement on the demo archive is in BENCHMARKS.md)
TOLERANCE = {
    ("encoder.dtype=bfloat16",): 0.01,
    ("encoder.dtype=int8",): 0.03,
    ("encoder.dtype=bfloat16-mixed",): 0.01,
    ("former.dtype=bfloat16",): 0.01,
    ("encoder.dtype=bfloat16", "former.dtype=bfloat16"): 0.015,
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from emoq_model.assets.speech_samples import asterisk_sounds_dir
    from emoq_model.bundle import save_bundle
    from emoq_model.config import demo_config_path, load_config
    from emoq_model.model import EmoQModel

    torch.manual_seed(0)
    bundle = str(save_bundle(EmoQModel(load_config(demo_config_path())), tmp_path_factory.mktemp("p") / "bundle"))
    from pipeline.audio import resample

    waves = []  # eight real prompts, the longest first (different lengths: padding and masks are exercised)
    for path in sorted(asterisk_sounds_dir().glob("vm-*.wav"), key=lambda p: -p.stat().st_size)[:8]:
        x, sr = sf.read(path, dtype="float32")
        waves.append(resample(x if x.ndim == 1 else x.mean(1), sr, 16000))
    return bundle, waves


def prompts(bundle, waves, overrides):
    from emoq_model.bundle import load_bundle
    from emoq_model.model import collate_features

    front = load_bundle(bundle, load_llm=False, with_encoder=True, overrides=list(overrides))
    with torch.inference_mode():
        enc = front.encoder(waves)
        batch = collate_features([{"frames": enc.item(i).float(), "transcript": None} for i in range(len(waves))])
        return front, [p.float() for p in front.prompt_embeds(batch.to(front.device)).embeds]


@pytest.mark.slow  # ~4.5 s per option: CI runs them, the `-m "not slow"` developer loop does not
@pytest.mark.parametrize("overrides", list(TOLERANCE))
def test_precision_option_agrees_with_float32(setup, overrides):
    bundle, waves = setup
    _, base = prompts(bundle, waves, ())
    front, got = prompts(bundle, waves, overrides)
    a, b = torch.cat([p.flatten() for p in got]), torch.cat([p.flatten() for p in base])
    rel = float((a - b).norm() / b.norm())
    assert 0 < rel < TOLERANCE[overrides], rel  # > 0: the option really ran in another precision
    if "encoder.dtype=int8" in overrides:
        assert any(
            type(m).__module__.startswith("torch.ao.nn.quantized.dynamic") for m in front.encoder.model.modules()
        )
    if "encoder.dtype=bfloat16" in overrides:
        assert front.encoder.dtype == torch.bfloat16
    if "encoder.dtype=bfloat16-mixed" in overrides:  # float32 weights, bfloat16 matmuls
        assert front.encoder.dtype == torch.float32 and front.encoder.autocast
    assert all(p.dtype == torch.float32 for p in got)


def test_precision_options_are_validated():
    from emoq_model.config import demo_config_path, load_config
    from pipeline.labeling.job import LabelJobConfig

    for bad in ("encoder.dtype=int4", "former.dtype=float16", "llm.dtype=int8"):
        with pytest.raises(ConfigError):
            load_config(demo_config_path(), [bad], check_assets=False)
    with pytest.raises(ConfigError, match="model_overrides"):
        LabelJobConfig(inputs=["x"], output="o", bundle="b", model_overrides=["former.hidden=64"])
    LabelJobConfig(inputs=["x"], output="o", bundle="b", model_overrides=["encoder.dtype=int8"])


def test_int8_encoder_is_refused_off_cpu():
    from emoq_model.encoder import quantize_int8

    with pytest.raises(ConfigError, match="CPU only"):
        quantize_int8(torch.nn.Linear(2, 2), torch.device("cuda"))


def test_model_id_names_the_deployment_precision(setup):
    from pipeline.labeling.job import model_id

    bundle, _ = setup
    assert model_id(bundle) != model_id(bundle, ["encoder.dtype=bfloat16"])
    assert model_id(bundle, ["encoder.dtype=bfloat16"]).endswith("+encoder.dtype=bfloat16")
