"""EmoQ model: speech encoder (optional) -> EmoQ-Former -> soft prompt -> LLM with LoRA.

* :class:`EmoQFrontEnd` is everything before the LLM (Former, prompt builder, the LLM's frozen input embeddings,
  optionally the speech encoder). Serving uses it alone: it turns features into vLLM ``prompt_embeds``.
* :class:`EmoQModel` adds the LLM (peft LoRA) and the losses; ``model(batch, stage)`` / :meth:`stage_step` returns
  a loss dict (call through the DDP wrapper under DDP so gradients are synchronised),
  :meth:`trainable_parameters` what the stage trains, :meth:`predict_proba` the label distribution.
* :func:`collate_features` turns precomputed encoder features into an :class:`EmoQBatch`.

The encoder is held as a plain attribute (not a submodule): it is frozen, never saved in the bundle's Former file
and not wrapped by DDP.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from emoq_model import steps
from emoq_model.batch import EmoQBatch, collate_features  # noqa: F401  (part of this module's API)
from emoq_model.config import EmoQConfig, num_encoder_hidden_states, resolve_device
from emoq_model.encoder import EncoderOutput, SpeechEncoder
from emoq_model.former import EmoQFormer, FormerOutput
from emoq_model.losses import MALoss
from emoq_model.prompt import PromptBatch, PromptBuilder, build_prompt_embeds, pad_prompts


def prosody_dims(cfg: EmoQConfig) -> int:
    """Prosody channels appended to each encoder frame (0 unless ``encoder.prosody``)."""
    from emoq_model.prosody import PROSODY_DIMS

    return PROSODY_DIMS if cfg.encoder.prosody else 0


def encoder_dims(cfg: EmoQConfig) -> tuple[int, int]:
    """(frame width incl. prosody channels, number of stacked output layers) from the encoder's config, without
    loading weights."""
    from transformers import AutoConfig

    hf = AutoConfig.from_pretrained(cfg.encoder.path, trust_remote_code=cfg.encoder.trust_remote_code)
    width = int(hf.d_model if hf.model_type == "whisper" else hf.hidden_size) + prosody_dims(cfg)
    if cfg.encoder.layer != "weighted":
        return int(width), 1
    return int(width), len(cfg.encoder.weighted_layers or range(num_encoder_hidden_states(hf)))


class EmoQFrontEnd(nn.Module):
    """Former + prompt building on top of the LLM's input embeddings (+ optional encoder)."""

    def __init__(
        self,
        cfg: EmoQConfig,
        tokenizer,
        embed: nn.Embedding,
        encoder: SpeechEncoder | None = None,
        own_embed: bool = True,
    ):
        """``embed``: the LLM's input embeddings; ``own_embed=False`` when the LLM (registered elsewhere) owns
        them, else they are registered here (frozen) and move with the module."""
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        if own_embed:
            self.embed = embed.requires_grad_(False)
        else:
            object.__setattr__(self, "embed", embed)
        object.__setattr__(self, "encoder", encoder)
        text_encoder = None
        if (
            cfg.former.text_encoder and cfg.former.text_fusion == "concat"
        ):  # frozen, loaded from its own path, never saved in the bundle (like the encoder)
            from emoq_model.text_encoder import TextEncoder

            text_encoder = TextEncoder(cfg.former.text_encoder, cfg.llm.device, cfg.prompt.max_transcript_tokens)
        object.__setattr__(self, "text_encoder", text_encoder)
        self.prompt = PromptBuilder(tokenizer, cfg.prompt, cfg.labels)
        self.label_names = list(cfg.labels.names)
        width, n_layers = encoder_dims(cfg)
        if encoder is not None and (encoder.output_size, encoder.num_output_layers) != (width, n_layers):
            raise ValueError("encoder does not match the configuration")
        rms = float(embed.weight.detach().float().pow(2).mean().sqrt())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.former = EmoQFormer(
                cfg.former,
                encoder_dim=width,
                llm_dim=embed.embedding_dim,
                num_labels=len(self.label_names),
                num_encoder_layers=n_layers,
                text_dim=text_encoder.hidden_size if text_encoder else embed.embedding_dim,
                prosody_dims=prosody_dims(cfg),
                max_text_tokens=cfg.prompt.max_transcript_tokens,
                llm_embed_rms=rms,
            )
            if cfg.former.init_from_text_encoder:
                self.former.init_from_text_encoder(cfg.former.text_encoder)
        self.former.to(resolve_device(cfg.llm.device))

    @property
    def device(self) -> torch.device:
        """Where the Former lives (batches are moved here); follows ``.to()`` / DDP placement."""
        return self.former.queries.device

    @classmethod
    def from_config(cfg_cls, cfg: EmoQConfig, with_encoder: bool = False) -> EmoQFrontEnd:
        """Front end with only the LLM's embedding table loaded (for serving next to vLLM)."""
        from emoq_model.llm import load_input_embeddings, load_tokenizer

        enc = SpeechEncoder(cfg.encoder) if with_encoder else None
        return cfg_cls(cfg, load_tokenizer(cfg.llm), load_input_embeddings(cfg.llm), enc)

    @property
    def label_token_ids(self) -> list[int]:
        return list(self.prompt.label_ids)

    # ------------------------------------------------------------------------------------------ inputs

    def batch_from_audio(
        self,
        audio: Sequence[np.ndarray],
        labels: Sequence[int] | None = None,
        transcripts: Sequence[str | None] | None = None,
    ) -> EmoQBatch:
        """Run the (frozen) encoder on raw audio at ``encoder.sample_rate``."""
        if self.encoder is None:
            raise RuntimeError("no speech encoder loaded (construct with the encoder, or give features)")
        enc: EncoderOutput = self.encoder(audio)
        lab = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
        return EmoQBatch(enc.hidden, enc.mask, lab, list(transcripts) if transcripts is not None else None)

    def _text(self, batch: EmoQBatch) -> tuple[list[list[int]] | None, torch.Tensor | None, torch.Tensor | None]:
        """Transcript token ids of the LLM prompt, the Former's text embeddings ``[B, S, H]`` and their mask (None
        when no transcripts). The embeddings come from the text encoder when one is configured, else from the LLM's
        input table."""
        if batch.transcripts is None:
            return None, None, None
        ids = self.prompt.transcript_ids(batch.transcripts, len(batch))
        if self.text_encoder is not None:
            emb, mask = self.text_encoder.encode(batch.transcripts)
            return (ids, emb, mask) if bool(mask.any()) else (ids, None, None)
        s = max((len(i) for i in ids), default=0)
        if s == 0:
            return ids, None, None
        dev = self.embed.weight.device
        tok = torch.zeros(len(ids), s, dtype=torch.long, device=dev)
        mask = torch.zeros(len(ids), s, dtype=torch.bool, device=dev)
        for i, row in enumerate(ids):
            tok[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = True
        with torch.no_grad():
            emb = self.embed(tok)
        return ids, emb, mask

    def run_former(self, batch: EmoQBatch, text=None) -> FormerOutput:
        _, emb, mask = text if text is not None else self._text(batch)
        dev = batch.frames.device.type
        # former.dtype=bfloat16: inference in bf16 autocast; training keeps float32 (the bf16 path is for labeling)
        low = self.cfg.former.dtype == "bfloat16" and not self.former.training
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=low):
            out = self.former(batch.frames, batch.mask, emb, mask)
        return FormerOutput(out.queries.float(), out.pooled.float(), out.logits.float()) if low else out

    def prompt_embeds(
        self,
        batch: EmoQBatch,
        targets: Sequence[int] | torch.Tensor | None = None,
        former_out: FormerOutput | None = None,
    ) -> PromptBatch:
        """Per-example soft-prompt embeddings (``[T_i, H]``, the LLM's dtype); with ``targets`` also labels."""
        text = self._text(batch)
        fo = former_out if former_out is not None else self.run_former(batch, text)
        return build_prompt_embeds(self.prompt, self.embed, self.former.project(fo.queries), text[0], targets)


class EmoQModel(EmoQFrontEnd):
    """The full model for training and HF prediction."""

    def __init__(self, cfg: EmoQConfig, with_encoder: bool = False, adapter_dir=None):
        """``with_encoder`` loads the speech encoder (raw-audio input); ``adapter_dir`` loads a saved LoRA adapter
        instead of a fresh one."""
        from emoq_model.llm import attach_lora, load_causal_lm, load_tokenizer

        tokenizer = load_tokenizer(cfg.llm)
        llm = load_causal_lm(cfg.llm)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 1)
            llm = attach_lora(llm, cfg.lora, adapter_dir)
        enc = SpeechEncoder(cfg.encoder) if with_encoder else None
        super().__init__(cfg, tokenizer, llm.get_input_embeddings(), enc, own_embed=False)
        self.llm = llm
        self.mal = MALoss(cfg.loss, len(self.label_names)).to(self.device)
        self.stage: int | None = None
        steps.set_stage(self, 1)

    # ------------------------------------------------------------------------------------------ training

    def set_class_counts(self, counts: Sequence[int]) -> None:
        """Training-set label counts (focal alpha for ``loss.alpha="auto"``)."""
        self.mal.set_class_counts(counts)

    def set_stage(self, stage: int) -> None:
        """Freeze everything but what ``stage`` trains and set train/eval modes. Call before building the
        optimizer and before wrapping in DDP."""
        steps.set_stage(self, stage)

    def trainable_parameters(self, stage: int) -> list[nn.Parameter]:
        return [p for _, p in steps.trainable_named_parameters(self, stage)]

    def stage_step(self, batch: EmoQBatch, stage: int) -> dict[str, torch.Tensor]:
        """Loss dict of one training step (``loss`` for backward + detached metrics)."""
        if self.stage != stage:
            self.set_stage(stage)
        batch = batch.to(self.device)
        return steps.stage1_step(self, batch) if stage == 1 else steps.stage2_step(self, batch)

    def forward(self, batch: EmoQBatch, stage: int) -> dict[str, torch.Tensor]:
        return self.stage_step(batch, stage)

    def train(self, mode: bool = True) -> EmoQModel:
        super().train(mode)
        if mode and getattr(self, "stage", None) is not None:
            steps.apply_modes(self, self.stage)
        return self

    # ------------------------------------------------------------------------------------------ prediction

    @torch.no_grad()
    def predict_proba(self, batch: EmoQBatch) -> torch.Tensor:
        """``[B, n_labels]``: softmax over the LLM's logits of the label tokens at the answer position."""
        was_training = self.training
        self.eval()
        try:
            prompts = self.prompt_embeds(batch.to(self.device))
            x, mask, _ = pad_prompts(prompts)
            pos = torch.stack([torch.arange(len(prompts.embeds)), torch.tensor(prompts.prompt_lengths) - 1], 1)
            from emoq_model.llm import answer_logits

            logits = answer_logits(self.llm, x, mask, pos.to(x.device))
            return torch.softmax(logits[:, self.prompt.label_ids], dim=-1).cpu()
        finally:
            self.train(was_training)

    def predict(self, batch: EmoQBatch) -> list[str]:
        return [self.label_names[i] for i in self.predict_proba(batch).argmax(-1).tolist()]
