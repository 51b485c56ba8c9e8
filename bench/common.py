"""Shared helpers for the benchmarks: the work directory, the demo bundle, the corpus, stats, subprocess phases."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
PY = sys.executable
WORK = Path(os.environ.get("EMOQ_BENCH_DIR", "/tmp/emoq-bench")).resolve()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def demo_bundle() -> str:
    """An untrained bundle with the demo config (Whisper tiny.en, weighted layers, 16 queries, tiny Qwen2), exported
    like training exports it (LoRA adapter plus the merged LLM, which the label job serves by default)."""
    out = WORK / "bundle_merged"
    if (out / "bundle.json").exists():
        return str(out)
    from emoq_model.assets.tiny_llm import build_tiny_llm
    from emoq_model.assets.whisper_ct2 import build_whisper_tiny_en
    from emoq_model.bundle import save_bundle
    from emoq_model.config import demo_config_path, load_config
    from emoq_model.model import EmoQModel

    build_whisper_tiny_en()
    build_tiny_llm()
    tmp = WORK / f"bundle.tmp{os.getpid()}"
    save_bundle(EmoQModel(load_config(demo_config_path())), tmp, merge_llm=True)
    os.replace(tmp, out)
    return str(out)


def asterisk_clips(lo: float = 2.0, hi: float = 4.0) -> list[tuple[str, float]]:
    """Real speech clips (8 kHz WAV, Debian asterisk-core-sounds) with durations in [lo, hi] s, sorted by name."""
    import soundfile as sf

    from emoq_model.assets.speech_samples import asterisk_sounds_dir

    out = []
    for p in sorted(asterisk_sounds_dir().rglob("*.wav")):  # fetched on first use
        d = sf.info(str(p)).duration
        if lo <= d <= hi:
            out.append((str(p), d))
    return out


def stats(xs: list[float]) -> dict:
    xs = [float(x) for x in xs]
    return {
        "median": statistics.median(xs),
        "min": min(xs),
        "max": max(xs),
        "n": len(xs),
        "spread_pct": 100 * (max(xs) - min(xs)) / statistics.median(xs) if statistics.median(xs) else 0.0,
        "values": [round(x, 3) for x in xs],
    }


def run_phase(script: str, phase: str, out: Path, *args: str, timeout: float = 900) -> dict:
    """Run ``script --phase PHASE --out OUT ARGS`` in a fresh process (own Ray / vLLM); returns its JSON."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.unlink()
    cmd = [PY, script, "--phase", phase, "--out", str(out), *args]
    t0 = time.perf_counter()
    log = out.with_suffix(".log")
    with open(log, "w") as f:
        p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, cwd=str(REPO))
    if p.returncode != 0 or not out.exists():
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"phase {phase} failed (rc {p.returncode}):\n{tail}")
    res = json.loads(out.read_text())
    res["process_wall_s"] = time.perf_counter() - t0
    return res


def machine() -> dict:
    import platform

    import psutil

    return {
        "cpus": os.cpu_count(),
        "mem_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg(),
    }


def save_results(json_path: str | Path, payload: dict, md_lines: list[str]) -> None:
    """Write the results JSON and its markdown table (same name, ``.md``) and print the table."""
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(payload, indent=1, default=float))
    md = "\n".join(md_lines) + "\n"
    print(md)
    json_path.with_suffix(".md").write_text(md)
