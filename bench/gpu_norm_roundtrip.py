"""Per-speaker feature normalisation of stacked encoder states in the label stage: the previous host round trip
(device → float32 numpy → normalise → device) against normalising where the frames are (``FeatureNorm.apply`` on
tensors, as ``EncodePrompts`` now does). HuBERT-large shapes: 25 layers × 1024, 4 s segments (200 frames).

    python3 bench/gpu_norm_roundtrip.py --out /tmp/norm.json [--device cuda] [--segments 64]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import stats  # noqa: E402


def main() -> None:
    import torch

    from emoq_model.features import FeatureNorm

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--segments", type=int, default=64)
    ap.add_argument("--layers", type=int, default=25)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    dev = torch.device(a.device)
    g = torch.Generator(device=dev).manual_seed(0)
    frames = [
        torch.randn(a.layers, 200, a.width, device=dev, generator=g, dtype=torch.bfloat16) for _ in range(a.segments)
    ]
    groups = [f"rec{i % 8}" for i in range(a.segments)]  # 8 speakers (recording channels)
    norm = FeatureNorm("speaker", group_key="spk", min_frames=500)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def host():  # before: frames to host numpy, normalised there, back to the device for the Former
        items = [{"frames": f.float().cpu().numpy(), "spk": s} for f, s in zip(frames, groups)]
        return [torch.from_numpy(it["frames"]).to(dev) for it in norm.apply(items)]

    def device():  # after: normalised where they are
        items = [{"frames": f.float(), "spk": s} for f, s in zip(frames, groups)]
        return [it["frames"] for it in norm.apply(items)]

    diff = max(float((x - y).abs().max()) for x, y in zip(host(), device()))
    times = {"host_roundtrip": [], "on_device": []}
    for r in range(a.reps + 1):
        for name, fn in (("host_roundtrip", host), ("on_device", device)):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            if r:
                times[name].append(time.perf_counter() - t0)
    audio_s = a.segments * 4.0
    res = {
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
        "segments": a.segments,
        "max_abs_diff": diff,
        **{k: stats(v) for k, v in times.items()},
        "speedup": stats([x / y for x, y in zip(times["host_roundtrip"], times["on_device"])]),
        "audio_s_per_s": {k: audio_s / stats(v)["median"] for k, v in times.items()},
    }
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps({k: (v["median"] if isinstance(v, dict) and "median" in v else v) for k, v in res.items()}))


if __name__ == "__main__":
    main()
