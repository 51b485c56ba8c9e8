"""Evaluate a bundle on a labelled manifest or a feature cache: WA, UA, weighted F1, per-class recall, confusion.
The CLI: ``jobs/evaluate.py``.

* ``--features``: a cache from ``jobs/extract_features.py`` (must match the bundle's encoder config).
  ``--manifest``: the audio is first run through the same Ray Data extraction (into ``OUT_DIR/features``).
* Feature normalisation: whatever the bundle was trained with (``feature_norm.json``). Per-speaker statistics come
  from the evaluated audio itself, never its labels, over the population labeling has (``--norm-groups channels``,
  the default and the headline protocol): one call channel each -- the cache's own groups when it was built from a
  call archive, else each speaker's utterances split into label-skewed simulated channels
  (:func:`emoq_model.features.simulated_channels`). ``--norm-groups speaker`` (all of a speaker's, usually
  class-balanced, utterances) is optimistic: report it only beside the default, named as such.
* ``--backend hf`` (default): ``EmoQModel.predict_proba`` (LLM label-token distribution). ``--backend vllm``: the
  same prompt embeddings through vLLM (``emoq_model.serving``; label tokens only). ``--head aux``: the Former's
  auxiliary classifier instead of the LLM (for stage-1-only bundles).
* Probabilities are calibrated with the bundle's temperature (fitted on validation); the report gives the expected
  calibration error before and after (``ece_uncalibrated``, ``ece``). A bundle with a conversation context
  (:mod:`emoq_model.context`) gets it applied first, per speaker (call channel), when every row has its place in
  its call (``start_s`` / ``end_s``, as turns of call archives do), as the label stage applies it.
* Output: ``OUT_DIR/<name>.json`` (``emoq_model.metrics.classification_report`` + run info),
  ``OUT_DIR/<name>_confusion.png`` and ``OUT_DIR/<name>_predictions.parquet`` (utt_id, speaker, label,
  prediction, confidence, one probability column per label). Rows that could not be decoded are counted
  (``n_input_errors``) and left out of the metrics.
* ``ci``: 95 % percentile intervals of UA, accuracy, macro-F1 and ECE from a bootstrap over the held-out *units*
  (``ci_resamples``, default 2000; 0: none; :func:`pipeline.evaluation.bootstrap.recording_bootstrap`): the
  recordings when the rows are turns of calls (a cache built from a call archive), else the speakers. A speaker's
  clips share a voice, and the turns of a call a script, so they are not independent draws; with the few held-out
  speakers of a small corpus the interval says how little one split can tell.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np
import pandas as pd

from pipeline.evaluation.bootstrap import format_intervals


def _batches(items: list[dict], batch_size: int):
    """Feature items collated into model batches of ``batch_size``."""
    import torch

    from emoq_model.model import collate_features

    for i in range(0, len(items), batch_size):
        yield collate_features(
            [
                {
                    "frames": torch.from_numpy(np.asarray(it["frames"], dtype=np.float32)),
                    "transcript": it.get("transcript"),
                }
                for it in items[i : i + batch_size]
            ]
        )


def _probs_hf(model, items: list[dict], batch_size: int, head: str) -> np.ndarray:
    import torch

    out = []
    with torch.no_grad():
        for batch in _batches(items, batch_size):
            if head == "aux":
                fo = model.run_former(batch.to(model.device))
                out.append(torch.softmax(fo.logits.float(), -1).cpu().numpy())
            else:
                out.append(model.predict_proba(batch).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(model.label_names)))


def _probs_vllm(bundle: str, items: list[dict], batch_size: int, max_model_len: int = 1024) -> np.ndarray:
    import torch
    from vllm import LLM

    from emoq_model.bundle import load_bundle
    from emoq_model.serving import classify, engine_kwargs, lora_request

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    front = load_bundle(bundle, load_llm=False, device="cpu" if not torch.cuda.is_available() else None)
    embeds = []
    with torch.no_grad():
        for batch in _batches(items, batch_size):
            embeds += [e.cpu() for e in front.prompt_embeds(batch).embeds]
    kw = engine_kwargs(bundle, enforce_eager=True, max_model_len=max_model_len)
    llm = LLM(**kw)
    lora = None if kw.get("enable_lora") is False else lora_request(bundle)
    scores = classify(llm, embeds, front.label_token_ids, front.label_names, lora, "tokens")
    return scores.probs


def _intervals(cache, items: list[dict], y_idx, pred, probs, k: int, n_resamples: int) -> dict | None:
    """Bootstrap intervals over the held-out units: recordings for turns of calls, else speakers."""
    from pipeline.evaluation.bootstrap import recording_bootstrap

    unit = "recording" if cache.meta.get("groups") == "channels" else "speaker"
    units = [str(it["path"] if unit == "recording" else it["speaker"]) for it in items]
    ci = recording_bootstrap(units, y_idx, pred, k, probs=probs, n_resamples=n_resamples)
    return None if ci is None else {"unit": unit, **ci}


def evaluate(
    bundle: str,
    out_dir: str,
    features: str | None = None,
    manifest: str | None = None,
    split: str | None = "test",
    backend: str = "hf",
    head: str = "llm",
    batch_size: int = 32,
    name: str | None = None,
    device: str | None = None,
    norm_groups: str = "channels",
    seed: int = 0,
    ci_resamples: int = 2000,
) -> dict:
    """Evaluate ``bundle`` and write the report files; returns the report dict (see the module docstring)."""
    from emoq_model import features as F
    from emoq_model.bundle import bundle_config, load_bundle
    from emoq_model.metrics import classification_report, format_report, save_report

    t0 = time.perf_counter()
    bundle = os.path.abspath(bundle)
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    if (features is None) == (manifest is None):
        raise ValueError("give exactly one of features= or manifest=")
    if manifest is not None:  # run the audio through the same extraction first
        from pipeline.ray_env import init_ray
        from pipeline.training.extract import extract_features

        init_ray()
        features = os.path.join(out_dir, "features")
        extract_features(manifest, features, bundle_config(bundle), splits=[split] if split else None, overwrite=True)
    cache = F.FeatureCache(features)
    cfg = bundle_config(bundle)
    enc = cfg.encoder
    cm = cache.meta.get("encoder", {})
    for key in ("layer", "weighted_layers", "whisper_real_length"):
        if key in cm and cm[key] != getattr(enc, key):
            raise ValueError(
                f"feature cache {features} was extracted with encoder.{key}={cm[key]!r}, "
                f"the bundle uses {getattr(enc, key)!r}"
            )
    index = cache.index(["utt_id", "split", "error"])
    if split:
        index = index[index["split"] == split]
    n_errors = int(index["error"].notna().sum())
    items = cache.load(split=split)
    if not items:
        raise ValueError(f"{features}: no usable rows (split={split!r})")
    labels = list(cfg.labels.names)
    bad = sorted({it["label"] for it in items} - set(labels))
    if bad:
        raise ValueError(f"evaluation labels {bad} are not among the bundle's labels {labels}")
    norm = F.FeatureNorm.load(bundle)
    if norm.mode == "speaker":  # statistics over the protocol's groups, from the audio only
        groups = F.norm_groups(
            cache,
            pd.DataFrame([{k: it[k] for k in ("utt_id", "speaker", "label", "split")} for it in items]),
            norm_groups,
            seed,
        )
        norm = dataclasses.replace(norm, group_key="norm_group")
        for it in items:
            it["norm_group"] = groups[it["utt_id"]]
    items = norm.apply(items)
    stacked = cache.stacked
    for it in items:
        it["frames"] = F.model_frames(np.asarray(it["frames"], dtype=np.float32), stacked)

    t1 = time.perf_counter()
    if backend == "hf":
        model = load_bundle(bundle, device=device)
        probs = _probs_hf(model, items, batch_size, head)
    elif backend == "vllm":
        if head != "llm":
            raise ValueError("--head aux needs --backend hf")
        probs = _probs_vllm(bundle, items, batch_size)
    else:
        raise ValueError(f"backend must be hf or vllm, got {backend!r}")
    t_pred = time.perf_counter() - t1
    from emoq_model.calibration import apply_temperature, expected_calibration_error, load_context, load_temperature

    temperature = load_temperature(bundle) if head == "llm" else 1.0  # fitted on validation, as labeling applies it
    context = load_context(bundle)
    timed = all(it.get("start_s") is not None and it.get("end_s") is not None for it in items)
    if head == "llm" and context.active and timed:  # turns of calls: the channel's other turns, as labeling does
        probs = context.apply(
            probs, [it["speaker"] for it in items], [it["start_s"] for it in items], [it["end_s"] for it in items]
        )
    y_idx = np.array([labels.index(it["label"]) for it in items])
    ece_raw = expected_calibration_error(probs, y_idx)
    probs = apply_temperature(probs, temperature)
    pred = probs.argmax(1)
    y_true = [it["label"] for it in items]
    report = classification_report(y_true, [labels[i] for i in pred], labels)
    report.update(
        temperature=temperature,
        context=context.to_dict() if head == "llm" and context.active and timed else None,
        ece=expected_calibration_error(probs, y_idx),
        ece_uncalibrated=ece_raw,
    )
    report["ci"] = _intervals(cache, items, y_idx, pred, probs, len(labels), ci_resamples)
    name = name or f"{split or 'all'}_{backend}{'_aux' if head == 'aux' else ''}"
    report.update(
        bundle=bundle,
        features=features,
        split=split,
        backend=backend,
        head=head,
        feature_norm=norm.mode,
        norm_groups=norm_groups if norm.mode == "speaker" else None,
        n_input_errors=n_errors,
        predict_s=round(t_pred, 2),
        seconds=round(time.perf_counter() - t0, 2),
    )
    paths = save_report(report, out_dir, name)
    df = pd.DataFrame(
        {
            "utt_id": [it["utt_id"] for it in items],
            "speaker": [it.get("speaker") for it in items],
            "label": y_true,
            "prediction": [labels[i] for i in pred],
            "confidence": probs[np.arange(len(pred)), pred],
        }
    )
    for j, lab in enumerate(labels):
        df[f"p_{lab}"] = probs[:, j]
    pred_path = os.path.join(out_dir, f"{os.path.splitext(os.path.basename(paths['json']))[0]}_predictions.parquet")
    df.to_parquet(pred_path, index=False)
    report["files"] = {**paths, "predictions": pred_path}
    print(format_report(report))
    if report["ci"]:
        print(format_intervals(report["ci"], report["ci"]["unit"]))
    print(json.dumps(report["files"]))
    return report
