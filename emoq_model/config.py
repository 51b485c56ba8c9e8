"""EmoQ configuration: dataclasses, YAML loading with dotted overrides, validation.

``load_config(path, ["former.num_layers=4", "labels.names=[neutral,sad]"])`` reads a YAML file (or the defaults
when ``path`` is None), applies overrides (values parsed as YAML scalars/lists), expands path placeholders and
validates. Placeholders in string values: ``${assets}`` (the offline asset cache,
:func:`emoq_model.assets.cache_dir`), ``${config_dir}`` (directory of the YAML file), ``${env:NAME}``.
Errors are :class:`ConfigError` (a ``ValueError``) naming the offending key.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from emoq_model.errors import ConfigError  # noqa: F401  (raised here; part of this module's API)

DTYPES = ("float32", "bfloat16", "float16", "auto")
ENCODER_DTYPES = DTYPES + ("int8", "bfloat16-mixed")  # a frozen encoder also quantises or autocasts


@dataclass
class EncoderConfig:
    """Frozen speech encoder (any local HF HuBERT / wav2vec2 / WavLM / Whisper directory)."""

    path: str = "${assets}/whisper-tiny.en"
    layer: str | int = "weighted"  # "last" | hidden-state index (0 = embeddings, -1 = last) | "weighted"
    weighted_layers: list[int] | None = None  # hidden-state indices the weighted sum uses (None: all)
    # float32 | bfloat16 | float16 | int8 (CPU: dynamic int8 quantisation of the Linear layers, torch.ao) |
    # bfloat16-mixed (float32 weights, matmuls and convolutions under bfloat16 autocast: the residual stream and
    # norms stay float32, so less error than bfloat16 weights at the same matmul speed) | auto: feature extraction
    # and training in bfloat16 on CUDA, float32 elsewhere; labeling picks per job (bfloat16-mixed where the device
    # computes bfloat16 natively and no shared-encoder ASR reads the states, else float32:
    # pipeline.labeling.job.encoder_precision). A frozen encoder's precision is a deployment choice: label_corpus
    # --set encoder.dtype=... overrides it; BENCHMARKS.md §7 has the speed and label agreement of each
    dtype: str = "float32"
    device: str = "auto"  # "auto" = cuda when available, else cpu
    whisper_real_length: bool = True  # Whisper: run on the batch's real length instead of 30 s windows
    # Whisper real length: seconds of silence appended to every clip (not in the frame mask, but attended to). Shared
    # encoder ASR needs it: Whisper's decoder misreads clips that end without silence (measured WER 0.18 -> 0.07)
    whisper_tail_s: float = 0.0
    exact_batching: bool = True  # group-norm wav2vec2-family models (no padding support) run item by item
    trust_remote_code: bool = False
    allow_pickle_weights: bool = False  # load a checkpoint that has only pytorch_model.bin (torch.load, weights_only)
    prosody: bool = False  # append pitch / voicing / energy / brightness tracks to every frame (emoq_model.prosody)


@dataclass
class FormerConfig:
    """EmoQ-Former (BLIP-2 Q-Former) sizes and text fusion."""

    num_queries: int = 32
    num_layers: int = 4
    num_heads: int = 4
    hidden: int = 256
    intermediate: int = 1024
    cross_attention_frequency: int = 1
    text_fusion: Literal["none", "concat"] = "concat"
    dropout: float = 0.1
    # SpecAugment-style time masking of the speech frames while the Former trains (never at inference): about this
    # fraction of each item's frames is hidden from cross-attention in spans of time_mask_span frames, so the
    # queries cannot hang the label on a few frames (a word that only the training calls say) and must read
    # utterance-wide cues; 0 = off
    time_mask: float = 0.0
    time_mask_span: int = 10
    # speaker conditioning beside subtraction: each item's frames start with two frames of its channel's statistics
    # against the training speakers' (emoq_model.features.FeatureNorm.stats_frames), typed by a learned embedding and
    # never time-masked, so a channel that is angry all call is not normalised into looking neutral. Needs
    # per-speaker normalisation (train --feature-norm speaker); labeling computes them per channel, as training does
    stats_frames: bool = False
    # local BERT-family directory (e.g. ${assets}/all-minilm-l6-v2): with text_fusion=concat, transcripts are embedded
    # by this frozen encoder (contextual token states) instead of by the LLM's input embedding table (None); it is
    # also the source of init_from_text_encoder (with any text_fusion)
    text_encoder: str | None = None
    # BLIP-2 initialisation: self-attention and feed-forward layers from the text encoder's first num_layers layers
    # (cross-attention stays new); needs hidden / num_heads / intermediate equal to the text encoder's
    init_from_text_encoder: bool = False
    use_speech: bool = True  # false: a text-only ablation (the queries see no speech frames)
    # float32 | bfloat16: the Former's compute at inference (autocast; weights and training stay float32, as BLIP-2
    # trains its Q-Former)
    dtype: str = "float32"


@dataclass
class LLMConfig:
    """Causal LM loaded from a local directory."""

    path: str = "${assets}/tiny-qwen2"
    # auto: training and HF prediction in bfloat16 on CUDA, float32 elsewhere; vLLM serving in bfloat16 wherever the
    # device computes it natively (CPUs with avx512_bf16 / amx_bf16 too: emoq_model.serving.serving_dtype)
    dtype: str = "float32"
    device: str = "auto"
    trust_remote_code: bool = False
    attn_implementation: str | None = None  # None: the transformers default (sdpa)


@dataclass
class PromptConfig:
    """Soft prompt: ``[chat prefix + instruction] [queries] [transcript] [chat suffix + answer prefix] -> label``."""

    system: str | None = "You are an expert in recognising emotions in speech."
    # "{labels}" expands to the comma-separated label names
    instruction: str = "Listen to the speech and answer with one word, the speaker's emotion: {labels}."
    speech_intro: str = "\nSpeech: "
    transcript_intro: str = "\nTranscript: "
    answer_prefix: str = ""
    include_transcript: bool = True  # put transcript tokens into the LLM prompt (when a transcript is given)
    max_transcript_tokens: int = 64


@dataclass
class LabelConfig:
    """Label names (each must be ONE token of the LLM's tokenizer in the answer form ``token_prefix + name``)."""

    names: list[str] = field(default_factory=lambda: ["neutral", "happy", "angry", "sad"])
    token_prefix: str = ""


@dataclass
class LossConfig:
    """MAL = supcon_weight * SupCon + focal_weight * focal."""

    supcon_weight: float = 1.0
    temperature: float = 0.1
    focal_weight: float = 1.0
    gamma: float = 2.0
    alpha: str | list[float] = "auto"  # "auto" (from class counts) | "none" | one weight per label


@dataclass
class LoraConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class Stage1Config:
    epochs: int = 10
    lr: float = 1e-4
    batch_size: int = 32
    weight_decay: float = 0.01
    # chance that a training example's transcript is dropped (modality dropout): the queries must then read the
    # speech alone, so text fusion cannot make the speech path lazy and the model holds when ASR hears nothing useful
    text_dropout: float = 0.0
    # decay per optimizer step of an exponential moving average of the trained weights (0: off); validation, the
    # best epoch and the exported bundle then use the average (pipeline.training.ema). Warmed up as
    # min(ema, (1+n)/(10+n)) after n steps: about the last 10 % of the steps until ~900 steps, then ~1/(1-ema)
    ema: float = 0.0
    # train on the feature cache's speed-perturbed copies too (extract --speed-perturb); false: the recorded rows only
    speed_copies: bool = True
    # chance that a training example is normalised with the statistics of a label-skewed part of its channel instead
    # of the whole channel (pipeline.training.resample; per-speaker feature norm only): the model learns emotion that
    # holds whatever a channel's mix, as a call that is one emotion throughout needs
    stats_resample: float = 0.0


@dataclass
class Stage2Config:
    epochs: int = 5
    lr: float = 1e-4
    batch_size: int = 16
    weight_decay: float = 0.0
    text_dropout: float = 0.0  # as in stage 1
    former_trainable: bool = False
    # with former_trainable: the learning rate of the Former's stage-1-trained weights is lr x this (the projector and
    # LoRA, which start fresh, train at lr): the Former arrives trained, and a full-rate restart can undo it
    former_lr_scale: float = 1.0
    # the frozen Former runs in train mode (dropout, former.time_mask) while the LLM learns: the LLM then sees query
    # outputs as noisy as on unseen calls, not the near-perfect ones of the rows stage 1 fitted (stacking on
    # over-fitted stage-1 outputs made stage 2 validate below stage 1)
    former_augment: bool = False
    # weight each example's answer losses by its class's focal alpha (loss.alpha, as stage 1 weights its focal loss),
    # so the LLM is trained for the same balanced objective (UA) as the Former rather than for accuracy on a
    # neutral-heavy mix
    class_balanced: bool = False
    mal_weight: float = 0.0  # weight of the MAL auxiliary loss in stage 2 (needs former_trainable)
    label_ce_weight: float = 1.0  # + cross-entropy over the label tokens only at the answer (= predict_proba)
    lm_weight: float = 1.0  # the LM loss on the answer tokens (label + end of turn, full vocabulary)
    distill_weight: float = 0.0  # + KL(stage-1 aux head || LLM label distribution), e.g. 1.0 (measured: no gain)
    ema: float = 0.0  # as in stage 1
    # as in stage 1; false: a third of the rows with two copies per turn, e.g. for a stage that starts from a Former
    # stage 1 trained on all of them
    speed_copies: bool = True
    stats_resample: float = 0.0  # as in stage 1


@dataclass
class StageConfig:
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)

    @property
    def recorded_only(self) -> bool:
        """A stage trains without the speed-perturbed copies, so the training data keeps the recorded rows apart."""
        return not (self.stage1.speed_copies and self.stage2.speed_copies)


@dataclass
class EmoQConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    former: FormerConfig = field(default_factory=FormerConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: StageConfig = field(default_factory=StageConfig)
    seed: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


# ------------------------------------------------------------------------------------------ conversion


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check / convert ``value`` to the annotated type ``tp`` (dataclass, Union, Literal, list, scalar)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return _from_dict(tp, value, key)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _convert(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: {value!r} matches none of {_type_name(tp)}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (arg,) = typing.get_args(tp)
        return [_convert(v, arg, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{key}: expected null, got {value!r}")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover - a bug in this module


def _type_name(tp: Any) -> str:
    return str(tp).replace("typing.", "")


def _from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown key(s) {[where + k for k in unknown]}; known: {sorted(names)}")
    kwargs = {k: _convert(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def config_from_dict(data: dict) -> EmoQConfig:
    """Build (and type-check, but not validate) a config from a nested dict; missing keys take defaults."""
    return _from_dict(EmoQConfig, data or {})


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    cls: Any = EmoQConfig
    for i, p in enumerate(parts):
        if not dataclasses.is_dataclass(cls):
            raise ConfigError(f"override {dotted!r}: {'.'.join(parts[:i])} is not a section")
        hints = typing.get_type_hints(cls)
        if p not in hints:
            raise ConfigError(
                f"override {dotted!r}: unknown key {p!r} in "
                f"{'.'.join(parts[:i]) or 'top level'}; known: {sorted(hints)}"
            )
        cls = hints[p]
        if i == len(parts) - 1:
            node[p] = value
        else:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {dotted!r}: {p} is not a mapping in the YAML")


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply ``key.sub=value`` overrides (value parsed as YAML, e.g. ``4``, ``true``, ``[a, b]``) to a dict."""
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: cannot parse value: {e}") from None
        _set_dotted(data, key.strip(), value)
    return data


_PLACEHOLDER = re.compile(r"\$\{([^}]+)\}")


def expand_placeholders(text: str, variables: dict[str, str]) -> str:
    """Expand ``${name}`` (from ``variables``; ``assets`` resolves lazily) and ``${env:NAME}``."""

    def sub(m: re.Match) -> str:
        name = m.group(1)
        if name.startswith("env:"):
            env = name[4:]
            if env not in os.environ:
                raise ConfigError(f"placeholder ${{{name}}}: environment variable {env} is not set")
            return os.environ[env]
        if name == "assets" and "assets" not in variables:
            from emoq_model.assets import cache_dir

            variables["assets"] = str(cache_dir())
        if name not in variables:
            raise ConfigError(f"unknown placeholder ${{{name}}} in {text!r}; known: {sorted(variables) + ['env:NAME']}")
        return variables[name]

    return _PLACEHOLDER.sub(sub, text)


def resolve_paths(cfg: EmoQConfig, variables: dict[str, str] | None = None) -> EmoQConfig:
    """Expand placeholders in the model paths and make them absolute (in place; returns ``cfg``)."""
    variables = dict(variables or {})
    for section in (cfg.encoder, cfg.llm):
        section.path = str(Path(expand_placeholders(section.path, variables)).expanduser().resolve())
    if cfg.former.text_encoder:
        cfg.former.text_encoder = str(
            Path(expand_placeholders(cfg.former.text_encoder, variables)).expanduser().resolve()
        )
    return cfg


# ------------------------------------------------------------------------------------------ validation


def validate(cfg: EmoQConfig, check_assets: bool = True) -> EmoQConfig:
    """Check value ranges and consistency; with ``check_assets`` also the model directories' configs and the
    label words against the LLM tokenizer (each label one token in the answer form)."""
    f, lo, lab, st = cfg.former, cfg.loss, cfg.labels, cfg.train
    checks = [
        (f.num_queries >= 1, "former.num_queries must be >= 1"),
        (f.num_layers >= 1, "former.num_layers must be >= 1"),
        (
            f.num_heads >= 1 and f.hidden % f.num_heads == 0,
            f"former.hidden ({f.hidden}) must be a multiple of former.num_heads ({f.num_heads})",
        ),
        (f.intermediate >= 1, "former.intermediate must be >= 1"),
        (
            1 <= f.cross_attention_frequency <= f.num_layers,
            "former.cross_attention_frequency must be in [1, former.num_layers]",
        ),
        (0.0 <= f.dropout < 1.0, "former.dropout must be in [0, 1)"),
        (0.0 <= f.time_mask < 1.0, "former.time_mask must be in [0, 1)"),
        (f.time_mask_span >= 1, "former.time_mask_span must be >= 1"),
        (
            not f.init_from_text_encoder or bool(f.text_encoder),
            "former.init_from_text_encoder needs former.text_encoder",
        ),
        (
            f.use_speech or f.text_fusion == "concat",
            "former.use_speech=false (text-only) needs former.text_fusion=concat",
        ),
        (cfg.prompt.max_transcript_tokens >= 0, "prompt.max_transcript_tokens must be >= 0"),
        (0.0 <= cfg.encoder.whisper_tail_s <= 5.0, "encoder.whisper_tail_s must be in [0, 5]"),
        (len(lab.names) >= 2, "labels.names needs at least 2 labels"),
        (len(set(lab.names)) == len(lab.names), f"labels.names has duplicates: {lab.names}"),
        (lo.temperature > 0, "loss.temperature must be > 0"),
        (lo.gamma >= 0, "loss.gamma must be >= 0"),
        (lo.supcon_weight >= 0 and lo.focal_weight >= 0, "loss weights must be >= 0"),
        (lo.supcon_weight + lo.focal_weight > 0, "loss.supcon_weight + loss.focal_weight must be > 0"),
        (
            not isinstance(lo.alpha, str) or lo.alpha in ("auto", "none"),
            f"loss.alpha must be 'auto', 'none' or a list of floats, got {lo.alpha!r}",
        ),
        (
            isinstance(lo.alpha, str) or len(lo.alpha) == len(lab.names),
            f"loss.alpha has {0 if isinstance(lo.alpha, str) else len(lo.alpha)} weights for {len(lab.names)} labels",
        ),
        (cfg.lora.r >= 1 and cfg.lora.alpha > 0, "lora.r and lora.alpha must be positive"),
        (len(cfg.lora.target_modules) > 0, "lora.target_modules must not be empty"),
        (0.0 <= cfg.lora.dropout < 1.0, "lora.dropout must be in [0, 1)"),
        (st.stage2.mal_weight >= 0, "train.stage2.mal_weight must be >= 0"),
        (
            all(0.0 <= x.text_dropout < 1.0 for x in (st.stage1, st.stage2)),
            "train.stage*.text_dropout must be in [0, 1)",
        ),
        (all(0.0 <= x.ema < 1.0 for x in (st.stage1, st.stage2)), "train.stage*.ema must be in [0, 1)"),
        (
            all(0.0 <= x.stats_resample <= 1.0 for x in (st.stage1, st.stage2)),
            "train.stage*.stats_resample must be in [0, 1]",
        ),
        (st.stage2.label_ce_weight >= 0, "train.stage2.label_ce_weight must be >= 0"),
        (st.stage2.distill_weight >= 0, "train.stage2.distill_weight must be >= 0"),
        (st.stage2.lm_weight >= 0, "train.stage2.lm_weight must be >= 0"),
        (st.stage2.former_lr_scale >= 0, "train.stage2.former_lr_scale must be >= 0"),
        (
            st.stage2.mal_weight == 0 or st.stage2.former_trainable,
            "train.stage2.mal_weight > 0 needs train.stage2.former_trainable=true (MAL only trains the Former)",
        ),
        (
            all(s.epochs >= 0 and s.lr > 0 and s.batch_size >= 1 for s in (st.stage1, st.stage2)),
            "train.stage*: epochs >= 0, lr > 0, batch_size >= 1",
        ),
        (
            isinstance(cfg.encoder.layer, int) or cfg.encoder.layer in ("last", "weighted"),
            f"encoder.layer must be 'last', 'weighted' or an integer, got {cfg.encoder.layer!r}",
        ),
        (
            cfg.encoder.weighted_layers is None or cfg.encoder.layer == "weighted",
            "encoder.weighted_layers is only used with encoder.layer=weighted",
        ),
        (
            cfg.encoder.weighted_layers is None or len(cfg.encoder.weighted_layers) >= 1,
            "encoder.weighted_layers must not be empty",
        ),
    ]
    checks.append(
        (
            cfg.encoder.dtype in ENCODER_DTYPES,
            f"encoder.dtype must be one of {ENCODER_DTYPES}, got {cfg.encoder.dtype!r}",
        )
    )
    checks.append((cfg.llm.dtype in DTYPES, f"llm.dtype must be one of {DTYPES}, got {cfg.llm.dtype!r}"))
    checks.append(
        (
            cfg.former.dtype in ("float32", "bfloat16"),
            f"former.dtype must be float32 or bfloat16, got {cfg.former.dtype!r}",
        )
    )
    for dev, key in ((cfg.encoder.device, "encoder.device"), (cfg.llm.device, "llm.device")):
        checks.append(
            (
                dev == "auto" or re.fullmatch(r"cpu|cuda(:\d+)?|mps|xpu(:\d+)?", dev) is not None,
                f"{key} must be auto, cpu, cuda or cuda:N, got {dev!r}",
            )
        )
    if "{" in cfg.prompt.instruction.replace("{labels}", ""):
        checks.append((False, "prompt.instruction may only contain the {labels} placeholder"))
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    if check_assets:
        _validate_assets(cfg)
    return cfg


def _validate_assets(cfg: EmoQConfig) -> None:
    from transformers import AutoConfig, AutoTokenizer

    for key, section in (("encoder.path", cfg.encoder), ("llm.path", cfg.llm)):
        if not Path(section.path).is_dir():
            raise ConfigError(f"{key}: {section.path} is not a directory (build the assets or fix the path)")
    enc = AutoConfig.from_pretrained(cfg.encoder.path, trust_remote_code=cfg.encoder.trust_remote_code)
    n_states = num_encoder_hidden_states(enc)
    idx = [cfg.encoder.layer] if isinstance(cfg.encoder.layer, int) else (cfg.encoder.weighted_layers or [])
    for i in idx:
        if not -n_states <= i < n_states:
            raise ConfigError(
                f"encoder layer index {i} out of range: {cfg.encoder.path} has {n_states} hidden "
                f"states (0 = embeddings .. {n_states - 1} = last layer)"
            )
    if cfg.former.text_encoder:
        _validate_text_encoder(cfg.former)
    tok = AutoTokenizer.from_pretrained(cfg.llm.path, trust_remote_code=cfg.llm.trust_remote_code)
    bad = {}
    for name in cfg.labels.names:
        ids = tok.encode(cfg.labels.token_prefix + name, add_special_tokens=False)
        if len(ids) != 1:
            bad[name] = tok.convert_ids_to_tokens(ids)
    if bad:
        raise ConfigError(
            f"labels must be single tokens of {cfg.llm.path} (answer form "
            f"{cfg.labels.token_prefix!r} + name); these are not: {bad}"
        )
    ids = [tok.encode(cfg.labels.token_prefix + n, add_special_tokens=False)[0] for n in cfg.labels.names]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"labels share token ids: {dict(zip(cfg.labels.names, ids))}")
    if tok.eos_token_id is None:
        raise ConfigError(f"tokenizer of {cfg.llm.path} has no eos token")


def _validate_text_encoder(f: FormerConfig) -> None:
    from transformers import AutoConfig

    if not Path(f.text_encoder).is_dir():
        raise ConfigError(
            f"former.text_encoder: {f.text_encoder} is not a directory (build the assets or fix the path)"
        )
    tc = AutoConfig.from_pretrained(f.text_encoder)
    if not f.init_from_text_encoder:
        return
    want = {"hidden": tc.hidden_size, "num_heads": tc.num_attention_heads, "intermediate": tc.intermediate_size}
    have = {"hidden": f.hidden, "num_heads": f.num_heads, "intermediate": f.intermediate}
    if want != have or f.num_layers > tc.num_hidden_layers:
        raise ConfigError(
            f"former.init_from_text_encoder: the Former must match {f.text_encoder}: {want} and "
            f"num_layers <= {tc.num_hidden_layers}; got {have}, num_layers={f.num_layers}"
        )


def num_encoder_hidden_states(hf_config) -> int:
    """Number of hidden states an encoder returns with ``output_hidden_states`` (layers + embeddings)."""
    n = getattr(hf_config, "encoder_layers", None) if hf_config.model_type == "whisper" else None
    return int(n if n is not None else hf_config.num_hidden_layers) + 1


# ------------------------------------------------------------------------------------------ loading


def load_config(
    path: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
    check_assets: bool = True,
    variables: dict[str, str] | None = None,
) -> EmoQConfig:
    """Load a YAML config (or defaults), apply overrides, expand placeholders, validate.

    ``variables`` adds placeholders (e.g. ``{"bundle": "/path/to/bundle"}``).
    """
    data: dict = {}
    variables = dict(variables or {})
    if path is not None:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        variables.setdefault("config_dir", str(path.resolve().parent))
    data = apply_overrides(data, overrides)
    cfg = config_from_dict(data)
    resolve_paths(cfg, variables)
    return validate(cfg, check_assets=check_assets)


def demo_config_path() -> Path:
    """The demo YAML shipped with the package (tiny Qwen2 + Whisper tiny.en from the asset cache)."""
    return Path(__file__).resolve().parent / "configs" / "demo.yaml"


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; anything else unchanged."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def native_bf16(device: str) -> bool:
    """Whether ``device`` computes bfloat16 natively: a CUDA GPU that supports it, or a CPU with ``avx512_bf16`` /
    ``amx_bf16`` (Linux ``/proc/cpuinfo`` flags). Elsewhere bfloat16 is emulated and slower than float32, so
    ``auto`` choices fall back to float32 there."""
    import torch

    device = resolve_device(device)
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str, device: str):
    """Config dtype string -> torch dtype of the weights; ``auto`` = bfloat16 on cuda, float32 elsewhere; ``int8``
    (dynamic quantisation) and ``bfloat16-mixed`` (autocast) compute around float32 weights."""
    import torch

    if dtype in ("int8", "bfloat16-mixed"):
        return torch.float32
    if dtype == "auto":
        return torch.bfloat16 if resolve_device(device).startswith("cuda") else torch.float32
    return getattr(torch, dtype)
