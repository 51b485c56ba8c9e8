"""Optional ASR stage: transcripts for the text branch of bundles trained with text.

Runs any local Whisper checkpoint (``WhisperForConditionalGeneration``; the converted tiny.en here) on the
segments that have no transcript yet (the manifest's transcripts win). Segments are batched by length; audio is
resampled to 16 kHz if the encoder rate differs. The transcript used ends up in the output's ``transcript``.
"""
from __future__ import annotations

import json

import numpy as np
import torch

from pipeline import audio
from pipeline.prepare import split_segments
from pipeline.stages import _cols, _rows, length_batches

WHISPER_RATE = 16000


def bundle_uses_text(bundle_dir: str) -> bool:
    """True when the bundle's model reads transcripts (Former text fusion or transcript tokens in the prompt)."""
    from emoq_model.bundle import bundle_config

    cfg = bundle_config(bundle_dir)
    return cfg.former.text_fusion != "none" or bool(cfg.prompt.include_transcript)


class Transcribe:
    """``map_batches`` callable: fill missing segment transcripts with greedy Whisper decoding."""

    def __init__(self, model_path: str, sample_rate: int, device: str | None = None, batch_size: int = 16,
                 max_new_tokens: int = 96):
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.processor = WhisperProcessor.from_pretrained(model_path)
        self.model = WhisperForConditionalGeneration.from_pretrained(model_path, use_safetensors=True)
        self.model.to(self.device).eval()
        self.rate, self.batch_size, self.max_new_tokens = sample_rate, batch_size, max_new_tokens

    @torch.inference_mode()
    def transcribe(self, waves: list[np.ndarray]) -> list[str]:
        waves = [audio.resample(w, self.rate, WHISPER_RATE) for w in waves]
        out = [""] * len(waves)
        for idx in length_batches([len(w) for w in waves], self.batch_size, 10**12):
            feats = self.processor.feature_extractor([waves[i] for i in idx], sampling_rate=WHISPER_RATE,
                                                     return_tensors="pt")
            ids = self.model.generate(feats.input_features.to(self.device), max_new_tokens=self.max_new_tokens)
            for i, text in zip(idx, self.processor.batch_decode(ids, skip_special_tokens=True)):
                out[i] = text.strip()
        return out

    def __call__(self, batch: dict) -> dict:
        rows = _rows(batch)
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
        return _cols(rows, list(rows[0]) if rows else [])
