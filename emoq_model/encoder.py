"""Frozen speech encoder: any local HF HuBERT / wav2vec2 / WavLM checkpoint, or a Whisper model's encoder.

The encoder is the frozen, precomputable half of the front end: it returns either one hidden-state layer
(``layer="last"`` or an index) or the stack of hidden states (``layer="weighted"``, shape ``[L, B, T, D]``);
the learned softmax layer weights live in the EmoQ-Former (:class:`emoq_model.former.LayerWeights`), so cached
features can be trained on.

Batching never changes an item's result (within float tolerance): every item's features are extracted alone
(per-item normalisation), the batch is zero-padded and padded frames are masked in attention. Group-norm
wav2vec2-family models (e.g. HuBERT-base), whose convolutional front end normalises over the whole padded
waveform, run item by item when ``exact_batching`` is set. Whisper runs, by default, on the real length of the
batch (position table sliced, padded frames masked) instead of 30 s windows; ``whisper_real_length=False`` gives
the standard HF path (30 s windows, no masking) and slices its output to the valid frames.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from emoq_model.config import EncoderConfig, resolve_device, resolve_dtype

WAV2VEC2_FAMILY = (
    "hubert",
    "wav2vec2",
    "wavlm",
    "wav2vec2-conformer",
    "data2vec-audio",
    "sew",
    "sew-d",
    "unispeech",
    "unispeech-sat",
)
MIN_SAMPLES = 400  # 25 ms: shorter items are zero-padded (the conv front ends need one full window)


@dataclass
class EncoderOutput:
    """``hidden``: ``[B, T, D]`` (one layer) or ``[L, B, T, D]`` (stacked layers); ``mask``: ``[B, T]`` bool.

    Whisper only: ``decoder_states`` ``[B, T', D]``, the encoder's final (layer-normed) states as Whisper's decoder
    reads them, including the silence tail's frames (``whisper_tail_s``), with ``decoder_lengths`` ``[B]``; shared
    encoder ASR decodes transcripts from them (:class:`pipeline.labeling.asr.WhisperDecoder`)."""

    hidden: torch.Tensor
    mask: torch.Tensor
    decoder_states: torch.Tensor | None = None
    decoder_lengths: torch.Tensor | None = None

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(-1)

    def to(self, device=None, dtype=None) -> EncoderOutput:
        dec = None if self.decoder_states is None else self.decoder_states.to(device=device, dtype=dtype)
        return EncoderOutput(
            self.hidden.to(device=device, dtype=dtype), self.mask.to(device), dec, self.decoder_lengths
        )

    def item(self, i: int) -> torch.Tensor:
        """Item ``i``'s valid frames: ``[T_i, D]`` or ``[L, T_i, D]``."""
        n = int(self.mask[i].sum())
        return self.hidden[..., i, :n, :]


def whisper_frames(num_samples: int | torch.Tensor, hop: int = 160) -> int | torch.Tensor:
    """Whisper encoder frames for a clip: mel frames ``ceil(samples / hop)``, then the stride-2 conv halves them."""
    if isinstance(num_samples, torch.Tensor):
        mel = torch.div(num_samples + hop - 1, hop, rounding_mode="floor")
        return torch.div(mel + 1, 2, rounding_mode="floor")
    return (math.ceil(num_samples / hop) + 1) // 2


def quantize_int8(model: nn.Module, device: torch.device) -> nn.Module:
    """Dynamic int8 quantisation of every ``nn.Linear`` (weights int8 per tensor, activations quantised per batch at
    run time): the attention and feed-forward matmuls that are most of a transformer encoder's cost. CPU only
    (fbgemm / oneDNN kernels); convolutions and norms stay float32."""
    import warnings

    if device.type != "cpu":
        from emoq_model.errors import ConfigError

        raise ConfigError(
            f"encoder.dtype=int8 (dynamic quantisation) runs on CPU only, not {device}: use bfloat16 on GPUs"
        )
    with warnings.catch_warnings():  # torch.ao's eager quantisation warns that it moves to torchao
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


class SpeechEncoder(nn.Module):
    """Frozen speech encoder in inference mode. Call with a list of 1-D float32 arrays at :attr:`sample_rate`."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

        self.cfg = cfg
        device = torch.device(resolve_device(cfg.device))
        dtype = resolve_dtype(cfg.dtype, cfg.device)
        hf_cfg = AutoConfig.from_pretrained(cfg.path, trust_remote_code=cfg.trust_remote_code)
        self.family = hf_cfg.model_type
        if self.family != "whisper" and self.family not in WAV2VEC2_FAMILY:
            raise ValueError(f"{cfg.path}: unsupported encoder type {self.family!r} (whisper or {WAV2VEC2_FAMILY})")
        self.feature_extractor = AutoFeatureExtractor.from_pretrained(cfg.path)
        model = AutoModel.from_pretrained(
            cfg.path,
            dtype=dtype,
            trust_remote_code=cfg.trust_remote_code,
            use_safetensors=None if cfg.allow_pickle_weights else True,
        )
        if self.family == "whisper":
            model = model.get_encoder()  # the decoder is dropped
        model = model.to(device).eval().requires_grad_(False)
        if cfg.dtype == "int8":
            model = quantize_int8(model, device)
        self.model = model
        # bfloat16-mixed: float32 weights, the model's matmuls and convolutions under bfloat16 autocast (the feature
        # extractor's STFT stays outside it)
        self.autocast = cfg.dtype == "bfloat16-mixed"
        self.sample_rate = int(self.feature_extractor.sampling_rate)
        self.hidden_size = int(hf_cfg.d_model if self.family == "whisper" else hf_cfg.hidden_size)
        n_layers = hf_cfg.encoder_layers if self.family == "whisper" else hf_cfg.num_hidden_layers
        self.num_hidden_states = int(n_layers) + 1  # embeddings + every layer
        self.layer_indices = self._layer_indices()
        self.pass_mask = self.family != "whisper" and bool(
            getattr(self.feature_extractor, "return_attention_mask", False)
        )
        self.per_item = (
            self.family != "whisper" and cfg.exact_batching and getattr(hf_cfg, "feat_extract_norm", "layer") == "group"
        )
        # samples per output frame (Whisper: mel hop x the stride-2 conv; wav2vec2 family: the conv strides)
        self.frame_hop = (
            2 * int(self.feature_extractor.hop_length) if self.family == "whisper" else int(np.prod(hf_cfg.conv_stride))
        )
        from emoq_model.prosody import PROSODY_DIMS

        self.prosody_dims = PROSODY_DIMS if cfg.prosody else 0
        self.output_size = self.hidden_size + self.prosody_dims  # width of every output frame

    def _layer_indices(self) -> list[int] | None:
        """Hidden-state indices stacked for ``weighted`` (or the single index); None for ``last``."""
        layer, n = self.cfg.layer, self.num_hidden_states
        if layer == "last":
            return None
        idx = [layer] if isinstance(layer, int) else (self.cfg.weighted_layers or list(range(n)))
        for i in idx:
            if not -n <= i < n:
                raise ValueError(f"encoder layer index {i} out of range for {n} hidden states")
        return [i % n for i in idx]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _compute(self):
        """The context the model's forward runs in: bfloat16 autocast for ``bfloat16-mixed``, else nothing."""
        import contextlib

        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def num_output_layers(self) -> int:
        """L of the stacked output (``layer="weighted"``), 1 otherwise."""
        return len(self.layer_indices) if self.cfg.layer == "weighted" else 1

    def train(self, mode: bool = True) -> SpeechEncoder:
        return super().train(False)  # always frozen / eval (no dropout, no SpecAugment)

    # ------------------------------------------------------------------------------------------ lengths

    def frame_lengths(self, sample_lengths: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Valid encoder frames per item for the given sample counts (after the minimum-length padding)."""
        n = torch.as_tensor(sample_lengths, dtype=torch.long).clamp(min=MIN_SAMPLES)
        if self.family == "whisper":
            return whisper_frames(n, self.feature_extractor.hop_length)
        return self.model._get_feat_extract_output_lengths(n).long()

    # ------------------------------------------------------------------------------------------ forward

    @torch.inference_mode()
    def forward(self, audio: Sequence[np.ndarray]) -> EncoderOutput:
        """Encode a batch of variable-length mono clips (1-D float arrays at :attr:`sample_rate`)."""
        if len(audio) == 0:
            raise ValueError("empty batch")
        waves = [self._prepare(a, i) for i, a in enumerate(audio)]
        if self.family == "whisper":
            out = self._whisper(waves)
        elif self.per_item and len(waves) > 1:
            out = _pad_outputs([self._wav2vec2([w]) for w in waves])
        else:
            out = self._wav2vec2(waves)
        return self._with_prosody(out, waves) if self.prosody_dims else out

    @property
    def tail_samples(self) -> int:
        """Silence appended to every clip of a real-length Whisper pass (``whisper_tail_s``)."""
        if self.family != "whisper" or not self.cfg.whisper_real_length:
            return 0
        return int(round(self.cfg.whisper_tail_s * self.sample_rate))

    def _with_prosody(self, out: EncoderOutput, waves: list[np.ndarray]) -> EncoderOutput:
        """Append the prosody tracks (:mod:`emoq_model.prosody`) to every frame of every output layer."""
        from emoq_model.prosody import prosody_tracks

        h = out.hidden
        p = prosody_tracks(waves, self.sample_rate, self.frame_hop, out.mask.sum(-1).tolist(), h.device)
        p = nn.functional.pad(p, (0, 0, 0, h.shape[-2] - p.shape[1])).to(h.dtype)
        p = p.expand(h.shape[0], -1, -1, -1) if h.dim() == 4 else p
        return EncoderOutput(torch.cat([h, p], -1), out.mask, out.decoder_states, out.decoder_lengths)

    def _prepare(self, a, i: int) -> np.ndarray:
        a = np.asarray(a, dtype=np.float32)
        if a.ndim != 1:
            raise ValueError(f"item {i}: expected 1-D mono audio, got shape {a.shape}")
        if a.size == 0:
            raise ValueError(f"item {i}: empty audio")
        if self.family == "whisper" and a.size + self.tail_samples > self.feature_extractor.n_samples:
            raise ValueError(
                f"item {i}: {a.size / self.sample_rate:.1f} s is longer than Whisper's "
                f"{self.feature_extractor.n_samples / self.sample_rate:.0f} s window; segment it first"
            )
        if a.size < MIN_SAMPLES:
            a = np.pad(a, (0, MIN_SAMPLES - a.size))
        return a

    def _select(self, hidden_states: Sequence[torch.Tensor], last: torch.Tensor) -> torch.Tensor:
        if self.layer_indices is None:
            return last
        if self.cfg.layer == "weighted":
            return torch.stack([hidden_states[i] for i in self.layer_indices])
        return hidden_states[self.layer_indices[0]]

    # wav2vec2 / HuBERT / WavLM ---------------------------------------------------------------------

    def _wav2vec2(self, waves: list[np.ndarray]) -> EncoderOutput:
        lengths = torch.tensor([w.size for w in waves])
        x, sample_mask = self._wav2vec2_inputs(waves, lengths)
        kwargs = {"attention_mask": sample_mask.long()} if self.pass_mask else {}
        with self._compute():
            out = self.model(x.to(self.dtype), output_hidden_states=self.layer_indices is not None, **kwargs)
        frames = self.model._get_feat_extract_output_lengths(lengths).long()
        hidden = self._select(out.hidden_states, out.last_hidden_state)
        mask = torch.arange(hidden.shape[-2])[None] < frames[:, None]
        return EncoderOutput(hidden, mask.to(hidden.device))

    def _wav2vec2_inputs(self, waves: list[np.ndarray], lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero-padded ``[B, S]`` float32 input values on the model's device and their sample mask.

        For the standard ``Wav2Vec2FeatureExtractor`` (float32 values, optional per-clip zero-mean / unit-variance
        normalisation), the batch goes to the device as one flat copy and is padded and normalised there: the
        same result as the extractor on each clip alone, without per-clip host work. Other extractors run per clip.
        """
        from transformers import Wav2Vec2FeatureExtractor

        dev, fe = self.device, self.feature_extractor
        steps = torch.arange(int(lengths.max()), device=dev)[None]
        mask = steps < lengths.to(dev)[:, None]
        if type(fe) is Wav2Vec2FeatureExtractor and fe.padding_value == 0.0:
            flat = torch.from_numpy(np.concatenate(waves))
            if dev.type == "cuda":
                flat = flat.pin_memory()
            x = torch.zeros(mask.shape, dtype=torch.float32, device=dev)
            x[mask] = flat.to(dev, non_blocking=True)  # row-major: each clip's samples in order
            if fe.do_normalize:
                n = lengths.to(dev, torch.float32)[:, None]
                mean = x.sum(1, keepdim=True) / n
                var = ((x - mean) * mask).square().sum(1, keepdim=True) / n
                x = (x - mean) / torch.sqrt(var + 1e-7) * mask
            return x, mask
        x = torch.zeros(mask.shape, dtype=torch.float32)
        for i, w in enumerate(waves):
            f = fe(w, sampling_rate=self.sample_rate, return_tensors="np")["input_values"][0]
            x[i, : f.shape[-1]] = torch.from_numpy(f)
        return x.to(dev), mask

    # Whisper -------------------------------------------------------------------------------------------

    def _whisper(self, waves: list[np.ndarray]) -> EncoderOutput:
        fe = self.feature_extractor
        frames = whisper_frames(torch.tensor([w.size for w in waves]), fe.hop_length)
        if not self.cfg.whisper_real_length:  # standard HF path: 30 s windows, no masking, sliced afterwards
            x = fe(waves, sampling_rate=self.sample_rate, return_tensors="pt").input_features
            with self._compute():
                out = self.model(x.to(self.device, self.dtype), output_hidden_states=self.layer_indices is not None)
            hidden = self._select(out.hidden_states, out.last_hidden_state)[..., : int(frames.max()), :]
            dec, dec_len = out.last_hidden_state, torch.full((len(waves),), out.last_hidden_state.shape[1])
        else:
            mels, tail = [], self.tail_samples
            for w in waves:  # each clip alone: exact per-clip log-mel normalisation; pad to whole hops
                w = np.pad(w, (0, tail + (-(w.size + tail)) % fe.hop_length))
                mels.append(
                    fe(w, sampling_rate=self.sample_rate, padding="longest", return_tensors="pt").input_features[0]
                )
            mel_len = torch.tensor([m.shape[-1] for m in mels])
            x = torch.zeros(len(mels), mels[0].shape[0], int(mel_len.max()))
            for i, m in enumerate(mels):
                x[i, :, : m.shape[-1]] = m
            with self._compute():
                hidden, dec = self._whisper_real_length(x.to(self.device, self.dtype), mel_len.to(self.device))
            dec_len = torch.div(mel_len + 1, 2, rounding_mode="floor")
        mask = torch.arange(hidden.shape[-2])[None] < frames[:, None]
        return EncoderOutput(hidden, mask.to(hidden.device), dec, dec_len)

    def _whisper_real_length(self, mel: torch.Tensor, mel_len: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """HF ``WhisperEncoder.forward`` on ``[B, n_mels, M]`` with M <= 3000: the position table is sliced to the
        batch length and padded frames are masked; the submodules and weights are the encoder's own. Returns the
        selected states and the final layer-normed states (Whisper's decoder input)."""
        enc = self.model
        m_mask = torch.arange(mel.shape[-1], device=mel.device)[None] < mel_len[:, None]
        x = nn.functional.gelu(enc.conv1(mel)) * m_mask[:, None, :].to(mel.dtype)  # zeros = the conv's own padding
        x = nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1)
        t = x.shape[1]
        if t > enc.embed_positions.num_embeddings:
            raise ValueError(f"{t} frames exceed Whisper's {enc.embed_positions.num_embeddings} positions")
        x = x + enc.embed_positions.weight[:t]
        valid = torch.arange(t, device=x.device)[None] < torch.div(mel_len + 1, 2, rounding_mode="floor")[:, None]
        attn = torch.zeros(valid.shape, dtype=x.dtype, device=x.device).masked_fill(~valid, torch.finfo(x.dtype).min)
        attn = attn[:, None, None, :]  # [B, 1, 1, T] additive key mask
        states = [x]
        for layer in enc.layers:
            x = layer(x, attn)
            states.append(x)
        states[-1] = enc.layer_norm(x)
        return self._select(states, states[-1]), states[-1]


def _pad_outputs(outs: list[EncoderOutput]) -> EncoderOutput:
    """Concatenate per-item outputs of the wav2vec2 family (no decoder states)."""
    t = max(o.hidden.shape[-2] for o in outs)
    hidden = torch.cat([nn.functional.pad(o.hidden, (0, 0, 0, t - o.hidden.shape[-2])) for o in outs], dim=-3)
    mask = torch.cat([nn.functional.pad(o.mask, (0, t - o.mask.shape[-1])) for o in outs], dim=0)
    return EncoderOutput(hidden, mask)
