"""The soft prompt, built by ONE function for HF training/prediction and for vLLM serving.

Sequence per example (chat-formatted with the LLM's own chat template, fixed instruction first)::

    [<chat prefix> system + user turn start + instruction + speech_intro]  (token ids cached)
    [projected queries]                                                     (Q soft tokens)
    [transcript_intro + transcript tokens]                                  (optional, per example)
    [<end of user turn> <assistant turn start> answer_prefix]               (token ids cached)
    [label token] [end-of-turn token]                                       (training only)

:func:`build_prompt_embeds` returns one ``[T_i, H]`` tensor per example (the vLLM ``prompt_embeds`` as is) and,
with targets, the training labels (``-100`` everywhere except the label and end-of-turn tokens);
:func:`pad_prompts` right-pads them into ``inputs_embeds`` / ``attention_mask`` / ``labels`` for HF.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from emoq_model.config import LabelConfig, PromptConfig

IGNORE_INDEX = -100
_SPEECH = "<<<EMOQ_SPEECH>>>"
_TEXT = "<<<EMOQ_TRANSCRIPT>>>"
_ANSWER = "<<<EMOQ_ANSWER>>>"


@dataclass
class PromptBatch:
    embeds: list[torch.Tensor]  # [T_i, H] per example
    prompt_lengths: list[int]  # tokens before the answer (= len(embeds[i]) without targets)
    labels: list[torch.Tensor] | None = None  # [T_i] with IGNORE_INDEX outside the answer (training only)


class PromptBuilder:
    """Token ids of the fixed prompt parts (cached at construction), label ids and transcript tokenisation."""

    def __init__(self, tokenizer, prompt: PromptConfig, labels: LabelConfig):
        self.tokenizer = tokenizer
        self.cfg = prompt
        self.label_names = list(labels.names)
        self.label_ids = [self._single(labels.token_prefix + n) for n in labels.names]
        instruction = prompt.instruction.replace("{labels}", ", ".join(labels.names))
        user = instruction + prompt.speech_intro + _SPEECH + _TEXT
        if getattr(tokenizer, "chat_template", None):
            msgs = [{"role": "system", "content": prompt.system}] if prompt.system else []
            msgs.append({"role": "user", "content": user})
            text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            turn = tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": _ANSWER}], tokenize=False)
            after = turn.split(_ANSWER, 1)[1] if _ANSWER in turn else ""
        else:  # plain LM: no chat markup
            text = ((prompt.system + "\n\n") if prompt.system else "") + user + "\nAnswer: "
            after = ""
        if text.count(_SPEECH) != 1 or text.count(_TEXT) != 1:
            raise ValueError("the chat template dropped or repeated the prompt content")
        prefix, rest = text.split(_SPEECH)
        middle, suffix = rest.split(_TEXT)
        if middle:
            raise ValueError(f"unexpected text between speech and transcript markers: {middle!r}")
        self.prefix_ids = self._encode(prefix)
        self.suffix_ids = self._encode(suffix + prompt.answer_prefix)
        self.transcript_intro_ids = self._encode(prompt.transcript_intro)
        self.end_id = self._end_of_turn(after)

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False)) if text else []

    def _single(self, text: str) -> int:
        ids = self._encode(text)
        if len(ids) != 1:
            raise ValueError(
                f"label {text!r} is {len(ids)} tokens {self.tokenizer.convert_ids_to_tokens(ids)}; "
                "labels must be single tokens"
            )
        return ids[0]

    def _end_of_turn(self, after_answer: str) -> int:
        """The token the chat template puts right after the assistant's answer if special, else eos."""
        ids = self._encode(after_answer)
        special = set(self.tokenizer.all_special_ids)
        if ids and ids[0] in special:
            return ids[0]
        if self.tokenizer.eos_token_id is None:
            raise ValueError("tokenizer has no eos token")
        return int(self.tokenizer.eos_token_id)

    def transcript_ids(self, transcripts: Sequence[str | None] | None, n: int) -> list[list[int]]:
        """Token ids per transcript (truncated to ``max_transcript_tokens``); ``[]`` for None / empty."""
        if transcripts is None:
            return [[] for _ in range(n)]
        if len(transcripts) != n:
            raise ValueError(f"{len(transcripts)} transcripts for {n} examples")
        m = self.cfg.max_transcript_tokens
        return [self._encode_text(t.strip())[:m] if t and t.strip() and m > 0 else [] for t in transcripts]

    def _encode_text(self, text: str) -> list[int]:
        """User text (transcripts): special-token strings such as ``<|im_end|>`` stay plain text, so a transcript
        cannot inject chat-control tokens."""
        return list(self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    @property
    def fixed_length(self) -> int:
        """Prompt tokens besides queries and transcript."""
        return len(self.prefix_ids) + len(self.suffix_ids)


def build_prompt_embeds(
    builder: PromptBuilder,
    embed: torch.nn.Module,
    queries: torch.Tensor,
    transcript_ids: Sequence[Sequence[int]] | None = None,
    targets: Sequence[int] | torch.Tensor | None = None,
) -> PromptBatch:
    """The soft-prompt sequences. ``embed``: the LLM's input embedding module; ``queries``: projected queries
    ``[B, Q, H]``; ``transcript_ids`` (per example, may be empty) are inserted only if
    ``prompt.include_transcript``; ``targets`` (label indices) append ``[label, end-of-turn]`` and return labels.
    Embeddings come out in the embedding table's dtype and device."""
    weight = embed.weight
    dev, dt = weight.device, weight.dtype
    b = queries.shape[0]

    def emb(ids: Sequence[int]) -> torch.Tensor:
        return embed(torch.as_tensor(list(ids), dtype=torch.long, device=dev)).to(dt)

    prefix, suffix = emb(builder.prefix_ids), emb(builder.suffix_ids)
    use_text = builder.cfg.include_transcript and transcript_ids is not None
    intro = emb(builder.transcript_intro_ids) if use_text else None
    out, lengths, labels = [], [], ([] if targets is not None else None)
    for i in range(b):
        parts = [prefix, queries[i].to(dev, dt)]
        if use_text and len(transcript_ids[i]) > 0:
            parts += [intro, emb(transcript_ids[i])]
        parts.append(suffix)
        n_prompt = sum(p.shape[0] for p in parts)
        if targets is not None:
            answer = [builder.label_ids[int(targets[i])], builder.end_id]
            parts.append(emb(answer))
            lab = torch.full((n_prompt + len(answer),), IGNORE_INDEX, dtype=torch.long, device=dev)
            lab[n_prompt:] = torch.tensor(answer, device=dev)
            labels.append(lab)
        out.append(torch.cat(parts, 0))
        lengths.append(n_prompt)
    return PromptBatch(out, lengths, labels)


def pad_prompts(prompts: PromptBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Right-pad to ``inputs_embeds [B, T, H]``, ``attention_mask [B, T]`` and ``labels [B, T]`` (or None)."""
    seqs = prompts.embeds
    t = max(s.shape[0] for s in seqs)
    x = seqs[0].new_zeros(len(seqs), t, seqs[0].shape[1])
    mask = torch.zeros(len(seqs), t, dtype=torch.long, device=x.device)
    labels = (
        None if prompts.labels is None else torch.full((len(seqs), t), IGNORE_INDEX, dtype=torch.long, device=x.device)
    )
    for i, s in enumerate(seqs):
        x[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = 1
        if labels is not None:
            labels[i, : s.shape[0]] = prompts.labels[i]
    return x, mask, labels
