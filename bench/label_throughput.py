"""Labeling throughput: full pipeline vs a plain per-file loop vs the per-stage floor (same bundle, same corpus).

    .venv/bin/python bench/label_throughput.py [--clips 120] [--calls 2] [--reps 3] [--json bench/results/label.json]

Phases run in fresh processes (own Ray / vLLM engine), interleaved per repetition so that machine noise hits all
of them alike:

* ``floor``: pre-decoded segments (the pipeline's own decode+VAD, done in-process and timed apart); encoder alone at
  batch 1/8/32 (best kept), Former+prompt alone at batch 64, vLLM ``classify`` on all prompts in one call, served
  as the label job serves it (on CPU the engine core in this process). Floor throughput = audio_s / (best encoder +
  Former + vLLM seconds). ``--variants`` also time each variant's floor (its ``model_overrides``, e.g.
  ``encoder.dtype=bfloat16``, and vLLM ``engine`` arguments) beside the default one; an ``auto`` encoder precision
  resolves as the job resolves it.
* ``plain``: what a user writes without this project: per file, decode (soundfile + soxr), per channel, Whisper in
  30 s windows (``hf30``: the standard HF feature extractor, 30 s padding) or at real length (``real``), Former,
  HF ``predict_proba`` (one prefill, label-token softmax) or HF ``generate`` (``*_generate``: 4 new tokens, the
  text mapped to a label) — one item at a time.
* ``pipeline``: ``pipeline.labeling.job.run`` on an embedded local Ray (4 logical CPUs), on the corpus and then on the
  corpus ``--repeat`` times (distinct ids), each run starting its own actors and engine. Steady-state (marginal)
  throughput = extra audio / extra wall; fixed cost = the corpus run's wall minus its audio at that rate. Stage
  wrappers (composition, no library change) log every call's start/end to a JSONL file for the breakdown.
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

from pipeline.labeling import columns as C  # noqa: E402

# ------------------------------------------------------------------------------------------ corpus


def make_corpus(n_clips: int, n_calls: int, repeat: int = 4) -> dict:
    import pandas as pd

    root = WORK / f"label_corpus_{n_clips}_{n_calls}"
    man = root / "manifest.csv"
    if not man.exists():
        root.mkdir(parents=True, exist_ok=True)
        clips = asterisk_clips(2.0, 4.0)
        step = max(1, len(clips) // n_clips)
        clips = clips[::step][:n_clips]
        if len(clips) < n_clips:
            raise SystemExit(f"only {len(clips)} speech clips of 2-4 s available, {n_clips} asked for")
        rows = [{"recording_id": f"clip_{i:04d}", "path": p, "channels": None} for i, (p, _) in enumerate(clips)]
        if n_calls:
            from pipeline.demo.calls import make_call_archive

            calls = pd.read_csv(make_call_archive(root / "calls", n_calls=n_calls, minutes=0.5, seed=3, workers=1))
            rows += [
                {"recording_id": r.recording_id, "path": r.path, "channels": r.channels} for r in calls.itertuples()
            ]
        pd.DataFrame(rows).to_csv(man, index=False)
    big = root / f"manifest_x{repeat}.csv"
    if not big.exists():
        # the corpus ``repeat`` times under distinct ids; a distinct (ignored: the demo config does not read
        # transcripts) transcript per copy keeps the job from refusing the copies as duplicate inputs
        rows = pd.read_csv(man).to_dict("records")
        pd.DataFrame(
            [
                {**r, "recording_id": f"{r['recording_id']}_x{k}", "transcript": f"copy {k}"}
                for k in range(repeat)
                for r in rows
            ]
        ).to_csv(big, index=False)
    return {"manifest": str(man), "manifest_big": str(big), "repeat": repeat}


def file_seconds(manifest: str) -> float:
    import pandas as pd
    import soundfile as sf

    return float(sum(sf.info(p).duration for p in pd.read_csv(manifest)["path"]))


# ------------------------------------------------------------------------------------------ timed stages


class _Timed:
    log_path = ""  # set in the driver before the dataset is built (pickled by value with the class)

    def _log(self, stage, t0, t1, n, **kw):
        import json as _j
        import os as _o

        with open(self.log_path, "a") as f:
            f.write(_j.dumps({"stage": stage, "t0": t0, "t1": t1, "n": n, "pid": _o.getpid(), **kw}) + "\n")


class TimedEncode(_Timed):
    columns = C.ENCODE
    threads = 0  # > 0: torch threads of the encode actor (EncodePrompts(num_threads=...)); 0 = library default

    def __init__(self, **kw):
        import importlib
        import time as _t

        if self.threads:
            kw["num_threads"] = self.threads
        t0 = _t.time()
        self.inner = importlib.import_module("pipeline.labeling.encode").EncodePrompts(**kw)
        self._log("encode_init", t0, _t.time(), 0)

    def __call__(self, batch):
        import time as _t

        t0 = _t.time()
        out = self.inner(batch)
        self._log(
            "encode",
            t0,
            _t.time(),
            len(batch["recording_id"]),
            segments=int(sum(len(o) - 1 for o in out["prompt_offsets"])),
        )
        return out


class TimedLabel(_Timed):
    columns = C.LABEL
    env: dict = {}  # environment for the vLLM engine of the label actor (e.g. VLLM_ENABLE_V1_MULTIPROCESSING=0)

    def __init__(self, **kw):
        import importlib
        import os as _o
        import time as _t

        _o.environ.update(self.env)

        t0 = _t.time()
        self.inner = importlib.import_module("pipeline.labeling.label").LabelWithVLLM(**kw)
        self._log("label_init", t0, _t.time(), 0)

    def __call__(self, batch):
        import time as _t

        t0 = _t.time()
        out = self.inner(batch)
        self._log("label", t0, _t.time(), len(batch["recording_id"]), segments=int(sum(len(x) for x in out["labels"])))
        return out


class TimedFused(_Timed):
    """``EncodeAndLabel`` built from the timed parts (the same composition: encode, then label, in one actor)."""

    columns = C.ENCODE_AND_LABEL

    def __init__(self, encode_kwargs, label_kwargs):
        self.enc = TimedEncode(**encode_kwargs)
        self.lab = TimedLabel(**label_kwargs)

    def __call__(self, batch):
        return self.lab(self.enc(batch))


def _timed_fn(name, target, log_path):
    def fn(batch, **kw):
        import importlib
        import json as _j
        import os as _o
        import time as _t

        mod, attr = target.rsplit(".", 1)
        t0 = _t.time()
        out = getattr(importlib.import_module(mod), attr)(batch, **kw)
        with open(log_path, "a") as f:
            f.write(
                _j.dumps(
                    {"stage": name, "t0": t0, "t1": _t.time(), "n": len(batch["recording_id"]), "pid": _o.getpid()}
                )
                + "\n"
            )
        return out

    import importlib

    mod, attr = target.rsplit(".", 1)
    fn.columns = getattr(importlib.import_module(mod), attr).columns  # the wrapped stage's column contract
    return fn


def breakdown(log_path: str, t_start: float, t_end: float) -> dict:
    rows = [json.loads(x) for x in Path(log_path).read_text().splitlines() if x.strip()]
    out = {"wall_s": t_end - t_start}
    for st in ("prepare", "encode_init", "encode", "label_init", "label", "write"):
        rs = [r for r in rows if r["stage"] == st]
        if not rs:
            continue
        busy = sum(r["t1"] - r["t0"] for r in rs)
        out[st] = {
            "calls": len(rs),
            "busy_s": round(busy, 3),
            "busy_frac_of_wall": round(busy / out["wall_s"], 3),
            "first_start_s": round(min(r["t0"] for r in rs) - t_start, 2),
            "last_end_s": round(max(r["t1"] for r in rs) - t_start, 2),
            "mean_call_s": round(busy / len(rs), 4),
        }
        if "segments" in rs[0]:
            out[st]["segments"] = sum(r["segments"] for r in rs)
    return out


# ------------------------------------------------------------------------------------------ phases


def phase_pipeline(a) -> dict:
    import pipeline.labeling.encode
    import pipeline.labeling.job as lj
    import pipeline.labeling.label
    from pipeline.labeling.job import LabelJobConfig, StageResources
    from pipeline.ray_env import init_ray

    log_path = str(Path(a.out).with_suffix(".timings.jsonl"))
    if os.path.exists(log_path):
        os.remove(log_path)
    TimedEncode.log_path = TimedLabel.log_path = TimedFused.log_path = log_path
    # composition wrappers: the real classes / functions run inside them (looked up in the workers)
    pipeline.labeling.encode.EncodePrompts = TimedEncode
    pipeline.labeling.label.LabelWithVLLM = TimedLabel
    pipeline.labeling.label.EncodeAndLabel = TimedFused
    lj.prepare_batch = _timed_fn("prepare", "pipeline.labeling.prepare.prepare_batch", log_path)
    lj.write_parts = _timed_fn("write", "pipeline.labeling.sink.write_parts", log_path)
    init_ray(num_cpus=a.ray_cpus)
    extra = json.loads(a.job) if a.job else {}
    engine = {"enforce_eager": True, "max_model_len": 1024, "max_num_seqs": 256, **extra.pop("engine", {})}
    enc_cpus = extra.pop("encode_cpus", 1.0)
    enc_actors = int(extra.pop("encode_actors", 1))
    label_cpus = extra.pop("label_cpus", 1.0)
    TimedEncode.threads = int(extra.pop("_encode_threads", 0))
    TimedLabel.env = dict(extra.pop("_label_env", {}))
    res = {}
    for tag, man in (("full", a.manifest), ("big", a.manifest_big)):
        if not man:
            continue
        outdir = WORK / "label_out" / f"{Path(a.out).stem}_{tag}"
        import shutil

        shutil.rmtree(outdir, ignore_errors=True)
        cfg = LabelJobConfig(
            inputs=[man],
            output=str(outdir),
            bundle=a.bundle,
            engine=dict(engine),
            encode=StageResources(enc_actors, enc_cpus),
            label=StageResources(1, label_cpus),
            **{k: v for k, v in extra.items()},
        )
        open(log_path, "w").close()
        t0 = time.time()
        rep = lj.run(cfg, log=lambda *x: None)
        t1 = time.time()
        res[tag] = {
            "wall_s": t1 - t0,
            "audio_s": rep["audio_s"],
            "segments": rep["segments"],
            "labeled": rep["labeled"],
            "failed": rep["failed"],
        }
        # this run's lines only (they start after t0)
        lines = [x for x in Path(log_path).read_text().splitlines() if x.strip() and json.loads(x)["t0"] >= t0]
        Path(log_path).write_text("\n".join(lines) + "\n")
        bd = breakdown(log_path, t0, t1)
        res["breakdown" if tag == "full" else f"breakdown_{tag}"] = bd
        res[tag]["engine_start_s"] = bd.get("label_init", {}).get("busy_s", 0.0)
        res[tag]["encoder_start_s"] = bd.get("encode_init", {}).get("busy_s", 0.0)
        # every model actor constructed (Ray Data planning, actor processes, models, vLLM engine)
        res[tag]["ready_s"] = max(bd.get(k, {}).get("last_end_s", 0.0) for k in ("encode_init", "label_init"))
    if "big" in res:
        # steady state: the extra audio over the extra wall of the larger corpus (each run pays the same start-up:
        # Ray is up in both, actors and engine are started per run); the fixed cost is what remains of the wall
        f, b = res["full"], res["big"]
        res["marginal_audio_s_per_s"] = (b["audio_s"] - f["audio_s"]) / (b["wall_s"] - f["wall_s"])
        res["fixed_s"] = f["wall_s"] - f["audio_s"] / res["marginal_audio_s_per_s"]
    return res


def common_prefix(embeds: list) -> int:
    """Rows that every ``[T_i, H]`` prompt shares at its start (the instruction prefix)."""
    import torch

    n = min(e.shape[0] for e in embeds)
    rows = torch.stack([e[:n] for e in embeds])
    same = (rows == rows[0]).all(-1).all(0)
    return n if bool(same.all()) else int(same.long().argmin())


def phase_floor(a) -> dict:
    import numpy as np
    import torch

    from emoq_model.bundle import load_bundle
    from emoq_model.model import collate_features
    from emoq_model.serving import classify, engine_kwargs
    from pipeline.labeling.job import LabelJobConfig, encoder_sample_rate, with_resolved_precision
    from pipeline.labeling.prepare import PrepareConfig, prepare_recording, split_segments
    from pipeline.labeling.sources import discover

    res = {}
    pc = PrepareConfig(sample_rate=encoder_sample_rate(a.bundle))
    t0 = time.perf_counter()
    prepared = [prepare_recording(r.to_row(), pc) for r in discover([a.manifest])]
    res["prepare_s"] = time.perf_counter() - t0
    res["audio_s"] = float(sum(p["duration_s"] or 0 for p in prepared))
    waves = [w for p in prepared for w in split_segments(p)]
    res["segments"] = len(waves)
    res["speech_s"] = float(sum(len(w) for w in waves)) / pc.sample_rate
    # a precision variant (``--job``: LabelJobConfig's ``model_overrides`` and ``engine``) times its own stages; an
    # ``auto`` encoder precision resolves as the label job resolves it (pipeline.labeling.job.encoder_precision)
    job = json.loads(a.job) if a.job else {}
    jc, _, _ = with_resolved_precision(  # no ASR here: the floor bundle is speech only
        LabelJobConfig([a.manifest], str(WORK / "unused"), a.bundle, model_overrides=job.get("model_overrides", [])),
        a.bundle,
        None,
    )
    res["model_overrides"] = jc.model_overrides
    front = load_bundle(a.bundle, load_llm=False, with_encoder=True, overrides=jc.model_overrides)
    order = sorted(range(len(waves)), key=lambda i: len(waves[i]))

    def batches(bs):
        return [order[i : i + bs] for i in range(0, len(order), bs)]

    with torch.inference_mode():
        front.encoder([waves[order[0]]])  # warm-up
        enc_t, feats = {}, {}
        for bs in (1, 8, 32):
            t0 = time.perf_counter()
            for idx in batches(bs):
                out = front.encoder([waves[i] for i in idx])
                if bs == 32:
                    for k, i in enumerate(idx):
                        feats[i] = out.item(k).float().cpu().numpy()
            enc_t[bs] = time.perf_counter() - t0
        res["encoder_s_by_batch"] = enc_t
        former_t = {}
        embeds = [None] * len(waves)
        for bs in (16, 64):
            t0 = time.perf_counter()
            for idx in batches(bs):
                b = collate_features([{"frames": feats[i]} for i in idx])
                for i, e in zip(idx, front.prompt_embeds(b).embeds):
                    embeds[i] = e.float().cpu()
            former_t[bs] = time.perf_counter() - t0
        res["former_s_by_batch"] = former_t
    if not torch.cuda.is_available():  # served as the label job serves on CPU: engine core in the caller's process
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # (LabelJobConfig.engine_in_process; 1.7x the LLM stage)
    from vllm import LLM

    from emoq_model.bundle import read_meta
    from emoq_model.serving import lora_request

    meta = read_meta(a.bundle)
    t0 = time.perf_counter()
    engine = {"enforce_eager": True, "max_model_len": 1024, "max_num_seqs": a.max_num_seqs, **job.get("engine", {})}
    kw = engine_kwargs(a.bundle, **engine)
    llm = LLM(**kw)
    res["engine_start_s"] = time.perf_counter() - t0
    lora = lora_request(a.bundle) if kw.get("enable_lora") else None
    # Prefix caching (vLLM hashes prompt-embedding blocks) must not time a prompt it has already seen: before each
    # timed pass the cache is emptied and one prompt that shares only the instruction prefix with the corpus's (the
    # rows after the common prefix shifted) warms it, as the first batch of a labeling actor does.
    common = common_prefix(embeds)
    warm = embeds[0].clone()
    warm[common:] += 1.0
    res["common_prefix_tokens"] = common
    classify(llm, [e + 1.0 for e in embeds[:16]], meta["label_token_ids"], meta["labels"], lora)  # kernels, unseen rows
    llm_t = {}
    for chunk in (64, len(embeds)):
        llm.reset_prefix_cache()
        classify(llm, [warm], meta["label_token_ids"], meta["labels"], lora)  # warm-up
        t0 = time.perf_counter()
        for i in range(0, len(embeds), chunk):
            classify(llm, embeds[i : i + chunk], meta["label_token_ids"], meta["labels"], lora)
        llm_t[chunk] = time.perf_counter() - t0
    res["llm_s_by_chunk"] = llm_t
    res["prompt_tokens"] = int(np.mean([e.shape[0] for e in embeds]))
    best = min(enc_t.values()) + min(former_t.values()) + min(llm_t.values())
    res["floor_s"] = best
    res["floor_audio_s_per_s"] = res["audio_s"] / best
    del llm
    return res


def phase_plain(a) -> dict:
    import numpy as np
    import pandas as pd
    import soundfile as sf
    import soxr
    import torch

    from emoq_model.bundle import load_bundle

    ov = ["encoder.whisper_real_length=false"] if a.variant.startswith("hf30") else []
    model = load_bundle(a.bundle, load_llm=True, with_encoder=True, overrides=ov)
    sr = model.encoder.sample_rate
    paths = list(pd.read_csv(a.manifest)["path"])
    if a.limit:
        paths = paths[: a.limit]
    audio_s, n_items = 0.0, 0
    predict = model.predict_proba
    if a.variant.endswith("generate"):  # HF generate on the prompt embeddings, the answer text mapped to a label
        from emoq_model.prompt import pad_prompts

        tok = model.tokenizer

        def predict(batch):
            x, mask, _ = pad_prompts(model.prompt_embeds(batch.to(model.device)))
            ids = model.llm.generate(
                inputs_embeds=x,
                attention_mask=mask,
                max_new_tokens=4,
                do_sample=False,
                pad_token_id=tok.pad_token_id or tok.eos_token_id,
            )
            text = tok.decode(ids[0], skip_special_tokens=True).strip().lower()
            return next((n for n in model.label_names if text.startswith(n.lower())), None)

    with torch.inference_mode():
        w = np.zeros(sr * 3, np.float32)
        predict(model.batch_from_audio([w]))  # warm-up
        t0 = time.perf_counter()
        for p in paths:
            x, rate = sf.read(p, dtype="float32", always_2d=True)
            audio_s += len(x) / rate
            for c in range(x.shape[1]):
                y = soxr.resample(x[:, c], rate, sr) if rate != sr else x[:, c]
                for s in range(0, len(y), 30 * sr):  # Whisper takes at most 30 s
                    predict(model.batch_from_audio([y[s : s + 30 * sr]]))
                    n_items += 1
        wall = time.perf_counter() - t0
    return {"wall_s": wall, "audio_s": audio_s, "items": n_items, "audio_s_per_s": audio_s / wall}


# ------------------------------------------------------------------------------------------ driver


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phase", default="driver")
    ap.add_argument("--out", default=None)
    ap.add_argument("--bundle")
    ap.add_argument("--manifest")
    ap.add_argument("--manifest-big", default="")
    ap.add_argument("--repeat", type=int, default=4, help="the larger corpus: the corpus this many times")
    ap.add_argument("--variant", default="real")
    ap.add_argument("--limit", type=int, default=0, help="plain phase: first N files only")
    ap.add_argument("--hf30-limit", type=int, default=30)
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--ray-cpus", type=int, default=4)
    ap.add_argument("--job", default="", help="JSON LabelJobConfig overrides for the pipeline phase")
    ap.add_argument("--resume", action="store_true", help="reuse phase results of an interrupted driver run")
    ap.add_argument("--clips", type=int, default=120)
    ap.add_argument("--calls", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--phases", default="floor,plain_real,plain_hf30,pipeline")
    ap.add_argument(
        "--variants",
        default="",
        help="extra variants of the pipeline and floor phases: name=JSON;name=JSON (LabelJobConfig overrides; the "
        "floor reads their model_overrides and engine)",
    )
    ap.add_argument("--baseline", default="", help="the floor variant the others' speed-ups are over (default floor)")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "label_throughput.json"))
    a = ap.parse_args()
    if a.phase != "driver":
        fn = {"floor": phase_floor, "plain": phase_plain, "pipeline": phase_pipeline}[a.phase]
        Path(a.out).write_text(json.dumps(fn(a), default=float))
        return

    bundle = demo_bundle()
    corpus = make_corpus(a.clips, a.calls, a.repeat)
    audio_s = file_seconds(corpus["manifest"])
    print(
        f"bundle {bundle}; corpus {corpus['manifest']}: {a.clips} clips + {a.calls} calls, {audio_s:.0f} s audio",
        flush=True,
    )
    script = str(Path(__file__).resolve())
    variants = dict(v.split("=", 1) for v in a.variants.split(";") if v) if a.variants else {}
    raw: dict[str, list] = {}
    tmp = WORK / "label_phases"
    for rep in range(a.reps):
        for ph in a.phases.split(","):
            common = ["--bundle", bundle, "--manifest", corpus["manifest"]]
            if ph == "pipeline" and a.repeat > 1:
                common += ["--manifest-big", corpus["manifest_big"]]
            todo = [(ph, [])]
            if ph.startswith("plain_"):
                todo = [
                    (
                        ph,
                        ["--variant", ph.split("_", 1)[1]]
                        + (["--limit", str(a.hf30_limit)] if ph.startswith("plain_hf30") else []),
                    )
                ]
            if ph in ("pipeline", "floor"):
                todo += [(f"{ph}_{k}", ["--job", v]) for k, v in variants.items()]
            for name, extra in todo:
                phase = name.split("_")[0]
                t0 = time.perf_counter()
                f = tmp / f"{name}_{rep}.json"
                if a.resume and f.exists():  # a phase already measured by an interrupted driver run
                    r = json.loads(f.read_text())
                else:
                    r = run_phase(script, phase, f, *common, *extra)
                raw.setdefault(name, []).append(r)
                print(
                    f"rep {rep} {name}: {time.perf_counter() - t0:.0f} s  "
                    f"{json.dumps({k: v for k, v in r.items() if k != 'breakdown'}, default=float)[:400]}",
                    flush=True,
                )
    summary = summarize(raw, audio_s, a.baseline)
    out = {
        "machine": machine(),
        "corpus": {**corpus, "clips": a.clips, "calls": a.calls, "audio_s": audio_s},
        "bundle": bundle,
        "summary": summary,
        "raw": raw,
    }
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(out, indent=1, default=float))
    print(markdown(summary))
    Path(a.json).with_suffix(".md").write_text(markdown(summary))


FLOOR_PARTS = {
    "": "floor_s",
    "_encoder": "encoder_s_by_batch",
    "_former": "former_s_by_batch",
    "_llm": "llm_s_by_chunk",
}


def _best(r: dict, key: str) -> float:
    """A floor result's seconds for ``key``: the value, or the best of its batch sizes."""
    v = r[key]
    return min(v.values()) if isinstance(v, dict) else v


def summarize(raw: dict, audio_s: float, baseline: str = "") -> dict:
    """Medians over repetitions; floor variants also as speed-ups over ``floor_<baseline>`` (the default floor if
    empty), each repetition against the baseline run beside it."""
    s = {}
    base = f"floor_{baseline}" if baseline else "floor"
    for k in (k for k in raw if k.startswith("floor")):
        fl, tag = raw[k], k[len("floor") :]  # "" or "_<variant>"
        s[k] = stats([r["floor_audio_s_per_s"] for r in fl])
        s[f"floor{tag}_encoder_best"] = stats([audio_s / _best(r, "encoder_s_by_batch") for r in fl])
        s[f"floor{tag}_encoder_b1"] = stats([audio_s / r["encoder_s_by_batch"]["1"] for r in fl])
        s[f"floor{tag}_former_best"] = stats([audio_s / _best(r, "former_s_by_batch") for r in fl])
        s[f"floor{tag}_llm_best"] = stats([audio_s / _best(r, "llm_s_by_chunk") for r in fl])
        s[f"floor{tag}_llm_segments_per_s"] = stats([r["segments"] / _best(r, "llm_s_by_chunk") for r in fl])
        s[f"floor{tag}_engine_start_s"] = stats([r["engine_start_s"] for r in fl])
        if not tag:
            s["prepare_single_process"] = stats([audio_s / r["prepare_s"] for r in fl])
            s["engine_start_s"] = s["floor_engine_start_s"]
            s["floor_with_prepare"] = stats([r["audio_s"] / (r["floor_s"] + r["prepare_s"]) for r in fl])
        if k != base and base in raw:  # per-repetition speed-ups over the baseline floor measured beside it
            for part, key in FLOOR_PARTS.items():
                s[f"{k}{part}_vs_{base}{part}"] = stats([_best(b, key) / _best(r, key) for b, r in zip(raw[base], fl)])
    for k in raw:
        if k.startswith("plain"):
            s[k] = stats([r["audio_s_per_s"] for r in raw[k]])
        if k.startswith("pipeline"):
            pr = raw[k]
            s[k + "_incl_startup"] = stats([r["full"]["audio_s"] / r["full"]["wall_s"] for r in pr])
            s[k + "_ready_s"] = stats([r["full"]["ready_s"] for r in pr])
            s[k + "_engine_start_s"] = stats([r["full"]["engine_start_s"] for r in pr])
            steady = "marginal_audio_s_per_s" in pr[0]
            if steady:
                s[k + "_marginal"] = stats([r["marginal_audio_s_per_s"] for r in pr])
                s[k + "_fixed_s"] = stats([r["fixed_s"] for r in pr])
                s[k + "_big_incl_startup"] = stats([r["big"]["audio_s"] / r["big"]["wall_s"] for r in pr])
            for name in (n for n in pr[0] if n.startswith("breakdown")):
                bd = [r[name] for r in pr]
                s[f"{k}_{name}"] = {
                    st: {
                        m: stats([b[st][m] for b in bd if st in b])
                        for m in ("busy_s", "busy_frac_of_wall", "first_start_s", "last_end_s")
                    }
                    for st in ("prepare", "encode_init", "encode", "label_init", "label", "write")
                    if any(st in b for b in bd)
                }
            # per-repetition ratios (side by side in the same repetition); the plain loops exclude their model load
            n = len(pr)
            for p in (p for p in raw if p.startswith("plain")):
                s[f"{k}_incl_startup_vs_{p}"] = stats(
                    [pr[i]["full"]["audio_s"] / pr[i]["full"]["wall_s"] / raw[p][i]["audio_s_per_s"] for i in range(n)]
                )
                if steady:
                    s[f"{k}_marginal_vs_{p}"] = stats(
                        [pr[i]["marginal_audio_s_per_s"] / raw[p][i]["audio_s_per_s"] for i in range(n)]
                    )
            if "floor" in raw and steady:
                s[k + "_floor_over_marginal"] = stats(
                    [raw["floor"][i]["floor_audio_s_per_s"] / pr[i]["marginal_audio_s_per_s"] for i in range(n)]
                )
    return s


def markdown(s: dict) -> str:
    lines = ["| measure | median | min | max | spread % | n |", "|---|---:|---:|---:|---:|---:|"]
    for k, v in s.items():
        if isinstance(v, dict) and "median" in v:
            lines.append(
                f"| {k} | {v['median']:.2f} | {v['min']:.2f} | {v['max']:.2f} | {v['spread_pct']:.0f} | {v['n']} |"
            )
    for k, v in s.items():
        if "_breakdown" in k:
            lines += [
                "",
                f"**{k}** (seconds from run start; busy = summed call time)",
                "",
                "| stage | busy s | busy/wall | first start s | last end s |",
                "|---|---:|---:|---:|---:|",
            ]
            for st, d in v.items():
                lines.append(
                    f"| {st} | {d['busy_s']['median']:.1f} | {d['busy_frac_of_wall']['median']:.2f} | "
                    f"{d['first_start_s']['median']:.1f} | {d['last_end_s']['median']:.1f} |"
                )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
