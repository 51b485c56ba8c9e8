"""The LLM stage alone: vLLM ``classify`` throughput under serving options (same prompts, same engine process run).

    .venv/bin/python bench/vllm_options.py [--n 512] [--reps 3]

Prompts: real soft prompts of the demo bundle (Former on Whisper features of real clips), replicated to ``--n``.
Options compared, each in a fresh process: base LLM + LoRA adapter (what an unmerged bundle serves) vs the merged
LLM (``save_bundle(..., merge_llm=True)``), ``max_num_seqs`` 64 / 256, mode tokens / choice.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WORK, asterisk_clips, demo_bundle, machine, run_phase, stats  # noqa: E402


def merged_bundle() -> str:
    out = WORK / "bundle_merged"
    if (out / "bundle.json").exists():
        return str(out)
    from emoq_model.bundle import save_bundle
    from emoq_model.config import demo_config_path, load_config
    from emoq_model.model import EmoQModel

    tmp = WORK / f"bundle_merged.tmp{os.getpid()}"
    save_bundle(EmoQModel(load_config(demo_config_path())), tmp, merge_llm=True)
    os.replace(tmp, out)
    return str(out)


def prompts(bundle: str, n: int) -> str:
    path = WORK / f"prompts_{n}.pt"
    if path.exists():
        return str(path)
    import torch

    from emoq_model.bundle import load_bundle
    from emoq_model.model import collate_features
    from pipeline.audio import load_mono

    front = load_bundle(bundle, load_llm=False, with_encoder=True)
    waves = [load_mono(p, 16000) for p, _ in asterisk_clips(2.0, 4.0)[:64]]
    with torch.inference_mode():
        enc = front.encoder(waves)
        items = [{"frames": enc.item(k).float().numpy()} for k in range(len(waves))]
        emb = [e.float().cpu() for e in front.prompt_embeds(collate_features(items)).embeds]
    torch.save([emb[i % len(emb)] for i in range(n)], path)
    return str(path)


def phase(a) -> dict:
    for kv in a.env:
        k, v = kv.split("=", 1)
        os.environ[k] = v
    import torch
    from vllm import LLM

    from emoq_model.bundle import read_meta
    from emoq_model.serving import classify, engine_kwargs, lora_request

    emb = torch.load(a.prompts, weights_only=True)  # our own tensors, no pickled objects
    meta = read_meta(a.bundle)
    t0 = time.perf_counter()
    kw = engine_kwargs(
        a.bundle, use_merged=a.merged, enforce_eager=True, max_model_len=1024, max_num_seqs=a.max_num_seqs
    )
    llm = LLM(**kw)
    start = time.perf_counter() - t0
    lora = lora_request(a.bundle) if kw.get("enable_lora") else None
    classify(llm, emb[:32], meta["label_token_ids"], meta["labels"], lora, a.mode)
    ts = []
    for _ in range(2):
        t0 = time.perf_counter()
        classify(llm, emb, meta["label_token_ids"], meta["labels"], lora, a.mode)
        ts.append(time.perf_counter() - t0)
    return {"engine_start_s": start, "req_per_s": len(emb) / min(ts), "times": ts}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phase", default="driver")
    ap.add_argument("--out")
    ap.add_argument("--bundle")
    ap.add_argument("--prompts")
    ap.add_argument("--merged", action="store_true")
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--mode", default="tokens")
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--variants", default="", help="comma-separated subset of the variants")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "vllm_options.json"))
    a = ap.parse_args()
    if a.phase == "run":
        Path(a.out).write_text(json.dumps(phase(a), default=float))
        return
    b, bm = demo_bundle(), merged_bundle()
    pr = prompts(b, a.n)
    variants = {
        "lora_seqs256": [b],
        "merged_seqs256": [bm, "--merged"],
        "merged_seqs64": [bm, "--merged", "--max-num-seqs", "64"],
        "merged_choice": [bm, "--merged", "--mode", "choice"],
        "merged_inprocess": [bm, "--merged", "--env", "VLLM_ENABLE_V1_MULTIPROCESSING=0"],
        "lora_inprocess": [b, "--env", "VLLM_ENABLE_V1_MULTIPROCESSING=0"],
    }
    if a.variants:
        variants = {k: v for k, v in variants.items() if k in a.variants.split(",")}
    raw: dict[str, list] = {}
    for rep in range(a.reps):
        for name, args in variants.items():
            r = run_phase(
                str(Path(__file__).resolve()),
                "run",
                WORK / "vllm_phases" / f"{name}_{rep}.json",
                "--bundle",
                args[0],
                "--prompts",
                pr,
                *args[1:],
            )
            raw.setdefault(name, []).append(r)
            print(
                f"rep {rep} {name}: {r['req_per_s']:.0f} req/s (engine start {r['engine_start_s']:.0f} s)", flush=True
            )
    summ = {k: stats([r["req_per_s"] for r in v]) for k, v in raw.items()}
    if "merged_seqs256" in raw and "lora_seqs256" in raw:
        summ["merged_over_lora"] = stats(
            [raw["merged_seqs256"][i]["req_per_s"] / raw["lora_seqs256"][i]["req_per_s"] for i in range(a.reps)]
        )
    for k, v in raw.items():
        summ[k + "_engine_start_s"] = stats([r["engine_start_s"] for r in v])
    out = {"machine": machine(), "n_prompts": a.n, "summary": summ, "raw": raw}
    Path(a.json).write_text(json.dumps(out, indent=1, default=float))
    md = ["| variant | req/s median | min | max | n |", "|---|---:|---:|---:|---:|"]
    md += [f"| {k} | {v['median']:.2f} | {v['min']:.2f} | {v['max']:.2f} | {v['n']} |" for k, v in summ.items()]
    print("\n".join(md))
    Path(a.json).with_suffix(".md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
