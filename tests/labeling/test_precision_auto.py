"""``encoder.dtype: auto`` at labeling: the job picks the encoder's precision once, on the driver, from the device and
whether shared-encoder ASR reads the encoder's states; the choice reaches the actors and names the output's model."""

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline.labeling.job import (
    AUTO_ENCODER_DTYPE,
    LabelJobConfig,
    StageResources,
    asr_mode,
    encoder_precision,
    with_resolved_precision,
)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, demo_assets):
    """Tiny bundles on the demo's Whisper tiny.en encoder whose config says ``encoder.dtype: auto``: one speech-only,
    one that reads transcripts (shared-encoder ASR applies when the ASR checkpoint is its encoder), and one speech-only
    bundle pinned to float32."""
    from emoq_model.bundle import save_bundle
    from emoq_model.model import EmoQModel
    from emoq_model.testing import tiny_config

    def bundle(name, overrides):
        cfg = tiny_config([f"encoder.path={demo_assets['encoder']}", *overrides])
        return str(save_bundle(EmoQModel(cfg), tmp_path_factory.mktemp(name) / "bundle"))

    return {
        "speech": bundle("speech", ["encoder.dtype=auto", "former.text_fusion=none"]),
        "text": bundle("text", ["encoder.dtype=auto"]),
        "float32": bundle("f32", ["encoder.dtype=float32", "former.text_fusion=none"]),
    }


def _cfg(bundle, **kw):
    return LabelJobConfig(inputs=["x.csv"], output="/tmp/unused", bundle=bundle, **kw)


def _auto(cfg):
    """What the job resolves for ``cfg`` (its ASR mode computed as the job computes it)."""
    return encoder_precision(cfg, cfg.bundle, asr_mode(cfg, cfg.bundle))


def _resolved(cfg):
    return with_resolved_precision(cfg, cfg.bundle, asr_mode(cfg, cfg.bundle))


@pytest.fixture
def native(monkeypatch):
    """Which devices compute bfloat16 natively (the CPU flags of whatever machine runs the tests decide otherwise)."""

    def set_native(*devices):
        monkeypatch.setattr("emoq_model.config.native_bf16", lambda d: d in devices)

    return set_native


def test_auto_follows_the_device(bundles, native):
    native("cpu")
    assert _auto(_cfg(bundles["speech"])) == AUTO_ENCODER_DTYPE
    run_cfg, named, auto = _resolved(_cfg(bundles["speech"]))
    assert auto == AUTO_ENCODER_DTYPE and run_cfg.model_overrides == [f"encoder.dtype={AUTO_ENCODER_DTYPE}"]
    assert named == [f"encoder.dtype={AUTO_ENCODER_DTYPE}"]  # labels that may differ from float32's are named
    # an encode stage with a GPU runs on cuda: the choice follows that device, not the driver's CPU
    assert _auto(_cfg(bundles["speech"], encode=StageResources(num_gpus=1))) == "float32"
    native("cuda")
    gpu = _cfg(bundles["speech"], encode=StageResources(num_gpus=1))
    assert _auto(gpu) == AUTO_ENCODER_DTYPE
    assert _auto(_cfg(bundles["speech"])) == "float32"
    # fused stages run the encoder in the label actors
    fused = _cfg(bundles["speech"], fuse_model_stages=True, label=StageResources(num_gpus=1))
    assert _auto(fused) == AUTO_ENCODER_DTYPE
    native()
    run_cfg, named, auto = _resolved(_cfg(bundles["speech"]))
    assert auto == "float32" and run_cfg.model_overrides == ["encoder.dtype=float32"]
    assert named == []  # float32 is the reference precision: the default output's model id stays as it was


def test_shared_asr_keeps_float32(bundles, native):
    """Shared-encoder ASR decodes words from the encoder's states: bfloat16 states change 14 % of the demo archive's
    transcripts and with them 2 % of its labels, so auto stays float32 there; a separate ASR stage does not care."""
    from emoq_model.bundle import bundle_config

    native("cpu")
    b = bundles["text"]
    asr = bundle_config(b).encoder.path  # the bundle's own Whisper checkpoint: shared-encoder ASR
    assert _auto(_cfg(b, asr_model=asr)) == "float32"
    assert _auto(_cfg(b, asr_model=asr, asr_shared=False)) == AUTO_ENCODER_DTYPE
    assert _auto(_cfg(b)) == AUTO_ENCODER_DTYPE  # transcripts come with the manifest


def test_a_named_precision_is_kept(bundles, native):
    native("cpu")
    assert _auto(_cfg(bundles["float32"])) is None  # the bundle's own choice
    asked = _cfg(bundles["speech"], model_overrides=["encoder.dtype=float32"])
    assert _auto(asked) is None
    run_cfg, named, auto = _resolved(asked)
    assert auto is None and run_cfg.model_overrides == ["encoder.dtype=float32"] == named


@pytest.mark.slow  # two real label jobs (Ray + vLLM)
def test_auto_precision_reaches_the_actors(bundles, native, tmp_path, ray_session):
    """With bfloat16 native (patched on the driver, where the job decides), the encode actors run bfloat16-mixed:
    the rows name that model, and their probabilities are close to, but not the same as, a float32 job's."""
    from pipeline.demo.calls import make_call_archive
    from pipeline.labeling.job import run

    calls = pd.read_csv(make_call_archive(tmp_path / "calls", n_calls=2, minutes=0.25, seed=5, workers=1))
    man = tmp_path / "manifest.csv"
    pd.DataFrame({"recording_id": calls.recording_id, "path": calls.path, "channels": calls.channels}).to_csv(
        man, index=False
    )
    b = bundles["speech"]
    common = dict(
        inputs=[str(man)],
        bundle=b,
        encode=StageResources(1, 0.5),
        label=StageResources(1, 0.5),
        engine={"enforce_eager": True, "max_model_len": 512, "max_num_seqs": 64, "dtype": "float32"},
        timeline_calls=0,
    )
    native("cpu")
    auto = run(LabelJobConfig(output=str(tmp_path / "auto"), **common), log=lambda *_: None, progress=False)
    native()
    ref = run(LabelJobConfig(output=str(tmp_path / "f32"), **common), log=lambda *_: None, progress=False)
    assert auto["model_overrides"] == [f"encoder.dtype={AUTO_ENCODER_DTYPE}"]
    assert auto["model_id"].endswith(f"+encoder.dtype={AUTO_ENCODER_DTYPE}+llm.dtype=float32")
    assert ref["model_overrides"] == ["encoder.dtype=float32"] and "encoder.dtype" not in ref["model_id"]

    def probs(out):
        t = pq.read_table(out["segments_dir"]).to_pandas().dropna(subset=["label"])
        t = t.sort_values(["recording_id", "channel", "segment_index"])
        assert set(t.model_id) == {out["model_id"]}
        return np.array([[p for _, p in row] for row in t.probabilities])

    pa, pr = probs(auto), probs(ref)
    assert auto["segments"] == ref["segments"] > 0 and pa.shape == pr.shape
    diff = np.abs(pa - pr).max()
    assert 0 < diff < 0.1, diff  # > 0: the encoder really ran in another precision
