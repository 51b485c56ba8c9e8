"""vLLM labeling stage: soft prompts in, one label per segment out (restricted to the label set, with the
per-label probabilities from the same decode step and the chosen label's probability as confidence).

``ray.data.llm`` cannot take prompt embeddings, so this is a callable class around ``vllm.LLM`` for
``map_batches`` (one engine per actor; ``num_gpus`` / tensor parallelism from the job config on GPU clusters).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from pipeline.faults import maybe_die
from pipeline.labeling import columns as C
from pipeline.labeling.columns import columns_of, rows_of


class LabelWithVLLM:
    columns = C.LABEL  # what the stage reads, adds and drops (checked at plan time)

    def __init__(
        self,
        bundle_dir: str,
        mode: str = "tokens",
        use_merged: bool | None = None,
        engine_overrides: dict | None = None,
        in_process: bool = False,
    ):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        if in_process:  # engine core in this actor's process: no extra EngineCore process to spawn and import
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM

        from emoq_model.bundle import read_meta
        from emoq_model.serving import engine_kwargs, lora_request

        meta = read_meta(bundle_dir)
        self.labels = list(meta["labels"])
        self.label_ids = list(meta["label_token_ids"])
        self.mode = mode
        kw = engine_kwargs(bundle_dir, use_merged=use_merged, **(engine_overrides or {}))
        kw.setdefault("load_format", "safetensors")  # weights only from safetensors, never pickled .bin files
        kw.setdefault("trust_remote_code", False)  # no code from model directories unless asked for
        self.llm = LLM(**kw)
        self.lora = None if not kw.get("enable_lora") else lora_request(bundle_dir)
        from emoq_model.calibration import load_context, load_temperature

        self.temperature = load_temperature(bundle_dir)  # fitted on validation at training time
        self.context = load_context(bundle_dir)  # conversation context, fitted on validation calls (off if absent)

    def __call__(self, batch: dict) -> dict:
        from emoq_model.serving import classify

        rows = rows_of(batch)
        prompts, counts = [], []  # each recording's segments are contiguous in ``prompts``
        groups, starts, ends = [], [], []  # each segment's channel of its recording, and its span
        for i, row in enumerate(rows):
            emb, off = row["prompt_embeds"], row["prompt_offsets"]
            counts.append(len(off) - 1)
            groups += [f"{i}:{c}" for c in np.asarray(row["seg_channel"]).tolist()]
            starts += np.asarray(row["seg_start_s"], dtype=np.float64).tolist()
            ends += np.asarray(row["seg_end_s"], dtype=np.float64).tolist()
            prompts += [torch.from_numpy(np.array(emb[off[s] : off[s + 1]])) for s in range(len(off) - 1)]  # own copy
        n_lab = len(self.labels)
        if prompts:
            from emoq_model.calibration import apply_temperature

            scores = classify(self.llm, prompts, self.label_ids, self.labels, self.lora, self.mode)
            probs = self.context.apply(scores.probs, groups, starts, ends)  # the channel's other segments
            probs = apply_temperature(probs, self.temperature)  # same argmax, calibrated confidence
            index = probs.argmax(1)
            names = [self.labels[j] for j in index]
            confidence = probs[np.arange(len(probs)), index]
        maybe_die("label")  # fault injection for the reliability tests (no-op unless EMOQ_FAULTS_DIR is set)
        start = 0
        for row, n in zip(rows, counts):
            sl = slice(start, start + n)
            start += n
            row["labels"] = names[sl] if n else []
            row["confidence"] = confidence[sl].astype(np.float32) if n else np.zeros(0, np.float32)
            row["probabilities"] = probs[sl].astype(np.float32) if n else np.zeros((0, n_lab), np.float32)
            # the LLM's probability mass on the label tokens: low = the prompt is unlike anything in training
            row["label_mass"] = scores.label_mass[sl].astype(np.float32) if n else np.zeros(0, np.float32)
            row.pop("prompt_embeds", None)
            row.pop("prompt_offsets", None)
        keys = [k for k in rows[0]] if rows else []
        return columns_of(rows, keys)


class EncodeAndLabel:
    """Encoder, EmoQ-Former and vLLM in one actor (``LabelJobConfig.fuse_model_stages``).

    For deployments where one device holds both models (a single GPU, or a CPU-only machine): the stages take
    turns on the whole device instead of splitting it, and the soft prompts never leave the process. With
    separate pools (the default) each stage scales on its own devices and nodes.
    """

    columns = C.ENCODE_AND_LABEL

    def __init__(self, encode_kwargs: dict, label_kwargs: dict):
        from pipeline.labeling.encode import EncodePrompts

        self.encode = EncodePrompts(**encode_kwargs)
        self.label = LabelWithVLLM(**label_kwargs)

    def __call__(self, batch: dict) -> dict:
        return self.label(self.encode(batch))
