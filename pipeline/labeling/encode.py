"""Model stages of the labeling pipeline as Ray Data ``map_batches`` callables (one instance per actor).

:class:`EncodePrompts` runs the frozen speech encoder and the EmoQ-Former on every segment of a batch of prepared
recordings and builds the soft prompts with the model package's one prompt function; :class:`LabelWithVLLM`
(``pipeline.labeling.label``) turns those into labels. Both keep recordings whole: one row in, one row out.
"""

from __future__ import annotations

import json
import math

import numpy as np
import torch

from pipeline.faults import maybe_die
from pipeline.labeling import columns as C
from pipeline.labeling.columns import columns_of, rows_of
from pipeline.labeling.prepare import split_segments


def length_batches(
    lengths: list[int], max_items: int, max_samples: int, overhead: float | None = None
) -> list[list[int]]:
    """Indices grouped into batches of similar length, bounded by items and padded samples (``max_items`` items of
    the batch's longest length); a single item longer than ``max_samples`` gets a batch of its own.

    ``overhead`` None: the sorted lengths fill each batch in turn. Otherwise the split of the sorted lengths that
    minimises the encoder's cost, modelled as each batch's padded samples plus ``overhead`` samples per batch
    (the fixed cost of one forward call): few, full batches where lengths are alike, and no short segment padded
    to a long one's length where they are not.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    if overhead is None:
        out, cur = [], []
        for i in order:
            if cur and (len(cur) >= max_items or lengths[i] * (len(cur) + 1) > max_samples):
                out.append(cur)
                cur = []
            cur.append(i)
        return out + [cur] if cur else out
    sl = [lengths[i] for i in order]
    best, cut = [0.0] + [math.inf] * len(sl), [0] * (len(sl) + 1)
    for j in range(1, len(sl) + 1):  # best[j]: cheapest split of the j shortest; the last batch is sl[i:j]
        for i in range(j - 1, max(0, j - max_items) - 1, -1):
            if j - i > 1 and sl[j - 1] * (j - i) > max_samples:
                break
            cost = best[i] + sl[j - 1] * (j - i) + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    out, j = [], len(sl)
    while j:
        out.append(order[cut[j] : j])
        j = cut[j]
    return out[::-1]


def held_parts(owner: list[int], lengths: list[int], max_samples: int) -> list[list[int]]:
    """Segment indices (``owner[i]``: the recording of segment i) in parts of whole recordings of at most
    ``max_samples`` samples each; a longer recording is a part of its own."""
    by_rec: dict[int, list[int]] = {}
    for i, r in enumerate(owner):
        by_rec.setdefault(r, []).append(i)
    parts, cur, size = [], [], 0
    for idx in by_rec.values():
        n = sum(lengths[i] for i in idx)
        if cur and size + n > max_samples:
            parts.append(cur)
            cur, size = [], 0
        cur, size = cur + idx, size + n
    return parts + [cur] if cur else parts


class EncodePrompts:
    """Speech encoder + EmoQ-Former + soft-prompt construction for every segment of each recording.

    Output per recording: ``prompt_embeds`` (all segments' ``[T_i, H]`` prompts stacked, float32 or the LLM's
    dtype) and ``prompt_offsets`` (``n_segments + 1`` row offsets). The raw ``audio`` column is dropped.

    ``asr_model`` (shared-encoder ASR; the bundle's encoder must be that Whisper checkpoint): segments without a
    transcript get one decoded from the encoder states computed here (:class:`pipeline.labeling.asr.WhisperDecoder`),
    the Former reads it, and ``seg_transcript`` carries it to the output.
    """

    columns = C.ENCODE  # what the stage reads, adds and drops (checked at plan time)

    def __init__(
        self,
        bundle_dir: str,
        device: str | None = None,
        max_batch_segments: int = 32,
        max_batch_seconds: float = 240.0,
        batch_overhead_s: float | None = None,
        max_held_seconds: float = 600.0,
        num_threads: int | None = None,
        asr_model: str | None = None,
        overrides: list[str] | None = None,
        asr_dtype: str = "auto",
    ):
        if num_threads:
            torch.set_num_threads(num_threads)
        from emoq_model.bundle import load_bundle
        from emoq_model.features import FeatureNorm

        # overrides: deployment precision (encoder.dtype, former.dtype), validated by LabelJobConfig
        self.front = load_bundle(bundle_dir, device=device, load_llm=False, with_encoder=True, overrides=overrides)
        self.norm = FeatureNorm.load(bundle_dir)  # what the bundle was trained with (per speaker = per channel here)
        self.sample_rate = self.front.encoder.sample_rate
        self.max_items = max_batch_segments
        self.max_samples = int(max_batch_seconds * self.sample_rate)
        if batch_overhead_s is None:  # fixed cost of one encoder call, in seconds of audio (see BENCHMARKS.md)
            batch_overhead_s = 1.0 if self.front.device.type == "cpu" else 150.0
        self.overhead = batch_overhead_s * self.sample_rate
        self.max_held_samples = int(max_held_seconds * self.sample_rate)
        self.decoder = None
        if asr_model:
            from pipeline.labeling.asr import WhisperDecoder

            if self.front.encoder.family != "whisper":
                raise ValueError(
                    f"shared-encoder ASR needs a Whisper encoder; the bundle's is {self.front.encoder.family}"
                )
            self.decoder = WhisperDecoder(asr_model, device=str(self.front.encoder.device), dtype=asr_dtype)

    @torch.inference_mode()
    def encode(
        self, waves: list[np.ndarray], transcripts: list[str | None], groups: list[str] | None = None
    ) -> list[torch.Tensor]:
        """Prompt embeddings ``[T_i, H]`` per segment, in input order. ``groups`` names each segment's speaker
        (recording + channel) for the bundle's per-speaker feature normalisation.

        Per-speaker statistics need all of a speaker's segments before any can be normalised. Up to
        ``max_held_seconds`` of speech (``__call__`` hands over parts of whole recordings of at most that), every
        segment's encoder states are held until then (one encoder pass); above it (one longer recording), a first
        encoder pass only accumulates the statistics and a second one normalises and runs the
        Former batch by batch, so memory stays at one batch of states (a 1-hour call's stacked HuBERT-large
        layers would be ~18 GB). Without per-speaker normalisation every block streams batch by batch.
        With shared-encoder ASR, missing entries of ``transcripts`` are filled in place.
        """
        from emoq_model.features import StatsAccumulator

        groups = groups or ["all"] * len(waves)
        batches = length_batches([len(w) for w in waves], self.max_items, self.max_samples, self.overhead)
        out: list[torch.Tensor | None] = [None] * len(waves)
        stats = None
        if self.norm.mode == "speaker":
            if sum(len(w) for w in waves) <= self.max_held_samples:
                items: list[dict] = [{}] * len(waves)
                pending: dict[int, torch.Tensor] = {}  # shared ASR: decoded once all are in (fuller decoder batches)
                for idx in batches:  # encoder states of every segment, held (on the encoder's device)
                    for i, item in zip(idx, self._encode_batch(idx, waves, transcripts, groups, pending=pending)):
                        items[i] = item
                if pending:
                    for i, text in zip(pending, self.decoder.transcribe_frames(list(pending.values()))):
                        transcripts[i] = items[i]["transcript"] = text or None
                items = self.norm.apply(items)  # statistics over each speaker's segments, then normalised
                for idx in batches:
                    self._former(idx, [items[i] for i in idx], out)
                return out
            acc: dict[str, StatsAccumulator] = {}
            for idx in batches:  # pass 1: statistics only
                for i, item in zip(idx, self._encode_batch(idx, waves, transcripts, groups, transcribe=False)):
                    acc.setdefault(groups[i], StatsAccumulator()).add(item["frames"])
            stats = {g: a.result() for g, a in acc.items()}
        for idx in batches:  # streaming: encoder, normalisation (given statistics or per utterance), Former
            self._former(idx, self.norm.apply(self._encode_batch(idx, waves, transcripts, groups), stats), out)
        return out

    def _encode_batch(
        self, idx: list[int], waves, transcripts, groups, transcribe: bool = True, pending: dict | None = None
    ) -> list[dict]:
        """Encoder states of the segments ``idx``; with shared ASR, missing transcripts are decoded from them now,
        or (``pending`` given) their decoder states are left in ``pending`` for the caller to decode later."""
        enc = self.front.encoder([waves[i] for i in idx])
        need = [k for k, i in enumerate(idx) if not transcripts[i]] if self.decoder and transcribe else []
        if need and pending is not None:
            for k in need:
                pending[idx[k]] = enc.decoder_states[k, : int(enc.decoder_lengths[k])]
        elif need:  # shared-encoder ASR: the decoder reads the states just computed
            texts = self.decoder.transcribe_states(enc.decoder_states[need], enc.decoder_lengths[need].tolist())
            for k, text in zip(need, texts):
                transcripts[idx[k]] = text or None
        return [
            {
                "frames": enc.item(k).float(),
                "utt_id": str(i),
                self.norm.group_key: groups[i],
                "transcript": transcripts[i],
            }
            for k, i in enumerate(idx)
        ]

    def _former(self, idx: list[int], items: list[dict], out: list) -> None:
        from emoq_model.model import collate_features

        batch = collate_features(items)
        for i, e in zip(idx, self.front.prompt_embeds(batch.to(self.front.device)).embeds):
            out[i] = e.float().cpu()

    def __call__(self, batch: dict) -> dict:
        rows = rows_of(batch)
        waves, owner, texts, groups = [], [], [], []
        for r, row in enumerate(rows):
            segs = split_segments(row) if row.get("seg_offsets") is not None else []
            tx = json.loads(row["seg_transcript"]) if isinstance(row.get("seg_transcript"), str) else []
            for s, w in enumerate(segs):
                waves.append(w)
                owner.append(r)
                texts.append(tx[s] if s < len(tx) else None)
                groups.append(f"{row['recording_id']}\x00{int(row['seg_channel'][s])}")
        embeds: list = [None] * len(waves)
        for part in held_parts(owner, [len(w) for w in waves], self.max_held_samples):
            part_texts = [texts[i] for i in part]
            for i, e in zip(part, self.encode([waves[i] for i in part], part_texts, [groups[i] for i in part])):
                embeds[i] = e
            for i, t in zip(part, part_texts):  # shared-encoder ASR fills them
                texts[i] = t
        maybe_die("encode", [r["recording_id"] for r in rows])  # fault injection (no-op unless EMOQ_FAULTS_DIR set)
        hidden = int(self.front.embed.embedding_dim)
        per_rec: list[list[torch.Tensor]] = [[] for _ in rows]
        per_rec_text: list[list[str | None]] = [[] for _ in rows]
        for r, e, t in zip(owner, embeds, texts):
            per_rec[r].append(e)
            per_rec_text[r].append(t)
        for row, es, ts in zip(rows, per_rec, per_rec_text):
            if self.decoder is not None and es:
                row["seg_transcript"] = json.dumps(ts)
            lengths = [e.shape[0] for e in es]
            row["prompt_embeds"] = torch.cat(es).numpy() if es else np.zeros((0, hidden), np.float32)
            row["prompt_offsets"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            row.pop("audio", None)
        keys = [k for k in rows[0] if k != "audio"] if rows else []
        return columns_of(rows, keys)
