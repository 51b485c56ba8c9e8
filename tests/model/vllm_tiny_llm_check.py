"""Run the tiny Qwen2 in a real vLLM engine and dump what it generates (used by tests/model/test_assets_llm.py).

Runs as a script (``python tests/model/vllm_tiny_llm_check.py MODEL_DIR OUT_JSON``): vLLM spawns engine processes,
which needs the ``__main__`` guard, and keeping the engine out of the pytest process keeps its threads and
``torch`` settings out of the other tests. One engine start serves every check:

* greedy generation from token ids, from text and from ``{"prompt_embeds": embed_tokens[ids]}``;
* constrained decoding with ``StructuredOutputsParams(choice=labels)`` from prompt embeddings;
* one-step decoding restricted to the label tokens (``allowed_token_ids`` + ``logprob_token_ids``) from
  prompt embeddings.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

USER_TEXTS = [
    "How does the speaker feel?",
    "Classify the emotion of this utterance: I can't believe you did that again!",
    "Transcript: we won the match last night. What is the emotion?",
    "Transcript: my dog died yesterday. Answer with one word.",
    "Is the speaker calm or upset? 12345 numbers, ça va?",
    "Label the call segment. Customer: this is the third time I've called about my bill.",
    "Emotion of: 'Oh wow, a surprise party, for me?'",
    "Say one label. The weather is mild today and nothing happened.",
    "Speaker two sounds disgusted by the food; which emotion is it?",
    "Respond with the emotion only.",
]


def chat_prompts(tokenizer) -> list[list[int]]:
    prompts = []
    for i, text in enumerate(USER_TEXTS):
        msgs = [{"role": "user", "content": text}]
        if i % 2:
            msgs.insert(0, {"role": "system", "content": "You recognise emotions in speech."})
        ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        prompts.append(list(ids))
    return prompts


def _logprobs(step_list) -> list[dict[str, float]]:
    out = []
    for step in step_list or []:
        out.append({str(int(tid)): float(lp.logprob) for tid, lp in step.items()})
    return out


def _dump(outputs) -> list[dict]:
    rows = []
    for o in outputs:
        c = o.outputs[0]
        rows.append(
            {
                "token_ids": list(c.token_ids),
                "text": c.text,
                "finish_reason": c.finish_reason,
                "logprobs": _logprobs(c.logprobs),
            }
        )
    return rows


def main(model_dir: str, out_json: str) -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    from emoq_model.assets.paths import read_spec
    from emoq_model.assets.tiny_llm import label_token_ids

    spec = read_spec(Path(model_dir)) or {}
    labels = list(json.loads(os.environ.get("EMOQ_TEST_LABELS", "null")) or spec.get("labels")[:4])
    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = chat_prompts(tok)
    table = load_file(str(Path(model_dir) / "model.safetensors"))["model.embed_tokens.weight"]
    embeds = [table[torch.tensor(ids)].clone() for ids in prompts]

    t0 = time.perf_counter()
    llm = LLM(
        model=model_dir,
        enable_prompt_embeds=True,
        dtype="float32",
        max_model_len=256,
        enforce_eager=True,
        seed=0,
        max_num_seqs=16,
    )
    start_s = time.perf_counter() - t0

    greedy = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, logprobs=5)
    t0 = time.perf_counter()
    by_ids = llm.generate([{"prompt_token_ids": ids} for ids in prompts], greedy, use_tqdm=False)
    by_text = llm.generate([tok.decode(ids) for ids in prompts], greedy, use_tqdm=False)
    by_embeds = llm.generate([{"prompt_embeds": e} for e in embeds], greedy, use_tqdm=False)
    greedy_s = time.perf_counter() - t0

    choice = SamplingParams(
        temperature=0.0,
        max_tokens=16,
        structured_outputs=StructuredOutputsParams(choice=labels),
        logprobs=len(labels),
    )
    t0 = time.perf_counter()
    by_choice = llm.generate([{"prompt_embeds": e} for e in embeds], choice, use_tqdm=False)
    choice_s = time.perf_counter() - t0

    ids = label_token_ids(tok, labels)
    # One decode step over the label tokens only; logprob_token_ids returns every label's raw logprob.
    one_step = SamplingParams(temperature=0.0, max_tokens=1, allowed_token_ids=ids, logprob_token_ids=ids)
    by_allowed = llm.generate([{"prompt_embeds": e} for e in embeds], one_step, use_tqdm=False)

    result = {
        "labels": labels,
        "label_ids": ids,
        "prompts": prompts,
        "engine_start_s": start_s,
        "greedy_s": greedy_s,
        "choice_s": choice_s,
        "by_ids": _dump(by_ids),
        "by_text": _dump(by_text),
        "by_embeds": _dump(by_embeds),
        "by_choice": _dump(by_choice),
        "by_allowed": _dump(by_allowed),
    }
    Path(out_json).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
