"""The labeling flow's column contract: plans are checked before anything runs, and the real stages produce
exactly the columns they declare."""

import numpy as np
import pytest
import soundfile as sf

from pipeline.labeling import columns as C
from pipeline.labeling.columns import PlanError, check_plan


def test_every_real_plan_fits_and_ends_in_the_report_rows():
    for plan in (
        [C.PREPARE, C.ENCODE, C.LABEL, C.WRITE],
        [C.PREPARE, C.TRANSCRIBE, C.ENCODE, C.LABEL, C.WRITE],
        [C.PREPARE, C.ENCODE_AND_LABEL, C.WRITE],
    ):
        assert check_plan(plan) == set(C.WRITTEN)


def test_a_misordered_plan_fails_naming_the_stage_and_column():
    with pytest.raises(PlanError, match=r"'label' needs columns \['prompt_embeds', 'prompt_offsets'\]"):
        check_plan([C.PREPARE, C.LABEL, C.ENCODE, C.WRITE])
    with pytest.raises(PlanError, match="'encode' needs"):  # the encoder dropped the audio the second one needs
        check_plan([C.PREPARE, C.ENCODE, C.ENCODE])
    with pytest.raises(PlanError, match="'write' needs columns .*labels"):
        check_plan([C.PREPARE, C.ENCODE, C.WRITE])
    from emoq_model.errors import EmoQError

    assert issubclass(PlanError, EmoQError)


def test_the_stages_carry_their_contract():
    from pipeline.labeling.asr import Transcribe
    from pipeline.labeling.encode import EncodePrompts
    from pipeline.labeling.label import EncodeAndLabel, LabelWithVLLM
    from pipeline.labeling.prepare import prepare_batch
    from pipeline.labeling.sink import write_parts

    assert (
        prepare_batch.columns,
        Transcribe.columns,
        EncodePrompts.columns,
        LabelWithVLLM.columns,
        EncodeAndLabel.columns,
        write_parts.columns,
    ) == (C.PREPARE, C.TRANSCRIBE, C.ENCODE, C.LABEL, C.ENCODE_AND_LABEL, C.WRITE)


@pytest.mark.slow
def test_real_prepare_and_encode_add_what_they_declare(tmp_path):
    """prepare_batch on real audio bytes, then EncodePrompts of a tiny bundle: the output columns are exactly the
    contract's (nothing undeclared flows on, nothing declared is missing)."""
    from emoq_model.bundle import save_bundle
    from emoq_model.model import EmoQModel
    from emoq_model.testing import tiny_config
    from pipeline.labeling.encode import EncodePrompts
    from pipeline.labeling.prepare import PrepareConfig, prepare_batch
    from pipeline.labeling.sources import discover

    rng = np.random.default_rng(0)
    t = np.arange(16000 * 3) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 160 * t) * (t % 1 < 0.6) + 0.003 * rng.standard_normal(t.size)).astype(np.float32)
    sf.write(tmp_path / "a.wav", wave, 16000)
    rows = [r.to_row() for r in discover([str(tmp_path / "a.wav")])]
    assert set(rows[0]) == set(C.SOURCE)
    batch = {k: np.array([r[k] for r in rows], dtype=object) for k in rows[0]}
    prepared = prepare_batch(batch, PrepareConfig(sample_rate=16000))
    assert set(prepared) == check_plan([C.PREPARE]) and prepared["error"][0] is None
    bundle = str(save_bundle(EmoQModel(tiny_config()), tmp_path / "bundle"))
    encoded = EncodePrompts(bundle)({k: np.array(v, dtype=object) for k, v in prepared.items()})
    assert set(encoded) == check_plan([C.PREPARE, C.ENCODE])
    assert encoded["prompt_embeds"][0].shape[0] == encoded["prompt_offsets"][0][-1] > 0
