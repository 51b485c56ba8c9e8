"""How close the encoder stage runs to this CPU's matmul peak, per precision: where the labeling floor can still gain.

    .venv/bin/python bench/encoder_ceiling.py [--reps 3]    # bench/results/encoder_ceiling.{json,md}

The demo encoder (Whisper tiny.en, weighted layers) on the label-throughput corpus's segments (120 clips + 2 calls,
length batches of 32 as labeling forms them), in float32 / bfloat16 / bfloat16-mixed (``encoder.dtype``):

* wall time (best of ``--reps`` after one untimed pass) and audio-s/s;
* one profiled pass (``torch.profiler``, FLOPs counted): self time of the matmuls (``addmm`` / ``mm`` / ``bmm``),
  attention, convolutions and everything else, and the matmuls' achieved GFLOP/s;
* this CPU's matmul peak in each dtype (``torch.addmm`` on the encoder's own shapes and on 2048³), so the
  matmuls' share of the peak is measured, not assumed;
* the ceiling: the audio-s/s the encoder would reach if everything but its matmuls took no time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import demo_bundle, machine, save_results  # noqa: E402

OPTIONS = ("float32", "bfloat16", "bfloat16-mixed")
GEMM = ("aten::addmm", "aten::mm", "aten::bmm")
ATTENTION = ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math")
CONV = ("aten::mkldnn_convolution", "aten::convolution")


def matmul_peak(dtype, shapes, reps: int = 10) -> dict:
    """GFLOP/s of ``torch.addmm`` per ``(m, k, n)`` shape, best of ``reps``."""
    import torch

    out = {}
    for m, k, n in shapes:
        a, b, bias = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype), torch.randn(n).to(dtype)
        torch.addmm(bias, a, b)
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.addmm(bias, a, b)
            best = min(best, time.perf_counter() - t0)
        out[f"{m}x{k}x{n}"] = 2 * m * k * n / best / 1e9
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "encoder_ceiling.json"))
    a = ap.parse_args()
    import torch
    from label_throughput import make_corpus
    from torch.profiler import ProfilerActivity, profile

    from emoq_model.bundle import load_bundle
    from pipeline.labeling.encode import length_batches
    from pipeline.labeling.job import encoder_sample_rate
    from pipeline.labeling.prepare import PrepareConfig, prepare_recording, split_segments
    from pipeline.labeling.sources import discover

    torch.set_num_threads(2)
    bundle = demo_bundle()
    pc = PrepareConfig(sample_rate=encoder_sample_rate(bundle))
    prepared = [prepare_recording(r.to_row(), pc) for r in discover([make_corpus(120, 2)["manifest"]])]
    audio_s = float(sum(p["duration_s"] or 0 for p in prepared))
    waves = [w for p in prepared for w in split_segments(p)]
    batches = length_batches([len(w) for w in waves], 32, 240 * pc.sample_rate, float(pc.sample_rate))
    res = {"machine": machine(), "audio_s": audio_s, "segments": len(waves), "options": {}}
    for opt in OPTIONS:
        enc = load_bundle(bundle, load_llm=False, with_encoder=True, overrides=[f"encoder.dtype={opt}"]).encoder
        with torch.inference_mode():

            def encode():
                for idx in batches:
                    enc([waves[i] for i in idx])

            encode()  # oneDNN builds kernels per shape
            times = []
            for _ in range(a.reps):
                t0 = time.perf_counter()
                encode()
                times.append(time.perf_counter() - t0)
            with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
                encode()
        ev = prof.key_averages()
        self_s = {e.key: e.self_cpu_time_total / 1e6 for e in ev}
        gemm_flops = sum(e.flops for e in ev if e.key in GEMM)
        parts = {
            "matmul": sum(self_s.get(k, 0.0) for k in GEMM),
            "attention": sum(self_s.get(k, 0.0) for k in ATTENTION),
            "convolution": sum(self_s.get(k, 0.0) for k in CONV),
        }
        parts["other"] = sum(self_s.values()) - sum(parts.values())
        best = min(times)
        res["options"][opt] = {
            "wall_s": times,
            "audio_s_per_s": audio_s / best,
            "profiled_s": parts,
            "matmul_gflop": gemm_flops / 1e9,
            "matmul_gflop_per_s": gemm_flops / 1e9 / parts["matmul"],
            "ceiling_audio_s_per_s": audio_s / parts["matmul"],  # nothing but the matmuls left
        }
    shapes = [(4352, 384, 384), (4352, 384, 1536), (4352, 1536, 384), (2048, 2048, 2048)]
    res["matmul_peak_gflop_per_s"] = {
        "float32": matmul_peak(torch.float32, shapes),
        "bfloat16": matmul_peak(torch.bfloat16, shapes),
    }
    peak = {k: max(v.values()) for k, v in res["matmul_peak_gflop_per_s"].items()}
    base = res["options"]["float32"]["audio_s_per_s"]
    md = [
        f"Encoder alone, {audio_s:.0f} s of audio ({len(waves)} segments); matmul peak of this CPU (torch.addmm, "
        f"best shape): float32 {peak['float32']:.0f}, bfloat16 {peak['bfloat16']:.0f} GFLOP/s.",
        "",
        "| encoder.dtype | audio-s/s | × float32 | matmul s | attention s | conv s | other s | matmul GFLOP/s "
        "| of peak | ceiling audio-s/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for opt, r in res["options"].items():
        p = r["profiled_s"]
        pk = peak["float32" if opt == "float32" else "bfloat16"]
        md.append(
            f"| {opt} | {r['audio_s_per_s']:.0f} | {r['audio_s_per_s'] / base:.2f} | {p['matmul']:.2f} | "
            f"{p['attention']:.2f} | {p['convolution']:.2f} | {p['other']:.2f} | {r['matmul_gflop_per_s']:.0f} | "
            f"{r['matmul_gflop_per_s'] / pk:.0%} | {r['ceiling_audio_s_per_s']:.0f} |"
        )
    save_results(a.json, res, md)


if __name__ == "__main__":
    main()
