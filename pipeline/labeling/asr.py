"""Optional ASR stage: transcripts for the text branch of bundles trained with text.

Runs any local Whisper checkpoint (``WhisperForConditionalGeneration``; the converted tiny.en here) on the
segments that have no transcript yet (the manifest's transcripts win). Segments are batched by length; audio is
resampled to 16 kHz if the encoder rate differs. The transcript used ends up in the output's ``transcript``.

When the bundle's emotion encoder *is* that Whisper checkpoint, :class:`WhisperDecoder` decodes from the encoder
states the emotion side computes anyway (inside :class:`pipeline.labeling.encode.EncodePrompts`) instead of
encoding twice.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence

import numpy as np
import torch

from pipeline import audio
from pipeline.labeling import columns as C
from pipeline.labeling.columns import columns_of, rows_of
from pipeline.labeling.encode import length_batches
from pipeline.labeling.prepare import split_segments

WHISPER_RATE = 16000


def bundle_uses_text(bundle_dir: str) -> bool:
    """True when the bundle's model reads transcripts (Former text fusion or transcript tokens in the prompt)."""
    from emoq_model.bundle import bundle_config

    cfg = bundle_config(bundle_dir)
    return cfg.former.text_fusion != "none" or bool(cfg.prompt.include_transcript)


def normalise_text(text: str | None) -> str:
    """Lower-cased words without punctuation: the form WER is computed on."""
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", (text or "").lower()).split())


def word_error_rate(refs: Sequence[str | None], hyps: Sequence[str | None]) -> float:
    """Corpus WER (jiwer) of ``hyps`` against ``refs`` after :func:`normalise_text`; an empty hypothesis counts as
    all deletions."""
    import jiwer

    return float(jiwer.wer([normalise_text(r) for r in refs], [normalise_text(h) or "<empty>" for h in hyps]))


def shares_encoder(bundle_dir: str, asr_model: str) -> bool:
    """True when the bundle's emotion encoder is the Whisper checkpoint ``asr_model`` (shared-encoder ASR applies)."""
    from transformers import AutoConfig

    from emoq_model.bundle import bundle_config

    enc = bundle_config(bundle_dir).encoder
    if AutoConfig.from_pretrained(enc.path).model_type != "whisper":
        return False
    return same_checkpoint(enc.path, asr_model)


class SilenceSplitAttention(torch.nn.Module):
    """Whisper decoder cross-attention over ``[an item's n real frames ; the silent window's frames n..W)``, computed
    as one softmax over both parts, where the silent part's keys and values are projected once and shared by every
    item of every batch.

    Why: shared decoding (:class:`WhisperDecoder`) appends the states of a silent 30 s window to each segment, so
    plain attention reads W = 1500 key/value frames per item per step (memory-bound: ~74 MB a step for 16 items)
    and projects them per item; the silent frames are the same for every item, so only each item's own n frames
    (about 150 for a 3 s segment) need their own keys. Same result as attending to the concatenation (float
    rounding apart: ``tests/labeling/test_asr_shared.py``)."""

    def __init__(self, attn: torch.nn.Module, silence: torch.Tensor):
        super().__init__()
        self.attn = attn  # the original module: its projections (and a reference forward for tests)
        self.h, self.hd, self.scaling = attn.num_heads, attn.head_dim, attn.scaling
        with torch.inference_mode():
            self.k_sil_t = self._heads(attn.k_proj(silence)).transpose(1, 2).contiguous()  # [H, hd, W]
            self.v_sil = self._heads(attn.v_proj(silence)).contiguous()  # [H, W, hd]
        self.k_real_t = self.v_real = self.bias_real = self.bias_sil = None

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # [..., T, H*hd] -> [..., H, T, hd]
        return x.view(*x.shape[:-1], self.h, self.hd).transpose(-3, -2)

    def set_items(self, states: list[torch.Tensor]) -> None:
        """The batch's real frames (``[n_i, D]`` each, n_i <= W): their keys/values and the two parts' masks."""
        ns = [int(s.shape[0]) for s in states]
        w, n_max = self.v_sil.shape[1], max(ns)
        flat = torch.cat(states)
        k_all, v_all = self.attn.k_proj(flat), self.attn.v_proj(flat)
        pad = torch.nn.utils.rnn.pad_sequence
        k, v = pad(list(k_all.split(ns)), batch_first=True), pad(list(v_all.split(ns)), batch_first=True)
        self.k_real_t = self._heads(k).transpose(-1, -2).contiguous()  # [B, H, hd, n_max]: laid out for each step
        self.v_real = self._heads(v).contiguous()  # [B, H, n_max, hd]
        pos_real = torch.arange(n_max, device=flat.device)
        pos_sil = torch.arange(w, device=flat.device)
        n_t = torch.tensor(ns, device=flat.device)[:, None]
        neg = torch.finfo(flat.dtype).min
        self.bias_real = torch.where(pos_real[None] < n_t, 0.0, neg).to(flat.dtype)[:, None, None, :]
        self.bias_sil = torch.where(pos_sil[None] >= n_t, 0.0, neg).to(flat.dtype)[:, None, None, :]

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the items at positions ``keep`` of the current batch (greedy decoding drops finished ones)."""
        self.k_real_t, self.v_real = self.k_real_t[keep], self.v_real[keep]
        self.bias_real, self.bias_sil = self.bias_real[keep], self.bias_sil[keep]

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, None]:
        b, q, _ = hidden_states.shape
        w, n_max = self.v_sil.shape[1], self.v_real.shape[2]
        qs = self._heads(self.attn.q_proj(hidden_states) * self.scaling)  # [B, H, q, hd] (Whisper scales q first)
        s_real = qs @ self.k_real_t + self.bias_real  # [B, H, q, n_max]
        qh = qs.transpose(0, 1).reshape(self.h, b * q, self.hd)  # the silent keys are shared: one bmm per head
        s_sil = torch.bmm(qh, self.k_sil_t).view(self.h, b, q, w).transpose(0, 1) + self.bias_sil
        p = torch.softmax(torch.cat([s_real, s_sil], -1), -1)
        p_sil = p[..., n_max:].transpose(0, 1).reshape(self.h, b * q, w)
        out = p[..., :n_max] @ self.v_real + torch.bmm(p_sil, self.v_sil).view(self.h, b, q, self.hd).transpose(0, 1)
        return self.attn.out_proj(out.transpose(1, 2).reshape(b, q, self.h * self.hd)), None


def decoder_dtype(name: str, device: str | torch.device = "cpu") -> torch.dtype:
    """An ASR decoder's dtype from its name (``LabelJobConfig.asr_dtype``): a floating dtype, never a quantised one.
    ``auto``: bfloat16 where ``device`` computes it natively (:func:`emoq_model.config.native_bf16`), else float32
    (measured on the demo archive: decoding 1.5x faster, 99.5 % of labels unchanged)."""
    if name == "auto":
        from emoq_model.config import native_bf16

        return torch.bfloat16 if native_bf16(str(device)) else torch.float32
    dtype = getattr(torch, name, None) if isinstance(name, str) else name
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"ASR decoder dtype must be a torch floating dtype name, got {name!r}")
    return dtype


class WhisperDecoder:
    """Shared-encoder ASR: Whisper's decoder on encoder states the emotion side already computed (one encoder pass).

    The emotion encoder runs Whisper at each segment's real length; Whisper's decoder was trained on 30 s windows
    whose speech is followed by silence. So each segment's final encoder states (with the encoder's silence tail,
    ``encoder.whisper_tail_s``) are followed by the states of a silent 30 s window from the same position on
    (computed once; its keys and values too: :class:`SilenceSplitAttention`), and greedy decoding runs on that
    full-length input: measured on the Debian asterisk prompts, WER 0.068 against 0.066 for separate 30 s encoding,
    and 0.18 without the tail.
    """

    def __init__(
        self,
        model_path: str,
        device: str | None = None,
        batch_size: int = 64,
        max_new_tokens: int = 96,
        tokens_per_s: float = 6.0,
        dtype: str = "float32",
        use_generate: bool = False,
    ):
        """``batch_size``: items per decoding call; each batch stops at ``8 + tokens_per_s`` x its longest
        clip's seconds new tokens (at most ``max_new_tokens``): speech is ~3 tokens/s, and a runaway repetition loop
        must not cost 96 steps. ``dtype``: the decoder's weights and activations (``bfloat16`` halves the weight
        traffic of greedy decoding's small per-step matmuls; the silent window is encoded in float32 either way).
        ``use_generate``: decode with ``transformers``' ``generate`` even where the own greedy loop (:meth:`_greedy`,
        the same tokens) applies."""
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = decoder_dtype(dtype, self.device)
        self.processor = WhisperProcessor.from_pretrained(model_path)
        self.model = WhisperForConditionalGeneration.from_pretrained(model_path, use_safetensors=True)
        self.model.to(self.device).eval()
        self.batch_size, self.max_new_tokens, self.tokens_per_s = batch_size, max_new_tokens, tokens_per_s
        fe = self.processor.feature_extractor
        self.frame_s = 2 * fe.hop_length / fe.sampling_rate  # seconds per encoder frame (20 ms)
        with torch.inference_mode():
            silent = fe([np.zeros(fe.n_samples, np.float32)], sampling_rate=fe.sampling_rate, return_tensors="pt")
            self.silence = self.model.get_encoder()(silent.input_features.to(self.device)).last_hidden_state[0]
        # the emotion encoder holds these weights already: keep one copy (generate never runs the encoder when
        # given encoder_outputs)
        self.model.get_encoder().layers = torch.nn.ModuleList()
        self.model.to(self.dtype)
        self.silence = self.silence.to(self.dtype)
        self.cross = []
        for layer in self.model.model.decoder.layers:
            layer.encoder_attn = SilenceSplitAttention(layer.encoder_attn, self.silence)
            self.cross.append(layer.encoder_attn)
        gen = self.model.generation_config
        # the prompt tokens generate() starts from when no language has to be detected: an English-only
        # checkpoint's <|startoftranscript|><|notimestamps|>; a multilingual one detects the language per item first,
        # which generate() does (and then decodes the whole batch to its longest item)
        self.prefix = None
        if not use_generate and not getattr(gen, "is_multilingual", True) and gen.no_timestamps_token_id is not None:
            self.prefix = torch.tensor([[gen.decoder_start_token_id, gen.no_timestamps_token_id]], device=self.device)
        self.eos = int(gen.eos_token_id)
        self.suppress = torch.tensor(list(gen.suppress_tokens or []), dtype=torch.long, device=self.device)
        self.begin_suppress = torch.tensor(list(gen.begin_suppress_tokens or []), dtype=torch.long, device=self.device)

    @torch.inference_mode()
    def transcribe_states(self, states: torch.Tensor, lengths: Sequence[int]) -> list[str]:
        """``states`` ``[B, T, D]`` final encoder states (:attr:`EncoderOutput.decoder_states`), ``lengths`` the
        valid frames of each -> one transcript per item."""
        return self.transcribe_frames([states[i, : int(n)] for i, n in enumerate(lengths)])

    @torch.inference_mode()
    def transcribe_frames(self, frames: Sequence[torch.Tensor]) -> list[str]:
        """One transcript per item of ``frames`` (``[n_i, D]`` final encoder states each), decoded in batches of
        ``batch_size`` items of similar length (each batch stops after its longest item's token budget; every step
        reads the 51,864-way output layer once for the whole batch, so full batches are cheaper per item)."""
        from transformers.modeling_outputs import BaseModelOutput

        full = self.silence.shape[0]
        order = sorted(range(len(frames)), key=lambda i: int(frames[i].shape[0]))
        out: list[str] = [""] * len(frames)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            rows = [frames[i][:full].to(self.device, self.silence.dtype) for i in idx]
            for attn in self.cross:
                attn.set_items(rows)
            # the decoder reads the frames through the cross-attention modules; generate needs only the batch size
            enc = BaseModelOutput(last_hidden_state=self.silence.new_zeros(len(rows), 1, self.silence.shape[-1]))
            longest_s = max(int(r.shape[0]) for r in rows) * self.frame_s
            budget = min(self.max_new_tokens, 8 + math.ceil(self.tokens_per_s * longest_s))
            if self.prefix is None:
                ids = self.model.generate(encoder_outputs=enc, max_new_tokens=budget)
            else:
                ids = self._greedy(enc.last_hidden_state, budget)
            for i, text in zip(idx, self.processor.batch_decode(ids, skip_special_tokens=True)):
                out[i] = text.strip()
        return out

    def _greedy(self, enc: torch.Tensor, budget: int) -> list[list[int]]:
        """Greedy decoding as ``generate`` does it for this checkpoint (the same prompt tokens, suppressed tokens
        and begin-suppressed tokens, argmax, stop at end-of-text or ``budget`` new tokens), except that an item
        leaves the batch when it ends: ``generate`` goes on computing finished items until the longest one ends,
        and every step of every item reads the 51,864-way output layer, most of a step's work."""
        dec, proj = self.model.model.decoder, self.model.proj_out
        n = enc.shape[0]
        alive = list(range(n))
        tokens: list[list[int]] = [[] for _ in range(n)]
        ids, cache = self.prefix.expand(n, -1), None
        for step in range(budget):
            o = dec(input_ids=ids, encoder_hidden_states=enc, past_key_values=cache, use_cache=True)
            cache = o.past_key_values
            logits = proj(o.last_hidden_state[:, -1]).float()
            logits[:, self.suppress] = float("-inf")
            if step == 0:
                logits[:, self.begin_suppress] = float("-inf")
            nxt = logits.argmax(-1)
            ended = nxt == self.eos
            for i, t, e in zip(alive, nxt.tolist(), ended.tolist()):
                if not e:
                    tokens[i].append(t)
            if bool(ended.all()):
                break
            if bool(ended.any()):
                keep = (~ended).nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                for attn in self.cross:
                    attn.select(keep)
                alive = [alive[k] for k in keep.tolist()]
                nxt, enc = nxt[keep], enc[keep]
            ids = nxt[:, None]
        return tokens


def same_checkpoint(a: str, b: str) -> bool:
    """True when two local model directories hold the same weights (same resolved path, or equal safetensors)."""
    import hashlib
    from pathlib import Path

    pa, pb = Path(a).expanduser().resolve(), Path(b).expanduser().resolve()
    if pa == pb:
        return True

    def digest(p: Path) -> str | None:
        files = sorted(p.glob("*.safetensors"))
        if not files:
            return None
        h = hashlib.sha256()
        for f in files:
            h.update(f.read_bytes())
        return h.hexdigest()

    da = digest(pa)
    return da is not None and da == digest(pb)


class Transcribe:
    """``map_batches`` callable: fill missing segment transcripts with greedy Whisper decoding."""

    columns = C.TRANSCRIBE

    def __init__(
        self,
        model_path: str,
        sample_rate: int,
        device: str | None = None,
        batch_size: int = 16,
        max_new_tokens: int = 96,
        dtype: str = "float32",
    ):
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = decoder_dtype(dtype, self.device)
        self.processor = WhisperProcessor.from_pretrained(model_path)
        self.model = WhisperForConditionalGeneration.from_pretrained(model_path, use_safetensors=True)
        self.model.to(self.device, self.dtype).eval()
        self.rate, self.batch_size, self.max_new_tokens = sample_rate, batch_size, max_new_tokens

    @torch.inference_mode()
    def transcribe(self, waves: list[np.ndarray]) -> list[str]:
        waves = [audio.resample(w, self.rate, WHISPER_RATE) for w in waves]
        out = [""] * len(waves)
        for idx in length_batches([len(w) for w in waves], self.batch_size, 10**12):
            feats = self.processor.feature_extractor(
                [waves[i] for i in idx], sampling_rate=WHISPER_RATE, return_tensors="pt"
            )
            feats = feats.input_features.to(self.device, self.dtype)
            ids = self.model.generate(feats, max_new_tokens=self.max_new_tokens)
            for i, text in zip(idx, self.processor.batch_decode(ids, skip_special_tokens=True)):
                out[i] = text.strip()
        return out

    def __call__(self, batch: dict) -> dict:
        rows = rows_of(batch)
        todo, where = [], []
        for r, row in enumerate(rows):
            if row.get("seg_offsets") is None or len(row["seg_offsets"]) < 2:
                continue
            tx = json.loads(row["seg_transcript"]) if isinstance(row.get("seg_transcript"), str) else []
            segs = split_segments(row)
            tx += [None] * (len(segs) - len(tx))
            row["_tx"] = tx
            for s, w in enumerate(segs):
                if not tx[s]:
                    todo.append(w)
                    where.append((r, s))
        for (r, s), text in zip(where, self.transcribe(todo) if todo else []):
            rows[r]["_tx"][s] = text or None
        for row in rows:
            if "_tx" in row:
                row["seg_transcript"] = json.dumps(row.pop("_tx"))
        return columns_of(rows, list(rows[0]) if rows else [])
