"""A small synthetic call-centre archive: stereo 8 kHz phone calls with per-turn emotion ground truth.

Channel 0 is the agent, channel 1 the customer (two different synthetic speakers). Turns alternate, agent first,
with silences and low-level line noise between them; each turn is one or two sentences spoken with one emotion
label. The customer's emotion follows an arc along the call (``escalate``: neutral -> angry -> neutral, ``sad``:
neutral -> sad -> neutral, ``pleased``: neutral -> happy), the agent is mostly neutral and sometimes happy (more
so when greeting and closing). Speech comes from :func:`pipeline.demo_corpus.synthesize` (telephone band).

Outputs under ``out_dir``: ``calls/<recording_id>.wav`` (stereo, 8 kHz, mu-law or PCM16), ``calls.csv`` /
``calls.parquet`` (recording_id, path, channels="agent,customer", ...) and ``segments.csv`` / ``segments.parquet``
(recording_id, path, channel, channel_name, segment, start_s, end_s, label, transcript, speaker, strength).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.demo_corpus import (Speaker, check_tools, emotion_prosody, make_noise, make_speakers, set_active_level,
                                  synthesize, write_audio)

RATE = 8000
CHANNELS = ("agent", "customer")

# Scripts by phase of the call; the wording is emotionally neutral (the label lives in the voice).
AGENT_LINES = {
    "open": ("Thank you for calling customer service, my name is Sam.", "Good morning, this is the support line.",
             "How can I help you today?"),
    "middle": (
        "Could you give me your account number, please?",
        "Let me look that up for you.",
        "I can see the order on your account.",
        "The parcel left our warehouse on Monday.",
        "I will check the billing history for this month.",
        "The second charge is a pending authorisation.",
        "I can arrange a replacement for you.",
        "The refund takes about five working days.",
        "Can you confirm the delivery address?",
        "I have updated the details on your account.",
        "You will receive a confirmation email shortly.",
        "The technician can come on Thursday morning.",
    ),
    "close": ("Is there anything else I can help you with?", "Thank you for your patience.",
              "Have a good rest of the day."),
}
CUSTOMER_LINES = {
    "open": ("Hello, I am calling about my last invoice.", "Hi, I have a question about my order.",
             "Hello, my internet connection is not working."),
    "middle": (
        "My account number is four five two one nine.",
        "The package was supposed to arrive on Monday.",
        "I was charged twice this month.",
        "The tracking page still shows the same status.",
        "I already called about this last week.",
        "The address is twelve Station Road.",
        "I ordered the blue one, not the black one.",
        "Nobody told me about the extra fee.",
        "I have been waiting for the technician since Friday.",
        "The connection drops every evening.",
        "Can you send the replacement to my office instead?",
        "I would like to know when the refund arrives.",
        "So the money will be back next week.",
    ),
    "close": ("Okay, that is everything for now.", "No, that is all.", "Right, I will wait for the email."),
}

ARCS = {  # (end of phase as a fraction of the call, label); the last phase ends at 1.0
    "escalate": (("neutral", 0.2, 0.35), ("angry", 0.65, 0.8), ("neutral", 1.0, 1.0)),
    "sad": (("neutral", 0.15, 0.3), ("sad", 0.7, 0.85), ("neutral", 1.0, 1.0)),
    "pleased": (("neutral", 0.3, 0.5), ("happy", 1.0, 1.0)),
}
ARC_ORDER = ("escalate", "sad", "pleased")


def _customer_label(phases: list[tuple[str, float]], pos: float, previous: str | None,
                    rng: np.random.Generator) -> str:
    for label, end in phases:
        if pos < end:
            break
    # emotions are not constant within a phase, but the first turn of a phase always shows it
    if label != "neutral" and previous == label and rng.random() < 0.2:
        return "neutral"
    return label


def _agent_label(first: bool, closing: bool, rng: np.random.Generator) -> str:
    p_happy = 0.6 if (first or closing) else 0.2
    return "happy" if rng.random() < p_happy else "neutral"


def render_call(spec: dict) -> tuple[dict, list[dict]]:
    """Synthesize and write one call; returns its manifest row and its segment rows."""
    rng = np.random.default_rng([spec["seed"], 10, spec["index"]])
    agent, customer = Speaker.from_json(spec["agent"]), Speaker.from_json(spec["customer"])
    total_s = spec["minutes"] * 60.0
    n = int(round(total_s * RATE))
    x = np.zeros((2, n), dtype=np.float32)
    arc = spec["arc"]
    phases = [(lab, float(rng.uniform(lo, hi))) for lab, lo, hi in ARCS[arc]]
    segs: list[dict] = []
    decks: dict[tuple[int, str], list[int]] = {}
    t = float(rng.uniform(0.3, 0.8))
    ch = 0
    closing_from = total_s - 10.0  # roughly the last two turns
    while t < total_s - 1.5:
        speaker = (agent, customer)[ch]
        phase = "open" if len(segs) < 2 else ("close" if t >= closing_from else "middle")
        lines = (AGENT_LINES if ch == 0 else CUSTOMER_LINES)[phase]
        k = 1 if rng.random() < 0.6 else 2
        if phase == "open" and ch == 0:  # greeting + offer of help
            text = f"{lines[int(rng.integers(2))]} {lines[2]}"
        else:  # deal from a shuffled deck per channel and phase: few repeats within a call
            deck = decks.setdefault((ch, phase), [])
            picked: list[int] = []
            while len(picked) < min(k, len(lines)):
                if not deck:
                    deck.extend(rng.permutation(len(lines)).tolist())
                i = deck.pop()
                if i not in picked:
                    picked.append(i)
            text = " ".join(lines[i] for i in picked)
        if ch == 0:
            label = _agent_label(not segs, t >= closing_from, rng)
        else:
            previous = next((g["label"] for g in reversed(segs) if g["channel"] == 1), None)
            label = _customer_label(phases, t / total_s, previous, rng)
        strength = float(rng.uniform(0.6, 1.0)) if label != "neutral" else 0.0
        prosody = emotion_prosody(label, strength)
        y = synthesize(speaker, text, prosody, telephone=True)
        y = set_active_level(y, RATE, speaker.level_dbfs + prosody.gain_db)
        start = int(round(t * RATE))
        if start + len(y) > n - int(0.3 * RATE):
            break  # the next turn does not fit: the call ends here
        x[ch, start: start + len(y)] = y
        segs.append(dict(channel=ch, channel_name=CHANNELS[ch], start_s=round(start / RATE, 4),
                         end_s=round((start + len(y)) / RATE, 4), label=label, transcript=text,
                         speaker=speaker.speaker_id, strength=round(strength, 3)))
        t = (start + len(y)) / RATE + float(rng.uniform(0.3, 1.2))
        ch = 1 - ch
    # low-level line noise (independent per channel), under the speech too
    for c in range(2):
        level = 10 ** (float(rng.uniform(-62.0, -54.0)) / 20)
        x[c] += make_noise(n, "pink", rng) * np.float32(level)
    write_audio(spec["path"], x, RATE, "wav", telephone_codec=spec["encoding"])
    rid = spec["recording_id"]
    for i, s in enumerate(segs):
        s.update(recording_id=rid, path=spec["path"], segment=i)
    row = dict(recording_id=rid, path=spec["path"], channels=",".join(CHANNELS), sample_rate=RATE,
               duration_s=round(n / RATE, 4), n_segments=len(segs), agent_speaker=agent.speaker_id,
               customer_speaker=customer.speaker_id, agent_voice=agent.voice, customer_voice=customer.voice,
               customer_arc=arc, encoding=spec["encoding"])
    return row, segs


SEGMENT_COLUMNS = ["recording_id", "path", "channel", "channel_name", "segment", "start_s", "end_s", "label",
                   "transcript", "speaker", "strength"]


def make_call_archive(out_dir: str | Path, n_calls: int = 3, minutes: float = 2.0, seed: int = 0,
                      encoding: str = "ulaw", workers: int = 2) -> Path:
    """Write ``n_calls`` stereo calls of ``minutes`` each under ``out_dir``; returns the path of ``calls.csv``
    (``segments.csv`` next to it holds the ground truth). ``encoding``: ulaw | alaw | pcm16."""
    if encoding not in ("ulaw", "alaw", "pcm16"):
        raise ValueError("encoding must be ulaw, alaw or pcm16")
    if minutes * 60 < 5:
        raise ValueError("calls must be at least 5 s long")
    check_tools()
    out = Path(out_dir).resolve()
    (out / "calls").mkdir(parents=True, exist_ok=True)
    # two agents take turns over the calls; one customer per call (call i is the same whatever n_calls)
    n_agents = 2
    speakers = make_speakers(n_agents + n_calls, seed=seed + 7919, mode="easy", prefix="callspk")
    agents, customers = speakers[:n_agents], speakers[n_agents:]
    specs = []
    for i in range(n_calls):
        rid = f"call_{i:03d}"
        specs.append(dict(index=i, seed=seed, recording_id=rid, path=str(out / "calls" / f"{rid}.wav"),
                          minutes=minutes, encoding=encoding, arc=ARC_ORDER[i % len(ARC_ORDER)],
                          agent=agents[i % n_agents].to_json(), customer=customers[i].to_json()))
    if workers > 1 and n_calls >= 4:
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as ex:
            results = list(ex.map(render_call, specs))
    else:
        results = [render_call(s) for s in specs]
    calls = pd.DataFrame([r for r, _ in results])
    segments = pd.DataFrame([s for _, ss in results for s in ss], columns=SEGMENT_COLUMNS)
    calls.to_csv(out / "calls.csv", index=False)
    calls.to_parquet(out / "calls.parquet", index=False)
    segments.to_csv(out / "segments.csv", index=False)
    segments.to_parquet(out / "segments.parquet", index=False)
    return out / "calls.csv"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--encoding", default="ulaw", choices=("ulaw", "alaw", "pcm16"))
    a = ap.parse_args(argv)
    print(make_call_archive(a.out_dir, a.calls, a.minutes, a.seed, a.encoding))


if __name__ == "__main__":
    main()
