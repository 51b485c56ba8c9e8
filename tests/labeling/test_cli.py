"""The label job's command line maps onto LabelJobConfig (what `ray job submit -- python jobs/label_corpus.py` runs)."""

from jobs.label_corpus import config_from_args, parse_args


def test_flags_reach_the_job_config():
    cfg = config_from_args(
        parse_args(
            [
                "calls/",
                "more.csv",
                "--bundle",
                "b",
                "--output",
                "o",
                "--batch-recordings",
                "16",
                "--encode-actors",
                "2",
                "--encode-gpus",
                "0.5",
                "--label-cpus",
                "2",
                "--label-gpus",
                "1",
                "--label-resources",
                '{"label_node": 1}',
                "--fuse-model-stages",
                "--batch-overhead-s",
                "2.5",
                "--max-held-seconds",
                "120",
                "--merged",
                "--engine",
                "max_num_seqs=64",
                "tensor_parallel_size=2",
                "--max-attempts",
                "5",
                "--retry-failed",
            ]
        )
    )
    assert cfg.inputs == ["calls/", "more.csv"] and cfg.batch_recordings == 16
    assert (cfg.encode.actors, cfg.encode.num_gpus) == (2, 0.5)
    assert (cfg.label.num_cpus, cfg.label.num_gpus, cfg.label.resources) == (2.0, 1.0, {"label_node": 1})
    assert cfg.fuse_model_stages and cfg.batch_overhead_s == 2.5 and cfg.max_held_seconds == 120.0
    assert cfg.use_merged is True and cfg.max_attempts == 5 and cfg.retry_failed
    assert cfg.engine["max_num_seqs"] == 64 and cfg.engine["tensor_parallel_size"] == 2


def test_defaults():
    cfg = config_from_args(parse_args(["x.csv", "--bundle", "b", "--output", "o"]))
    assert not cfg.fuse_model_stages and cfg.batch_overhead_s is None and cfg.max_held_seconds == 600.0
    assert cfg.use_merged is None and cfg.resume and not cfg.retry_failed


def test_engine_dtype_names_the_model():
    """An LLM precision asked for (``--engine dtype=...``) names the output's model; the default (auto: bfloat16
    where native, measured to keep every float32 label) does not, so default outputs keep their model id."""
    from pipeline.labeling.job import precision_overrides

    base = ["x.csv", "--bundle", "b", "--output", "o"]
    for dtype in ("bfloat16", "float32"):
        cfg = config_from_args(parse_args([*base, "--engine", f"dtype={dtype}"]))
        assert precision_overrides(cfg) == [f"llm.dtype={dtype}"]
    assert precision_overrides(config_from_args(parse_args([*base, "--engine", "dtype=auto"]))) == []
    assert precision_overrides(config_from_args(parse_args(base))) == []


def test_asr_dtype_is_checked_and_names_the_model():
    import pytest

    from emoq_model.errors import ConfigError
    from pipeline.labeling.job import precision_overrides

    asr = ["x.csv", "--bundle", "b", "--output", "o", "--asr-model", "whisper"]
    cfg = config_from_args(parse_args([*asr, "--asr-dtype", "bfloat16"]))
    assert cfg.asr_dtype == "bfloat16"
    # labels from bf16 transcripts are another model's: resuming a float32 output with them is refused by model id
    assert precision_overrides(cfg) == ["asr.dtype=bfloat16"]
    # the default, auto (bfloat16 where the device computes it natively), names the model as chosen
    default = config_from_args(parse_args(asr))
    assert default.asr_dtype == "auto" and precision_overrides(default) == ["asr.dtype=auto"]
    assert precision_overrides(config_from_args(parse_args([*asr, "--asr-dtype", "float32"]))) == []
    # without an ASR the decoder's dtype changes nothing: speech-only outputs keep their model id
    assert precision_overrides(config_from_args(parse_args(["x.csv", "--bundle", "b", "--output", "o"]))) == []
    with pytest.raises(ConfigError, match="asr_dtype"):
        config_from_args(parse_args(["x.csv", "--bundle", "b", "--output", "o", "--asr-dtype", "int8"]))
