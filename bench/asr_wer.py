"""ASR on call segments: WER and speed of the separate ASR stage vs shared-encoder ASR, against the speech-only encoder.

On a call archive's ground-truth turns (``segments.csv``: cut from each channel and resampled whole, as labeling
cuts them; 8 kHz telephone speech), one run measures, with the same threads:

* ``encoder``  -- the emotion encoder alone (what speech-only labeling pays per segment),
* ``separate`` -- :class:`pipeline.labeling.asr.Transcribe` (HF ``generate`` on 30 s padded windows: a second
  encoder pass),
* ``shared``   -- the emotion encoder (real length, ``--tail`` s of silence) +
  :class:`pipeline.labeling.asr.WhisperDecoder` on its states (one encoder pass), for each ``--tail`` and each
  ``--decoder-dtypes`` entry (``auto``: the labeling default, bfloat16 where native).

WER (jiwer; lower-cased, punctuation stripped) against the archive's transcripts; speed in audio-s/s.

    python bench/asr_wer.py [SEGMENTS_CSV] [--tails 0,0.5] [--decoder-dtypes float32,auto] [--loops greedy,generate]
        [--limit 200]
        [--threads 2] [--out bench/results/asr_wer.json]

Without SEGMENTS_CSV the demo's evaluation archive is used (built and cached like ``jobs/demo.py`` builds it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import REPO  # noqa: E402  (sets the offline environment)


def segments(segments_csv: Path, rate: int, limit: int | None) -> tuple[list, list[str]]:
    """Waveforms (float32 at ``rate``) and reference transcripts of the archive's turns, cut as labeling cuts."""
    import numpy as np

    from pipeline.recipes import call_archive_manifest
    from pipeline.training.extract import decode_batch

    m = call_archive_manifest(segments_csv, "test")
    if limit:
        m = m.iloc[:limit]
    dec = decode_batch(m, rate, 60.0)
    ok = dec[dec["error"].isna()]
    if len(ok) != len(dec):
        raise RuntimeError(f"{len(dec) - len(ok)} segments failed to decode: {dec['error'].dropna().unique()[:3]}")
    return [np.frombuffer(a, "<f4") for a in ok["audio"]], [str(t) for t in ok["transcript"]]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("segments_csv", nargs="?", default=None)
    ap.add_argument("--tails", default="0,0.5", help="comma list of whisper_tail_s values for the shared path")
    ap.add_argument("--decoder-dtypes", default="float32", help="comma list of shared-decoder dtypes (auto, ...)")
    ap.add_argument(
        "--loops", default="greedy", help="comma list of shared-decoder loops: greedy (the default), generate"
    )
    ap.add_argument("--limit", type=int, default=None, help="first N turns only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16, help="segments per encoder / decoder call")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "asr_wer.json"))
    a = ap.parse_args(argv)
    import torch

    from emoq_model.assets.whisper_ct2 import build_whisper_tiny_en
    from emoq_model.config import EncoderConfig
    from emoq_model.encoder import SpeechEncoder
    from pipeline.labeling.asr import Transcribe, WhisperDecoder
    from pipeline.labeling.asr import word_error_rate as wer
    from pipeline.labeling.encode import length_batches

    torch.set_num_threads(a.threads)
    if a.segments_csv is None:
        from pipeline.demo.run import demo_archives

        a.segments_csv = str(demo_archives()["archive"].parent / "segments.csv")
    whisper = str(build_whisper_tiny_en())
    waves, refs = segments(Path(a.segments_csv), 16000, a.limit)
    audio_s = sum(len(w) for w in waves) / 16000
    batches = length_batches([len(w) for w in waves], a.batch, 10**12)
    report = {
        "segments_csv": a.segments_csv,
        "segments": len(waves),
        "audio_s": round(audio_s, 1),
        "threads": a.threads,
        "asr_model": "whisper-tiny.en",
        "runs": {},
    }

    def timed(fn):
        t = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t

    def encode_all(enc):
        outs = [None] * len(waves)
        for idx in batches:
            o = enc([waves[i] for i in idx])
            for k, i in enumerate(idx):
                outs[i] = (o.decoder_states[k], int(o.decoder_lengths[k]))
        return outs

    enc0 = SpeechEncoder(EncoderConfig(path=whisper, layer="weighted"))
    encode_all(enc0)  # warm-up
    _, t_enc = timed(lambda: encode_all(enc0))
    report["runs"]["encoder"] = {"wall_s": round(t_enc, 2), "audio_s_per_s": round(audio_s / t_enc, 1)}

    sep = Transcribe(whisper, sample_rate=16000, batch_size=a.batch)
    hyps, t = timed(lambda: sep.transcribe(waves))
    report["runs"]["separate"] = {
        "wer": round(wer(refs, hyps), 4),
        "wall_s": round(t, 2),
        "audio_s_per_s": round(audio_s / t, 1),
        "with_encoder_audio_s_per_s": round(audio_s / (t + t_enc), 1),
    }
    decoders = {
        (d, loop): WhisperDecoder(whisper, batch_size=a.batch, dtype=d, use_generate=loop == "generate")
        for d in a.decoder_dtypes.split(",")
        for loop in a.loops.split(",")
    }
    for tail, ((dtype, loop), dec) in [(float(x), d) for x in a.tails.split(",") for d in decoders.items()]:
        enc = SpeechEncoder(EncoderConfig(path=whisper, layer="weighted", whisper_tail_s=tail))
        states, t_e = timed(lambda: encode_all(enc))

        def decode():
            out = [None] * len(waves)
            for idx in batches:
                n = max(states[i][1] for i in idx)
                x = torch.stack(
                    [torch.nn.functional.pad(states[i][0][:n], (0, 0, 0, n - states[i][0][:n].shape[0])) for i in idx]
                )
                for i, text in zip(idx, dec.transcribe_states(x, [states[i][1] for i in idx])):
                    out[i] = text
            return out

        hyps, t_d = timed(decode)
        name = (
            f"shared_tail{tail:g}"
            + ("" if dtype == "float32" else f"_{dtype}")
            + ("" if loop == "greedy" else "_generate")
        )
        report["runs"][name] = {
            "decoder_dtype": str(dec.dtype).removeprefix("torch."),
            "decoder_loop": loop,
            "wer": round(wer(refs, hyps), 4),
            "encoder_wall_s": round(t_e, 2),
            "decoder_wall_s": round(t_d, 2),
            "audio_s_per_s": round(audio_s / (t_e + t_d), 1),
            "examples": [{"ref": r, "hyp": h} for r, h in list(zip(refs, hyps))[:5]],
        }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    print(
        json.dumps(
            {k: {kk: vv for kk, vv in v.items() if kk != "examples"} for k, v in report["runs"].items()}, indent=1
        )
    )
    return report


if __name__ == "__main__":
    main()
