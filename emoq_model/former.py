"""EmoQ-Former: learnable queries over frozen speech frames (BLIP-2 Q-Former), optional transcript fusion.

* Speech: the queries cross-attend to the (layer-weighted, layer-normed) encoder frames with the frame mask.
* Text (``text_fusion="concat"``): transcript token embeddings (contextual states of a frozen text encoder such
  as MiniLM when ``text_encoder`` is set, else the LLM's frozen embedding table; projected to the Former width,
  plus a learned position embedding) are appended to the queries as ``query_embeds``;
  ``query_length`` = number of queries, so queries and text share self-attention (text padding masked), only the
  query positions cross-attend to speech and use the query feed-forward, and only they are read out.
* Heads: ``projector`` (Linear + LayerNorm) to the LLM width for the soft prompt; ``aux_head`` (Linear) on the
  mean-pooled queries for the focal part of MAL.

The Former is kept in float32 (as BLIP-2 keeps its Q-Former); inputs of other dtypes are cast.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from emoq_model.config import FormerConfig


class LayerWeights(nn.Module):
    """Learned softmax-weighted sum over stacked encoder layers ``[L, B, T, D] -> [B, T, D]``."""

    def __init__(self, num_layers: int):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_layers))

    def forward(self, stacked: torch.Tensor) -> torch.Tensor:
        if stacked.shape[0] != self.logits.shape[0]:
            raise ValueError(f"expected {self.logits.shape[0]} stacked layers, got {stacked.shape[0]}")
        w = torch.softmax(self.logits, 0).to(stacked.dtype)
        return torch.einsum("l,lbtd->btd", w, stacked)

    @property
    def weights(self) -> torch.Tensor:
        return torch.softmax(self.logits.detach(), 0)


def time_mask(mask: torch.Tensor, fraction: float, span: int) -> torch.Tensor:
    """``mask`` ``[B, T]`` (True = valid frame) with spans of ``span`` frames hidden, starting at each valid frame
    with probability ``fraction / span`` (so about ``fraction`` of the frames, less where spans overlap, as in
    wav2vec 2.0's time masking); every item keeps at least one valid frame."""
    starts = (torch.rand(mask.shape, device=mask.device) < fraction / span) & mask
    padded = torch.nn.functional.pad(starts[:, None].float(), (span - 1, 0))
    hidden = torch.nn.functional.max_pool1d(padded, span, stride=1)[:, 0].bool()  # a span started in (t - span, t]
    out = mask & ~hidden
    empty = ~out.any(1)
    return torch.where(empty[:, None], mask, out)


@dataclass
class FormerOutput:
    queries: torch.Tensor  # [B, Q, H] Former output at the query positions
    pooled: torch.Tensor  # [B, H] mean over queries (MAL embedding, before L2 normalisation)
    logits: torch.Tensor  # [B, C] aux head


class EmoQFormer(nn.Module):
    """Queries + Q-Former + projector + aux head (+ layer weights, + transcript projection)."""

    def __init__(
        self,
        cfg: FormerConfig,
        encoder_dim: int,
        llm_dim: int,
        num_labels: int,
        num_encoder_layers: int = 1,
        text_dim: int | None = None,
        max_text_tokens: int = 64,
        llm_embed_rms: float | None = None,
        prosody_dims: int = 0,
    ):
        """``num_encoder_layers`` > 1 adds :class:`LayerWeights` (stacked ``[L, B, T, D]`` input); ``text_dim`` (the
        LLM embedding width) is required for ``text_fusion="concat"``; ``llm_embed_rms`` scales the projector's
        LayerNorm so soft prompts start at the size of the LLM's token embeddings; the last ``prosody_dims`` of the
        ``encoder_dim`` channels are prosody tracks, kept out of the encoder channels' LayerNorm (their scales are
        unrelated)."""
        super().__init__()
        from transformers import Blip2QFormerConfig, Blip2QFormerModel

        self.cfg = cfg
        self.text_fusion = cfg.text_fusion
        self.layer_weights = LayerWeights(num_encoder_layers) if num_encoder_layers > 1 else None
        self.prosody_dims = int(prosody_dims)
        self.encoder_norm = nn.LayerNorm(encoder_dim - self.prosody_dims)
        # prosody channels: a learned scale and shift each (a LayerNorm across unrelated quantities would mix them)
        self.prosody_scale = nn.Parameter(torch.ones(self.prosody_dims)) if self.prosody_dims else None
        self.prosody_shift = nn.Parameter(torch.zeros(self.prosody_dims)) if self.prosody_dims else None
        qcfg = Blip2QFormerConfig(
            hidden_size=cfg.hidden,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            intermediate_size=cfg.intermediate,
            hidden_dropout_prob=cfg.dropout,
            attention_probs_dropout_prob=cfg.dropout,
            cross_attention_frequency=cfg.cross_attention_frequency,
            encoder_hidden_size=encoder_dim,
            use_qformer_text_input=cfg.text_fusion == "concat",  # adds the text positions' feed-forward
            layer_norm_eps=1e-12,
        )
        self.qformer = Blip2QFormerModel(qcfg)
        self.queries = nn.Parameter(torch.randn(1, cfg.num_queries, cfg.hidden) * qcfg.initializer_range)
        if cfg.text_fusion == "concat":
            if text_dim is None:
                raise ValueError("text_fusion='concat' needs text_dim (the LLM embedding width)")
            self.text_proj = nn.Linear(text_dim, cfg.hidden)
            self.text_pos = nn.Embedding(max(1, max_text_tokens), cfg.hidden)
            nn.init.normal_(self.text_pos.weight, std=qcfg.initializer_range)
        else:
            self.text_proj = None
            self.text_pos = None
        self.projector = nn.Sequential(nn.Linear(cfg.hidden, llm_dim), nn.LayerNorm(llm_dim))
        if llm_embed_rms is not None:
            with torch.no_grad():
                self.projector[1].weight.fill_(float(llm_embed_rms))
        self.aux_head = nn.Linear(cfg.hidden, num_labels)
        # leading channel-statistics frames (FeatureNorm.stats_frames): a learned type embedding tells them apart
        if cfg.stats_frames:
            from emoq_model.features import N_STATS_FRAMES

            self.stats_type = nn.Parameter(torch.randn(N_STATS_FRAMES, encoder_dim) * 0.5)
        else:
            self.stats_type = None

    def init_from_text_encoder(self, path: str) -> list[str]:
        """BLIP-2 initialisation of the Q-Former from a BERT-family checkpoint (see
        :func:`emoq_model.text_encoder.init_qformer_from_text_encoder`); the transcript projection starts as the
        identity, so text positions enter in the encoder's own space. Returns the initialised parameter names."""
        from emoq_model.text_encoder import init_qformer_from_text_encoder

        names = init_qformer_from_text_encoder(self.qformer, path)
        if self.text_proj is not None and self.text_proj.in_features == self.text_proj.out_features:
            with torch.no_grad():
                self.text_proj.weight.copy_(torch.eye(self.text_proj.in_features))
                self.text_proj.bias.zero_()
        return names

    def unused_parameter_names(self) -> set[str]:
        """Parameters that never receive gradients: with text fusion, the last Q-Former layer's feed-forward for
        the text positions (only query positions are read out). Kept for checkpoint compatibility, never
        trained (DDP would otherwise need ``find_unused_parameters``)."""
        if self.text_fusion != "concat":
            return set()
        last = f"qformer.encoder.layer.{len(self.qformer.encoder.layer) - 1}"
        return {n for n, _ in self.named_parameters() if n.startswith((f"{last}.intermediate.", f"{last}.output."))}

    @property
    def num_queries(self) -> int:
        return self.queries.shape[1]

    def forward(
        self,
        frames: torch.Tensor,
        frame_mask: torch.Tensor,
        text_embeds: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> FormerOutput:
        """``frames``: ``[B, T, D]`` or stacked ``[L, B, T, D]``; ``frame_mask``: ``[B, T]`` (True = valid);
        ``text_embeds``: ``[B, S, text_dim]`` LLM token embeddings with ``text_mask`` ``[B, S]`` (ignored when
        ``text_fusion="none"``)."""
        dev = self.queries.device
        frames = frames.to(dev, torch.float32)
        if frames.dim() == 4:
            if self.layer_weights is None:
                if frames.shape[0] != 1:
                    raise ValueError("stacked encoder layers given but the Former has no layer weights")
                frames = frames[0]
            else:
                frames = self.layer_weights(frames)
        elif self.layer_weights is not None:
            raise ValueError("the Former weights encoder layers: give stacked frames [L, B, T, D]")
        if not self.prosody_dims:
            frames = self.encoder_norm(frames)
        else:
            k = self.prosody_dims
            pros = frames[..., -k:] * self.prosody_scale + self.prosody_shift
            frames = torch.cat([self.encoder_norm(frames[..., :-k]), pros], -1)
        b = frames.shape[0]
        n_stats = 0 if self.stats_type is None else self.stats_type.shape[0]
        if n_stats:  # the leading statistics frames, typed
            frames = torch.cat([frames[:, :n_stats] + self.stats_type, frames[:, n_stats:]], 1)
        if self.training and self.cfg.time_mask > 0:
            kept = frame_mask.to(dev).bool()
            frame_mask = time_mask(kept, self.cfg.time_mask, self.cfg.time_mask_span)
            frame_mask[:, :n_stats] = kept[:, :n_stats]  # statistics frames are never masked
        if not self.cfg.use_speech:  # text-only ablation: one constant frame instead of the speech
            frames, frame_mask = torch.zeros_like(frames[:, :1]), torch.ones(b, 1, dtype=torch.bool, device=dev)
        q = self.queries.expand(b, -1, -1)
        n_q = q.shape[1]
        attn = None
        if self.text_fusion == "concat" and text_embeds is not None and text_embeds.shape[1] > 0:
            s = text_embeds.shape[1]
            if s > self.text_pos.num_embeddings:
                raise ValueError(f"{s} transcript tokens > max {self.text_pos.num_embeddings}")
            text = self.text_proj(text_embeds.to(dev, torch.float32)) + self.text_pos.weight[:s]
            if text_mask is None:
                text_mask = torch.ones(b, s, dtype=torch.bool, device=dev)
            q = torch.cat([q, text], dim=1)
            attn = torch.cat([torch.ones(b, n_q, dtype=torch.long, device=dev), text_mask.to(dev).long()], dim=1)
        # The cross-attention mask goes in prepared ([B, 1, 1, T], additive): Blip2QFormerModel would otherwise
        # shape it for all Q + S positions although only the Q query positions cross-attend.
        cross = torch.zeros(frame_mask.shape, dtype=frames.dtype, device=dev)
        cross = cross.masked_fill(~frame_mask.to(dev).bool(), torch.finfo(frames.dtype).min)[:, None, None, :]
        out = self.qformer(
            query_embeds=q,
            query_length=n_q,
            attention_mask=attn,
            encoder_hidden_states=frames,
            encoder_attention_mask=cross,
        )
        queries = out.last_hidden_state[:, :n_q]
        pooled = queries.mean(1)
        return FormerOutput(queries=queries, pooled=pooled, logits=self.aux_head(pooled))

    def project(self, queries: torch.Tensor) -> torch.Tensor:
        """Former queries ``[B, Q, H]`` -> soft-prompt embeddings ``[B, Q, llm_dim]`` (float32)."""
        return self.projector(queries)
