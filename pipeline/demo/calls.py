"""A synthetic call-centre archive: stereo 8 kHz phone calls with per-turn emotion ground truth.

Channel 0 is the agent, channel 1 the customer. Turns alternate, agent first, with silences between them; each
turn is one or two sentences spoken with one emotion label. The agent is mostly neutral, sometimes happy (more so
when greeting and closing). The customer follows a *script*, cycled over the calls in :data:`SCRIPT_ORDER`
(period 6: any 12 consecutive calls hold every script twice):

  ``escalate`` neutral -> angry -> neutral   ``sad`` neutral -> sad -> neutral   ``pleased`` neutral -> happy
  ``upset`` angry all call                  ``calm`` neutral all call           ``grieving`` sad all call

Why: labeling is evaluated under deployment conditions, not on the training generator's clip mix -- per-channel
label mixes are skewed (a calm customer never leaves neutral, an upset one never leaves angry), channels carry one
emotion throughout (nothing neutral to contrast with), speakers are unseen (``exclude_voices`` /
:func:`exclude_voices_from` keep the training corpus's voices out), and lines differ: one of three agents per call,
pink line noise at -62..-45 dBFS and a -6..+6 dB gain offset per channel (different lines / AGC), telephone band,
mu-law, A-law or PCM16. Speech comes from :func:`pipeline.demo.synthesis.synthesize`.

Determinism: call ``i`` (speakers, script, audio bytes) depends on ``seed``, ``i`` and the options, never on
``n_calls`` or ``workers``.

Outputs under ``out_dir``: ``calls/<recording_id>.wav``, ``calls.csv`` / ``calls.parquet`` (recording_id, path,
channels="agent,customer", customer_arc=<script>, voices, per-channel gain and noise, ...) and ``segments.csv`` /
``segments.parquet`` (recording_id, path, channel, channel_name, segment, start_s, end_s, label, transcript,
speaker, strength, cue). With ``cues=True`` the wording carries emotion too (:mod:`pipeline.demo.cues`).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.demo.codecs import write_audio
from pipeline.demo.corpus import DEFAULT_SENTENCES
from pipeline.demo.cues import cue_family, cue_line, realise
from pipeline.demo.synthesis import check_tools, make_noise, set_active_level, synthesize
from pipeline.demo.voices import LABELS, Speaker, emotion_prosody, make_speakers, max_speakers

RATE = 8000
CHANNELS = ("agent", "customer")

# Scripts by phase of the call; the wording is emotionally neutral (the label lives in the voice).
AGENT_LINES = {
    "open": (
        "Thank you for calling customer service, my name is Sam.",
        "Good morning, this is the support line.",
        "How can I help you today?",
    ),
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
    "close": (
        "Is there anything else I can help you with?",
        "Thank you for your patience.",
        "Have a good rest of the day.",
    ),
}
CUSTOMER_LINES = {
    "open": (
        "Hello, I am calling about my last invoice.",
        "Hi, I have a question about my order.",
        "Hello, my internet connection is not working.",
    ),
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

# Other services' calls (banking, telecom, insurance, travel): training calls speak these, never the lines above.
SERVICE_AGENT_LINES = (
    "Welcome to the bank, you are speaking with Alex.",
    "Can I take the first line of your address?",
    "I can see three payments on the statement.",
    "The card was blocked for your security.",
    "Your new contract starts on the first of the month.",
    "I will put a note on the account.",
    "The claim number is on the letter we sent.",
    "The engineer will call before the visit.",
    "Your booking reference has six letters.",
    "The transfer usually takes one working day.",
    "I have reset the router from our side.",
    "The premium goes up by two pounds a month.",
    "Let me transfer you to the right department.",
    "Is there a number we can reach you on?",
)
SERVICE_CUSTOMER_LINES = (
    "I am calling about a payment I do not recognise.",
    "My card stopped working at the supermarket.",
    "The signal at my house is very weak.",
    "I want to change the date of my flight.",
    "The form asks for a policy number I do not have.",
    "My bill is higher than last month.",
    "I moved house in the spring.",
    "The app says my session has expired.",
    "I need a copy of the insurance certificate.",
    "The engineer did not turn up this morning.",
    "My daughter is a second card holder.",
    "Can I pay the rest by bank transfer?",
    "The hotel was not the one in the booking.",
    "I would like to close the old account.",
)
# Wording: ``calls`` (the call-centre lines above), ``service`` (other services' lines) or ``generic`` (the demo
# corpus's everyday sentences), any phase; ``training`` = service + generic. Training calls use other words than
# the archive they are evaluated on, and many of them, so the model cannot key on wording.
_any_phase = lambda lines: {"open": lines, "middle": lines, "close": lines}  # noqa: E731
LINE_SETS = {
    "calls": (AGENT_LINES, CUSTOMER_LINES),
    "service": (_any_phase(SERVICE_AGENT_LINES), _any_phase(SERVICE_CUSTOMER_LINES)),
    "generic": (_any_phase(DEFAULT_SENTENCES), _any_phase(DEFAULT_SENTENCES)),
    "training": (
        _any_phase(SERVICE_AGENT_LINES + DEFAULT_SENTENCES[::2]),
        _any_phase(SERVICE_CUSTOMER_LINES + DEFAULT_SENTENCES[1::2]),
    ),
}

# Customer scripts: phases of (label, lo, hi) -- the phase ends at a fraction of the call drawn from [lo, hi]; the
# last phase ends at 1.0. A single-phase script is one emotion for the whole call: no turn of it falls back to
# neutral. In multi-phase scripts a turn repeating an emotional phase's label may fall back to neutral (20 %).
ARCS = {
    "escalate": (("neutral", 0.2, 0.35), ("angry", 0.65, 0.8), ("neutral", 1.0, 1.0)),
    "sad": (("neutral", 0.15, 0.3), ("sad", 0.7, 0.85), ("neutral", 1.0, 1.0)),
    "pleased": (("neutral", 0.3, 0.5), ("happy", 1.0, 1.0)),
    "upset": (("angry", 1.0, 1.0),),
    "calm": (("neutral", 1.0, 1.0),),
    "grieving": (("sad", 1.0, 1.0),),
    "mixed": (("neutral", 1.0, 1.0),),  # training calls: per-channel random skewed mixes (see _mixed_label)
}
# Call i gets SCRIPT_ORDER[i % 6]. The first three are the archive's original arcs, in their original order.
SCRIPT_ORDER = ("escalate", "sad", "pleased", "upset", "calm", "grieving")
ARC_ORDER = SCRIPT_ORDER  # former name
N_AGENTS = 3
NOISE_DBFS = (-62.0, -45.0)  # line noise level per channel (pink, under the speech too)
CHANNEL_GAIN_DB = (-6.0, 6.0)  # per-channel offset on the whole channel (line loss / AGC)
_VOICE_ALIASES = {"kal": "kal16"}
# ``mixed`` script (training calls): both channels draw each turn from their own Dirichlet mix of the labels
MIXED_CONCENTRATION = 0.4  # small: skewed mixes, often one emotion dominating a channel
MIXED_PRIOR = (3.0, 1.0, 1.0, 1.0)  # LABELS order: neutral is half of the speech on average, as in real calls
MIXED_PERSISTENCE = 0.5  # chance a turn repeats the channel's previous emotion
MIXED_MIN_STRENGTH = (
    0.35  # emotional turns of training calls range from weak to full strength  # flite: the same voice under two names
)


def _customer_label(phases: list[tuple[str, float]], pos: float, previous: str | None, rng: np.random.Generator) -> str:
    if previous is None:  # the customer's first turn opens the script, however short the call
        return phases[0][0]
    for label, end in phases:  # noqa: B007  (the label of the phase pos falls in is used after the loop)
        if pos < end:
            break
    # emotions are not constant within a phase, but the first turn of a phase always shows it
    if len(phases) > 1 and label != "neutral" and previous == label and rng.random() < 0.2:
        return "neutral"
    return label


def _mixed_mix(rng: np.random.Generator, dominant: float = 0.0) -> np.ndarray:
    """A training channel's label mix: a skewed Dirichlet draw, or (a ``dominant`` share of the channels) one label
    holding 80-100 % of it. Real calls have customers upset or grieving from the first turn to the last, and the
    Dirichlet alone almost never makes one (no angry-dominated channel among the demo's 72 training channels)."""
    mix = rng.dirichlet(MIXED_CONCENTRATION * np.asarray(MIXED_PRIOR))
    if dominant > 0 and rng.random() < dominant:  # no draw at 0: archives made without it stay bit-identical
        top = int(rng.integers(len(LABELS)))
        share = float(rng.uniform(0.8, 1.0))
        rest = np.delete(mix, top) + 1e-9  # the other labels keep the draw's proportions
        rest = rest / rest.sum() * (1.0 - share)
        mix = np.insert(rest, top, share)
    return mix


def _mixed_label(mix: np.ndarray, previous: str | None, rng: np.random.Generator) -> str:
    """``mixed`` script: a channel keeps its previous emotion for a while, else draws from its own skewed mix."""
    if previous is not None and rng.random() < MIXED_PERSISTENCE:
        return previous
    return LABELS[int(rng.choice(len(LABELS), p=mix))]


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
    mixed = arc == "mixed"
    if mixed:  # each channel its own skewed label mix (a training call: no script to learn)
        mixes = [_mixed_mix(rng, spec.get("dominant", 0.0)) for _ in CHANNELS]
    lo_strength = MIXED_MIN_STRENGTH if mixed else 0.6
    line_set = LINE_SETS[spec.get("lines", "calls")]
    segs: list[dict] = []
    decks: dict[tuple[int, str], list[int]] = {}
    cues, cue_decks = bool(spec.get("cues", False)), {}
    t = float(rng.uniform(0.3, 0.8))
    ch = 0
    closing_from = total_s - 10.0  # roughly the last two turns
    while t < total_s - 1.5:
        speaker = (agent, customer)[ch]
        phase = "open" if len(segs) < 2 else ("close" if t >= closing_from else "middle")
        lines = line_set[ch][phase]
        k = 1 if rng.random() < 0.6 else 2
        if phase == "open" and ch == 0 and line_set is LINE_SETS["calls"]:  # greeting + offer of help
            text = first = f"{lines[int(rng.integers(2))]} {lines[2]}"
        else:  # deal from a shuffled deck per channel and phase: few repeats within a call
            deck = decks.setdefault((ch, phase), [])
            picked: list[int] = []
            while len(picked) < min(k, len(lines)):
                if not deck:
                    deck.extend(rng.permutation(len(lines)).tolist())
                i = deck.pop()
                if i not in picked:
                    picked.append(i)
            text, first = " ".join(lines[i] for i in picked), lines[picked[0]]
        if mixed:
            previous = next((g["label"] for g in reversed(segs) if g["channel"] == ch), None)
            label = _mixed_label(mixes[ch], previous, rng)
        elif ch == 0:
            label = _agent_label(not segs, t >= closing_from, rng)
        else:
            previous = next((g["label"] for g in reversed(segs) if g["channel"] == 1), None)
            label = _customer_label(phases, t / total_s, previous, rng)
        strength = float(rng.uniform(lo_strength, 1.0)) if label != "neutral" else 0.0
        realisation = "none"
        if cues:  # words that matter (pipeline.demo.cues): the cue replaces or leads the neutral wording
            realisation = realise(label, CHANNELS[ch], rng)
            cue = cue_line(cue_family(spec.get("lines", "calls")), CHANNELS[ch], label, realisation, cue_decks, rng)
            if cue is not None:
                text = cue if rng.random() < 0.5 else f"{cue} {first}"
            if realisation == "text":  # the words carry it, the voice does not
                strength = 0.0
        prosody = emotion_prosody(label if strength > 0 else "neutral", strength)
        y = synthesize(speaker, text, prosody, telephone=True)
        y = set_active_level(y, RATE, speaker.level_dbfs + prosody.gain_db)
        start = int(round(t * RATE))
        if start + len(y) > n - int(0.3 * RATE):
            break  # the next turn does not fit: the call ends here
        x[ch, start : start + len(y)] = y
        segs.append(
            dict(
                channel=ch,
                channel_name=CHANNELS[ch],
                start_s=round(start / RATE, 4),
                end_s=round((start + len(y)) / RATE, 4),
                label=label,
                transcript=text,
                speaker=speaker.speaker_id,
                strength=round(strength, 3),
                cue=realisation,
            )
        )
        t = (start + len(y)) / RATE + float(rng.uniform(0.3, 1.2))
        ch = 1 - ch
    # low-level line noise (independent per channel), under the speech too
    noise_dbfs = [float(rng.uniform(*NOISE_DBFS)) for _ in range(2)]
    for c in range(2):
        x[c] += make_noise(n, "pink", rng) * np.float32(10 ** (noise_dbfs[c] / 20))
    # then each line's own gain on the whole channel, speech and noise alike; a line that would clip is turned
    # down as a whole (its gain in the manifest is the one applied)
    gain_db = [float(rng.uniform(*CHANNEL_GAIN_DB)) for _ in range(2)]
    for c in range(2):
        peak = float(np.max(np.abs(x[c]))) * 10 ** (gain_db[c] / 20)
        if peak > 0.99:
            gain_db[c] -= 20 * np.log10(peak / 0.99)
        x[c] *= np.float32(10 ** (gain_db[c] / 20))
    write_audio(spec["path"], x, RATE, "wav", telephone_codec=spec["encoding"])
    rid = spec["recording_id"]
    for i, s in enumerate(segs):
        s.update(recording_id=rid, path=spec["path"], segment=i)
    row = dict(
        recording_id=rid,
        path=spec["path"],
        channels=",".join(CHANNELS),
        sample_rate=RATE,
        duration_s=round(n / RATE, 4),
        n_segments=len(segs),
        agent_speaker=agent.speaker_id,
        customer_speaker=customer.speaker_id,
        agent_voice=agent.voice,
        customer_voice=customer.voice,
        customer_arc=arc,
        encoding=spec["encoding"],
        agent_gain_db=round(gain_db[0], 2),
        customer_gain_db=round(gain_db[1], 2),
        agent_noise_dbfs=round(noise_dbfs[0] + gain_db[0], 2),
        customer_noise_dbfs=round(noise_dbfs[1] + gain_db[1], 2),
    )
    return row, segs


SEGMENT_COLUMNS = [
    "recording_id",
    "path",
    "channel",
    "channel_name",
    "segment",
    "start_s",
    "end_s",
    "label",
    "transcript",
    "speaker",
    "strength",
    "cue",
]


def _voice_set(voices: Iterable[str]) -> set[str]:
    if isinstance(voices, str):
        voices = [voices]
    out = {str(v).strip() for v in voices if str(v).strip()}
    return out | {_VOICE_ALIASES[v] for v in out if v in _VOICE_ALIASES}


def voice_type(voice: str) -> str:
    """The voice's type without its accent: the espeak-ng variant (``en-us+f3`` -> ``f3``) or the flite voice.
    Exclusion works on types, so an unseen speaker never shares a training speaker's variant in another accent."""
    return voice.split("+", 1)[1] if "+" in voice else voice


def exclude_voices_from(manifest: str | Path, splits: Iterable[str] | None = None) -> set[str]:
    """The engine voices (``voice`` column) of a training manifest (CSV or Parquet), e.g. the demo corpus's
    ``manifest.csv``, or of a call archive's ``calls.csv`` (``agent_voice`` / ``customer_voice``); ``splits`` keeps
    only those rows of its ``split`` column (default: every row)."""
    manifest = Path(manifest)
    df = pd.read_parquet(manifest) if manifest.suffix == ".parquet" else pd.read_csv(manifest)
    if "voice" not in df.columns and {"agent_voice", "customer_voice"} <= set(df.columns):
        df = pd.DataFrame({"voice": pd.concat([df["agent_voice"], df["customer_voice"]], ignore_index=True)})
    if "voice" not in df.columns:
        raise ValueError(f"{manifest} has no 'voice' column (columns: {list(df.columns)})")
    if splits is not None:
        if "split" not in df.columns:
            raise ValueError(f"{manifest} has no 'split' column to select {list(splits)} from")
        df = df[df["split"].isin(list(splits))]
    return _voice_set(df["voice"].dropna().astype(str))


def _scripts(scripts: Iterable[str] | str | None) -> tuple[str, ...]:
    if scripts is None:
        return SCRIPT_ORDER
    if isinstance(scripts, str):
        scripts = scripts.split(",")
    out = tuple(s.strip() for s in scripts if s.strip())
    if not out:
        raise ValueError("scripts is empty")
    unknown = [s for s in out if s not in ARCS]
    if unknown:
        raise ValueError(f"unknown scripts {unknown}; known: {list(SCRIPT_ORDER)}")
    return out


def call_speakers(
    n_calls: int, seed: int = 0, exclude_voices: Iterable[str] = (), n_customers: int | None = None
) -> tuple[list[Speaker], list[Speaker]]:
    """The ``N_AGENTS`` agents and one customer per call: the first speakers of the call pool
    (:func:`~pipeline.demo.voices.make_speakers` order, seed ``seed + 7919``) whose voice is not excluded. Speaker
    ids keep their pool position, so with nothing excluded these are ``make_speakers(N_AGENTS + n_calls)``."""
    excluded = _voice_set(exclude_voices)
    excluded_types = {voice_type(v) for v in excluded}
    need = N_AGENTS + (n_customers or n_calls)
    pool = make_speakers(max_speakers(), seed=seed + 7919, mode="easy", prefix="callspk")
    usable = [s for s in pool if s.voice not in excluded and voice_type(s.voice) not in excluded_types]
    if len(usable) < need:
        raise ValueError(
            f"{n_calls} calls need {need} speakers, but only {len(usable)} of the {len(pool)} "
            f"synthetic voices are not excluded ({len(excluded)} excluded)"
        )
    return usable[:N_AGENTS], usable[N_AGENTS:need]


def plan_call_archive(
    out_dir: str | Path,
    n_calls: int = 12,
    minutes: float = 2.0,
    seed: int = 0,
    encoding: str = "ulaw",
    exclude_voices: Iterable[str] = (),
    scripts: Iterable[str] | str | None = None,
    lines: str = "calls",
    n_customers: int | None = None,
    id_prefix: str = "call",
    cues: bool = False,
    dominant: float = 0.0,
) -> list[dict]:
    """The per-call specs :func:`render_call` takes (no audio is made); see :func:`make_call_archive`."""
    if encoding not in ("ulaw", "alaw", "pcm16"):
        raise ValueError("encoding must be ulaw, alaw or pcm16")
    if minutes * 60 < 5:
        raise ValueError("calls must be at least 5 s long")
    if n_calls < 1:
        raise ValueError("n_calls must be >= 1")
    if not 0.0 <= dominant <= 1.0:
        raise ValueError(f"dominant must be in [0, 1], got {dominant}")
    order = _scripts(scripts)
    if lines not in LINE_SETS:
        raise ValueError(f"lines must be one of {sorted(LINE_SETS)}, got {lines!r}")
    out = Path(out_dir).resolve()
    agents, customers = call_speakers(n_calls, seed, exclude_voices, n_customers)
    specs = []
    for i in range(n_calls):
        rid = f"{id_prefix}_{i:03d}"
        # the agent: each block of 6 calls has every agent twice, in a seeded order (not tied to the script)
        agent = agents[int(np.random.default_rng([seed, 12, i // 6]).permutation(6)[i % 6]) % N_AGENTS]
        specs.append(
            dict(
                index=i,
                seed=seed,
                recording_id=rid,
                path=str(out / "calls" / f"{rid}.wav"),
                minutes=minutes,
                encoding=encoding,
                arc=order[i % len(order)],
                agent=agent.to_json(),
                customer=customers[i % len(customers)].to_json(),
                lines=lines,
                cues=bool(cues),
                **({"dominant": float(dominant)} if dominant else {}),
            )
        )
    return specs


def make_call_archive(
    out_dir: str | Path,
    n_calls: int = 12,
    minutes: float = 2.0,
    seed: int = 0,
    encoding: str = "ulaw",
    workers: int = 2,
    exclude_voices: Iterable[str] = (),
    scripts: Iterable[str] | str | None = None,
    lines: str = "calls",
    n_customers: int | None = None,
    id_prefix: str = "call",
    cues: bool = False,
    dominant: float = 0.0,
) -> Path:
    """Write ``n_calls`` stereo calls of ``minutes`` each under ``out_dir``; returns the path of ``calls.csv``
    (``segments.csv`` next to it holds the ground truth). ``encoding``: ulaw | alaw | pcm16.

    ``exclude_voices``: engine voices (``en-us+f3``, ``kal16``, ...) no speaker of the archive may use, e.g.
    :func:`exclude_voices_from` a training manifest; ValueError when too few voices are left. ``scripts``: the
    customer scripts to cycle through, in this order (names of :data:`ARCS`; default :data:`SCRIPT_ORDER`;
    ``mixed`` makes training calls). ``lines``: the wording, ``calls`` or ``generic`` (:data:`LINE_SETS`).
    ``n_customers``: distinct customers, call i gets customer ``i % n_customers`` (default: one per call; fewer let
    training calls meet the same speaker under several label mixes and leave voices for held-out archives).
    ``id_prefix``: recording ids are ``<id_prefix>_000``, ... (distinct prefixes keep archives apart in one manifest).
    ``cues``: words that matter (:mod:`pipeline.demo.cues`: lexical cues, polite anger, sarcasm, distractors; the
    segments' ``cue`` column says how each turn was realised); False keeps the wording emotion-free.
    ``dominant``: in ``mixed`` calls, the share of channels whose mix one label (any) holds at 80-100 %.
    """
    specs = plan_call_archive(
        out_dir,
        n_calls,
        minutes,
        seed,
        encoding,
        exclude_voices,
        scripts,
        lines,
        n_customers,
        id_prefix,
        cues,
        dominant,
    )
    check_tools()
    out = Path(out_dir).resolve()
    (out / "calls").mkdir(parents=True, exist_ok=True)
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
    ap.add_argument("--calls", type=int, default=12)
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--encoding", default="ulaw", choices=("ulaw", "alaw", "pcm16"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--exclude-voices-from",
        metavar="MANIFEST",
        action="append",
        default=[],
        help="leave out every voice of this training manifest's 'voice' column (repeatable)",
    )
    ap.add_argument(
        "--scripts",
        default=None,
        help=f"comma list of customer scripts to cycle through (default {','.join(SCRIPT_ORDER)})",
    )
    ap.add_argument("--lines", default="calls", choices=sorted(LINE_SETS))
    ap.add_argument("--customers", type=int, default=None, help="distinct customers (default: one per call)")
    ap.add_argument("--cues", action="store_true", help="lexical emotion cues in the wording (pipeline.demo.cues)")
    ap.add_argument(
        "--dominant", type=float, default=0.0, help="mixed calls: share of channels one emotion holds at 80-100 %%"
    )
    a = ap.parse_args(argv)
    exclude: set[str] = set()
    for m in a.exclude_voices_from:
        exclude |= exclude_voices_from(m)
    print(
        make_call_archive(
            a.out_dir,
            a.calls,
            a.minutes,
            a.seed,
            a.encoding,
            a.workers,
            exclude,
            a.scripts,
            a.lines,
            a.customers,
            cues=a.cues,
            dominant=a.dominant,
        )
    )


if __name__ == "__main__":
    main()


GENERATOR_VERSION = 3  # bump when a change alters the audio or the truth of any call


def cached_call_archive(name: str, **kwargs) -> Path:
    """:func:`make_call_archive` built once into the asset cache (``<cache>/<name>-<spec hash>``, atomically) and
    reused while its arguments and :data:`GENERATOR_VERSION` are unchanged; returns its ``calls.csv``."""
    import hashlib
    import json

    from emoq_model.assets.paths import asset_dir, build_atomically

    kwargs = {k: (sorted(v) if isinstance(v, (set, frozenset)) else v) for k, v in kwargs.items()}
    spec = {"generator": "pipeline.demo.calls", "version": GENERATOR_VERSION, **kwargs}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]
    out = asset_dir(f"{name}-{digest}")

    def write(tmp: Path) -> None:
        make_call_archive(tmp, **kwargs)
        for fn in ("calls", "segments"):  # absolute paths must name the final folder
            df = pd.read_csv(tmp / f"{fn}.csv", dtype={"recording_id": str})
            df["path"] = df["path"].str.replace(str(tmp.resolve()), str(out), regex=False)
            df.to_csv(tmp / f"{fn}.csv", index=False)
            df.to_parquet(tmp / f"{fn}.parquet", index=False)

    return build_atomically(out, spec, write) / "calls.csv"


def archive_voices(calls_csv: str | Path) -> set[str]:
    """Every voice an archive's calls use (agents and customers), e.g. to keep a held-out archive's speakers apart."""
    df = pd.read_csv(calls_csv)
    return set(df["agent_voice"]) | set(df["customer_voice"])
