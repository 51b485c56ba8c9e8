"""Encoder input path on a GPU: per-clip host feature extraction (before) vs one flat copy padded and normalised
on the device (after, ``SpeechEncoder._wav2vec2_inputs``), against the forward-only ceiling, in one run.

    python3 bench/gpu_encoder_inputs.py --out /tmp/enc.json [--small] [--device cuda]

Model: HuBERT-large-shaped random weights in bf16 (``gpu_throughput.build_encoder``), ``layer="weighted"`` (all 25
hidden states stacked, as the paper's front end), loaded through ``SpeechEncoder``. Phases are interleaved per
repetition; median [min-max] of ``--reps``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import stats  # noqa: E402
from gpu_throughput import SR, build_encoder  # noqa: E402


def main() -> None:
    import torch

    from emoq_model.config import EncoderConfig
    from emoq_model.encoder import SpeechEncoder

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    size = "small" if a.small else "full"
    root = Path(tempfile.mkdtemp())
    path = build_encoder(root / "enc", size, a.device)
    enc = SpeechEncoder(
        EncoderConfig(
            path=str(path), device=a.device, layer="weighted", dtype="bfloat16" if a.device == "cuda" else "float32"
        )
    )
    fast = enc._wav2vec2_inputs

    def slow(waves, lengths):  # the previous path: the feature extractor per clip on the host, then one copy
        x = torch.zeros(len(waves), int(lengths.max()), dtype=torch.float32)
        for i, w in enumerate(waves):
            f = enc.feature_extractor(w, sampling_rate=SR, return_tensors="np")["input_values"][0]
            x[i, : f.shape[-1]] = torch.from_numpy(f)
        mask = torch.arange(x.shape[1])[None] < lengths[:, None]
        return x.to(enc.device), mask.to(enc.device)

    def sync():
        if a.device == "cuda":
            torch.cuda.synchronize()

    rng = np.random.default_rng(0)
    cases = [(64, 4.0), (32, 1.0), (32, 8.0), (128, 2.0)]
    res = {"device": torch.cuda.get_device_name() if a.device == "cuda" else "cpu", "size": size, "cases": []}
    for batch, sec in cases:
        waves = [
            (0.1 * rng.standard_normal(int(sec * SR * rng.uniform(0.8, 1.0)))).astype(np.float32) for _ in range(batch)
        ]
        audio_s = sum(len(w) for w in waves) / SR
        lengths = torch.tensor([len(w) for w in waves])
        x_dev, m_dev = fast(waves, lengths)
        ref, _ = slow(waves, lengths)
        diff = float((x_dev.float() - ref.float()).abs().max())

        @torch.inference_mode()
        def forward_only():
            out = enc.model(x_dev.to(enc.dtype), output_hidden_states=True, attention_mask=m_dev.long())
            return enc._select(out.hidden_states, out.last_hidden_state)

        times = {"before": [], "after": [], "forward_only": []}
        for r in range(a.reps + 1):
            for name in times:
                if name == "before":
                    enc._wav2vec2_inputs = slow
                    fn = lambda: enc(waves)  # noqa: E731
                elif name == "after":
                    enc._wav2vec2_inputs = fast
                    fn = lambda: enc(waves)  # noqa: E731
                else:
                    fn = forward_only
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                if r:  # the first round is warm-up
                    times[name].append(audio_s / (time.perf_counter() - t0))
        enc._wav2vec2_inputs = fast
        row = {"batch": batch, "seconds": sec, "inputs_max_abs_diff": diff, **{k: stats(v) for k, v in times.items()}}
        row["after_over_before"] = stats([x / y for x, y in zip(times["after"], times["before"])])
        res["cases"].append(row)
        print(json.dumps({k: (v["median"] if isinstance(v, dict) else v) for k, v in row.items()}), flush=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    lines = [
        f"Device: {res['device']}; HuBERT-{size} bf16, all hidden states stacked; audio-s/s, median [min-max] of "
        f"{a.reps}",
        "",
        "| batch x s | before (host extractor) | after (device) | after/before | forward only | inputs max abs diff |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for c in res["cases"]:

        def f(s):
            return f"{s['median']:,.0f} [{s['min']:,.0f}–{s['max']:,.0f}]"

        lines.append(
            f"| {c['batch']} × {c['seconds']:g} | {f(c['before'])} | {f(c['after'])} | "
            f"{c['after_over_before']['median']:.2f} | {f(c['forward_only'])} | {c['inputs_max_abs_diff']:.1e} |"
        )
    Path(a.out).with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
