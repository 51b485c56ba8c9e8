"""Reduced precision: speed of each model stage and label agreement with float32, on one bundle, in one run.

    .venv/bin/python bench/precision.py [--bundle runs/demo/bundle] [--archive CALLS_CSV] [--clips 120] [--reps 3]
        [--variants float32,enc_bf16,enc_bf16_mixed]

* ``stages`` (one process, options interleaved per repetition): the encoder alone on the benchmark corpus's
  segments (real speech, 2-4 s, length batches of 32 as labeling forms them) in float32 / bfloat16 /
  bfloat16-mixed / int8 (``encoder.dtype``), after one untimed pass per option (oneDNN builds its kernels per
  shape); the Former + soft prompt on the float32 encoder states in float32 / bfloat16 (``former.dtype``).
  Prompt agreement: relative error and least cosine similarity against float32.
* ``label`` (one fresh process per variant: own Ray, own vLLM engine): ``pipeline.labeling.job.run`` on the call
  archive and on the corpus with the variant's ``model_overrides`` and engine ``dtype``; per variant the job's
  wall time, then per segment argmax agreement and the largest probability difference against the float32 run,
  and the archive evaluation's segment UA (truth: the archive's ``segments.csv``). With transcripts (shared ASR),
  also the share of transcripts that changed and the agreement where they did not. ``float32_b8`` (float32 with
  encoder batches of 8) says how far float32 agrees with itself; ``float32_bs128`` is the engine's former
  128-token KV blocks (no prefix caching on CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WORK, asterisk_clips, machine, run_phase, save_results, stats  # noqa: E402

ENCODER_OPTIONS = ("float32", "bfloat16", "bfloat16-mixed", "int8")
FORMER_OPTIONS = ("float32", "bfloat16")
VARIANTS = {  # name -> (model_overrides, vLLM dtype, other LabelJobConfig fields)
    "float32": ([], "float32", {}),
    # float32 again with other encoder batches (other GEMM shapes, other rounding): how far float32 agrees with itself
    "float32_b8": ([], "float32", {"max_batch_segments": 8}),
    # the LLM engine as it was before prefix caching could hit on CPU (128-token KV blocks; now 32)
    "float32_bs128": ([], "float32", {"engine": {"block_size": 128}}),
    "llm_bf16": ([], "bfloat16", {}),
    "enc_bf16": (["encoder.dtype=bfloat16"], "float32", {}),
    "enc_bf16_mixed": (["encoder.dtype=bfloat16-mixed"], "float32", {}),
    "enc_int8": (["encoder.dtype=int8"], "float32", {}),
    "enc_llm_bf16": (["encoder.dtype=bfloat16"], "bfloat16", {}),
    "enc_mixed_llm_bf16": (["encoder.dtype=bfloat16-mixed"], "bfloat16", {}),
    "enc_former_bf16": (["encoder.dtype=bfloat16", "former.dtype=bfloat16"], "float32", {}),
    "all_bf16": (["encoder.dtype=bfloat16", "former.dtype=bfloat16"], "bfloat16", {}),
    "all_bf16_mixed": (["encoder.dtype=bfloat16-mixed", "former.dtype=bfloat16"], "bfloat16", {}),
}


def corpus(n: int) -> Path:
    import pandas as pd

    man = WORK / f"precision_corpus_{n}.csv"
    if not man.exists():
        clips = asterisk_clips(2.0, 4.0)
        clips = clips[:: max(1, len(clips) // n)][:n]
        WORK.mkdir(parents=True, exist_ok=True)
        pd.DataFrame([{"recording_id": f"clip_{i:04d}", "path": p} for i, (p, _) in enumerate(clips)]).to_csv(
            man, index=False
        )
    return man


def phase_stages(a) -> dict:
    import pandas as pd
    import torch

    from emoq_model.bundle import load_bundle
    from emoq_model.model import collate_features
    from pipeline.labeling.encode import length_batches
    from pipeline.labeling.prepare import PrepareConfig, prepare_recording, split_segments

    torch.set_num_threads(2)
    rows = pd.read_csv(a.manifest).to_dict("records")
    segs = []
    for r in rows:
        rec = prepare_recording({"recording_id": r["recording_id"], "path": r["path"]}, PrepareConfig())
        segs += split_segments(rec) if rec.get("seg_offsets") is not None else []
    audio_s = sum(len(s) for s in segs) / 16000
    fronts = {
        o: load_bundle(a.bundle, load_llm=False, with_encoder=True, overrides=[f"encoder.dtype={o}"])
        for o in ENCODER_OPTIONS
    }
    batches = length_batches([len(s) for s in segs], 32, 240 * 16000, 16000.0)

    def encode(front):
        out = [None] * len(segs)
        with torch.inference_mode():
            for b in batches:
                enc = front.encoder([segs[i] for i in b])
                for k, i in enumerate(b):
                    out[i] = enc.item(k).float()
        return out

    def prompts(front, states, dtype):
        front.cfg.former.dtype = dtype
        out = []
        with torch.inference_mode():
            for i in range(0, len(states), 64):
                batch = collate_features([{"frames": s, "transcript": None} for s in states[i : i + 64]])
                out += [p.float() for p in front.prompt_embeds(batch.to(front.device)).embeds]
        return out

    states = {o: encode(f) for o, f in fronts.items()}  # warm-up pass (kernels per shape), kept for agreement
    base_front = fronts["float32"]
    base = prompts(base_front, states["float32"], "float32")
    times: dict[str, list[float]] = {f"encoder_{o}": [] for o in ENCODER_OPTIONS}
    times.update({f"former_{o}": [] for o in FORMER_OPTIONS})
    prompts(base_front, states["float32"], "bfloat16")
    for _ in range(a.reps):
        for o, f in fronts.items():
            t0 = time.perf_counter()
            encode(f)
            times[f"encoder_{o}"].append(time.perf_counter() - t0)
        for o in FORMER_OPTIONS:
            t0 = time.perf_counter()
            prompts(base_front, states["float32"], o)
            times[f"former_{o}"].append(time.perf_counter() - t0)

    def agree(p):
        a_ = torch.cat([x.flatten() for x in p])
        b_ = torch.cat([x.flatten() for x in base])
        cos = min(float(torch.nn.functional.cosine_similarity(x.flatten(), y.flatten(), 0)) for x, y in zip(p, base))
        return {"rel_error": float((a_ - b_).norm() / b_.norm()), "min_cosine": cos}

    agreement = {f"encoder_{o}": agree(prompts(base_front, states[o], "float32")) for o in ENCODER_OPTIONS}
    agreement["former_bfloat16"] = agree(prompts(base_front, states["float32"], "bfloat16"))
    return {
        "segments": len(segs),
        "audio_s": audio_s,
        "times": {k: stats(v) for k, v in times.items()},
        "audio_s_per_s": {k: audio_s / min(v) for k, v in times.items()},
        "agreement": agreement,
        "torch_threads": torch.get_num_threads(),
    }


def phase_label(a) -> dict:
    import os

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from pipeline.labeling.job import LabelJobConfig, run
    from pipeline.ray_env import init_ray

    overrides, vdtype, extra = VARIANTS[a.variant]
    init_ray(None, 4)
    out = {}
    for name, inputs in (("archive", a.archive), ("corpus", a.manifest)):
        dest = WORK / "precision_labels" / f"{a.variant}_{name}"
        import shutil

        shutil.rmtree(dest, ignore_errors=True)
        from emoq_model.assets.whisper_ct2 import build_whisper_tiny_en
        from pipeline.labeling.asr import bundle_uses_text

        asr = str(build_whisper_tiny_en()) if bundle_uses_text(a.bundle) else None  # text bundles: shared ASR
        cfg = LabelJobConfig(
            inputs=[inputs],
            output=str(dest),
            bundle=a.bundle,
            model_overrides=overrides,
            asr_model=asr,
            encode=_res(),
            label=_res(),
            engine={
                "enforce_eager": True,
                "max_model_len": 1024,
                "max_num_seqs": 256,
                "dtype": vdtype,
                **extra.get("engine", {}),
            },
            timeline_calls=0,
            **{k: v for k, v in extra.items() if k != "engine"},
        )
        t0 = time.perf_counter()
        rep = run(cfg, log=lambda *_: None)
        out[name] = {
            "wall_s": time.perf_counter() - t0,
            "audio_s": rep["audio_s"],
            "segments": rep["segments"],
            "output": str(dest),
        }
    return out


def _res():
    from pipeline.labeling.job import StageResources

    return StageResources(num_cpus=0.5)


def compare(base_dir: str, other_dir: str) -> dict:
    import numpy as np
    import pyarrow.parquet as pq

    key = ["recording_id", "channel", "segment_index"]
    b = pq.read_table(Path(base_dir) / "segments").to_pandas().dropna(subset=["label"]).set_index(key).sort_index()
    o = pq.read_table(Path(other_dir) / "segments").to_pandas().dropna(subset=["label"]).set_index(key).sort_index()
    joined = b.join(o.add_suffix("_o"), how="inner").rename(columns=lambda c: c if c.endswith("_o") else c + "_b")
    pb = np.array([[p for _, p in row] for row in joined["probabilities_b"]])
    po = np.array([[p for _, p in row] for row in joined["probabilities_o"]])
    same = joined["label_b"] == joined["label_o"]
    out = {
        "segments": len(joined),
        "same_segments": len(joined) == len(b) == len(o),
        "argmax_agreement": float(same.mean()),
        "max_prob_diff": float(np.abs(pb - po).max()),
        "mean_prob_diff": float(np.abs(pb - po).mean()),
    }
    if "transcript_b" in joined:  # text bundles: how much of the disagreement comes with a changed transcript
        same_text = joined["transcript_b"].fillna("") == joined["transcript_o"].fillna("")
        out["transcripts_changed"] = float((~same_text).mean())
        out["changed_labels_with_changed_transcript"] = int((~same & ~same_text).sum())
        out["argmax_agreement_same_transcript"] = float(same[same_text].mean()) if same_text.any() else None
    return out


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.4f}"


def fresh_archive(seed: int) -> str:
    """A call archive no model or setting here was chosen on: A-law instead of the demo's mu-law, generic wording
    without cue words, the given synthesis seed, and no voice of the demo's training or validation calls; its
    ``calls.csv`` (``segments.csv`` beside it). Cached under the bench directory."""
    from pipeline.demo.calls import archive_voices, make_call_archive
    from pipeline.demo.run import demo_archives

    out = WORK / f"precision_calls_seed{seed}"
    if not (out / "segments.parquet").exists():  # written last
        arch = demo_archives()
        seen = archive_voices(arch["train"]) | archive_voices(arch["val"])
        return str(
            make_call_archive(
                out,
                n_calls=12,
                minutes=2.0,
                seed=seed,
                encoding="alaw",
                lines="generic",
                exclude_voices=seen,
                id_prefix=f"fresh{seed}",
            )
        )
    return str(out / "calls.csv")


def driver(a) -> None:
    from pipeline.evaluation.archive import evaluate_archive

    man = corpus(a.clips)
    args = ["--bundle", a.bundle, "--manifest", str(man), "--archive", a.archive, "--reps", str(a.reps)]
    res = {"machine": machine(), "bundle": a.bundle, "archive": a.archive}
    res["stages"] = (
        run_phase(__file__, "stages", WORK / "precision_stages.json", *args, timeout=3000) if a.stages else None
    )
    res["label"] = {}
    variants = ["float32", *[v for v in a.variants.split(",") if v != "float32"]] if a.variants else list(VARIANTS)
    for v in variants:
        res["label"][v] = run_phase(
            __file__, "label", WORK / f"precision_label_{v}.json", *args, "--variant", v, timeout=3000
        )
    truth = str(Path(a.archive).parent / "segments.csv")
    for v, r in res["label"].items():
        r["archive_eval"] = evaluate_archive(r["archive"]["output"], truth)["segment"]
        if v != "float32":
            for name in ("archive", "corpus"):
                r[name]["vs_float32"] = compare(res["label"]["float32"][name]["output"], r[name]["output"])
    st = res["stages"]
    md = [
        "| stage option | audio-s/s (best of reps) | × float32 | prompt rel. error | least cosine |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for kind, opts in (("encoder", ENCODER_OPTIONS), ("former", FORMER_OPTIONS)) if st else ():
        for o in opts:
            k = f"{kind}_{o}"
            ag = st["agreement"].get(k, {"rel_error": 0.0, "min_cosine": 1.0})
            md.append(
                f"| {kind} {o} | {st['audio_s_per_s'][k]:.0f} | "
                f"{st['audio_s_per_s'][k] / st['audio_s_per_s'][f'{kind}_float32']:.2f} | "
                f"{ag['rel_error']:.4f} | {ag['min_cosine']:.5f} |"
            )
    md += [
        "",
        "| variant | archive job wall s | corpus job wall s | archive argmax agree | corpus argmax agree | "
        "max prob diff | archive segment UA | archive transcripts changed | archive agree, same transcript |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for v, r in res["label"].items():
        va, vc = r["archive"].get("vs_float32"), r["corpus"].get("vs_float32")
        md.append(
            f"| {v} | {r['archive']['wall_s']:.1f} | {r['corpus']['wall_s']:.1f} | "
            f"{va['argmax_agreement'] if va else 1.0:.4f} | {vc['argmax_agreement'] if vc else 1.0:.4f} | "
            f"{max(va['max_prob_diff'], vc['max_prob_diff']) if va else 0.0:.4f} | "
            f"{r['archive_eval']['ua']:.4f} | {_fmt((va or {}).get('transcripts_changed'))} | "
            f"{_fmt((va or {}).get('argmax_agreement_same_transcript'))} |"
        )
    save_results(a.json, res, md)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phase", default="driver")
    ap.add_argument("--out", default=None)
    ap.add_argument("--bundle", default="runs/demo/bundle")
    ap.add_argument("--variants", default=None, help=f"label variants, comma list (default: {','.join(VARIANTS)})")
    ap.add_argument(
        "--archive",
        default=None,
        help="calls.csv of a call archive with segments.csv beside it (default: the demo's evaluation archive)",
    )
    ap.add_argument(
        "--archive-seed",
        type=int,
        default=None,
        help="label a fresh archive instead (fresh_archive: A-law, generic wording, unseen voices, this seed)",
    )
    ap.add_argument("--no-stages", dest="stages", action="store_false", help="label agreement only")
    ap.add_argument("--manifest", default=None)
    ap.add_argument("--variant", default="float32")
    ap.add_argument("--clips", type=int, default=120)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "precision.json"))
    a = ap.parse_args()
    a.bundle = str(Path(a.bundle).resolve())
    if a.archive_seed is not None and a.phase == "driver":
        a.archive = fresh_archive(a.archive_seed)
    if a.archive is None:
        from pipeline.demo.run import demo_archives

        a.archive = str(demo_archives()["archive"])
    if a.phase == "driver":
        return driver(a)
    res = {"stages": phase_stages, "label": phase_label}[a.phase](a)
    Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
