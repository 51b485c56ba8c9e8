"""Synthetic emotional speech: a labelled, speaker-disjoint demo corpus built offline with espeak-ng, flite and sox.

No emotional speech corpus can be downloaded here (no hub access), so this module synthesizes one. It is also the one
place that synthesizes speech for the project: :mod:`pipeline.demo_calls` builds its call-centre archive from
:func:`synthesize`, :func:`set_active_level` and :func:`make_noise` here.

Recipe
  * Speakers: espeak-ng voice variants x English accents (``en+f3``, ``en-us+m3``, ... -- note ``en-gb+f3``
    silently ignores the variant, so British English is spelled ``en``) and the flite voices ``kal16``, ``awb``,
    ``slt`` (F0 mean/spread via ``--setf int_f0_target_*``) and ``rms`` (ignores those settings; pitched with sox).
    Each speaker has a neutral baseline pitch, rate, pitch range, timbre (bass/treble) and level.
  * Emotions, relative to the speaker's neutral (espeak-ng SSML ``<prosody pitch range rate>``, sox EQ, numpy
    gain): happy +20 % pitch, +70 % range, +10 % rate, +3 dB; angry +10 %, +50 %, +18 %, +6 dB, brighter; sad -12 %,
    -50 %, -22 %, -5 dB, darker. Every speaker says every sentence in every class, so text carries no label.
  * ``mode="easy"``: full-strength emotions, clean, level follows the emotion (loudness alone separates well).
    ``mode="hard"``: weak and variable strength, per-speaker quirks (offsets to pitch/rate/range/timbre and their
    own expressiveness per emotion), per-clip jitter, noise at 5-30 dB SNR and level normalisation.
  * ``telephone=True``: 300-3400 Hz band, 8 kHz, mu-law (or A-law / GSM 6.10) WAV, like a phone line.

Determinism: every random choice is drawn up front from ``seed`` in a fixed order, and noise comes from a per-clip
seed, so the same config gives the same manifest and byte-identical audio whatever the worker count (OGG stream
serial numbers, random in libsndfile, are rewritten to a value derived from the clip).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import hashlib
import io
import json
import math
import multiprocessing as mp
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import pandas as pd
import soundfile as sf

LABELS = ("neutral", "happy", "angry", "sad")

DEFAULT_SENTENCES = (
    "The meeting is scheduled for Tuesday afternoon.",
    "Please put the folder on the table by the window.",
    "The train to the city leaves at seven thirty.",
    "I will send you the report before the end of the week.",
    "The store on the corner opens at nine in the morning.",
    "We need two more chairs for the conference room.",
    "The package arrived at the front desk this morning.",
    "She moved the car to the other side of the street.",
    "The numbers for the last quarter are in the spreadsheet.",
    "He usually takes the bus to work on Mondays.",
    "The printer on the second floor is out of paper.",
    "They are painting the kitchen walls a light grey.",
    "My sister lives in a small town near the coast.",
    "The library closes early on public holidays.",
    "You can find the instructions in the top drawer.",
    "The weather report said it will be cloudy tomorrow.",
    "I parked the bicycle next to the garden gate.",
    "The next bus should come in about ten minutes.",
    "We talked about the plan for the new website.",
    "The kettle is on the shelf above the sink.",
    "Our flight lands at half past four.",
    "The dog sleeps in the basket by the door.",
    "He wrote the address on the back of the envelope.",
    "The shop sells bread, milk and fresh vegetables.",
)

# espeak-ng accents that take a "+variant" suffix. "en" is British English: "en-gb+f3" silently drops the variant.
ESPEAK_ACCENTS = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029",
                  "en-us-nyc")
# Human-sounding espeak-ng variants (measured median F0 on en-us in Hz); robotic, whispered and very jittery
# variants (whisper, croak, robosoft*, Demonic, david, paul, quincy, ...) are left out.
ESPEAK_VARIANTS_F = {"f1": 181, "f2": 195, "f3": 212, "f4": 179, "f5": 206, "aunty": 174, "steph": 184,
                     "belinda": 230, "Annie": 240, "Alicia": 251, "Andrea": 245, "anika": 272, "shelby": 181}
ESPEAK_VARIANTS_M = {"m1": 94, "m2": 101, "m3": 105, "m4": 93, "m5": 103, "m6": 101, "m7": 107, "m8": 86,
                     "klatt": 102, "klatt3": 102, "Andy": 96, "Gene": 95, "Lee": 96, "Mike": 90, "victor": 95,
                     "Denis": 99, "adam": 102, "edward": 102, "john": 102, "norbert": 102, "michel": 105,
                     "Hugo": 109, "miguel": 111, "Gene2": 115}
# flite voices: (gender, F0 target mean Hz, F0 target stddev Hz, accepts int_f0_target_*). "kal" is the same voice
# as kal16 at 8 kHz; "awb_time" only speaks clock times.
FLITE_VOICES = {"kal16": ("m", 95.0, 11.0, True), "slt": ("f", 170.0, 20.0, True), "awb": ("m", 130.0, 22.0, True),
                "rms": ("m", 101.0, 0.0, False)}


@dataclass(frozen=True)
class Prosody:
    """Changes relative to a speaker's neutral: fractions for pitch/range/rate, dB for gain and EQ shelves."""

    pitch: float = 0.0
    range: float = 0.0
    rate: float = 0.0
    gain_db: float = 0.0
    treble_db: float = 0.0
    bass_db: float = 0.0

    def scaled(self, s: float) -> "Prosody":
        return Prosody(*(v * s for v in dataclasses.astuple(self)))

    def combine(self, other: "Prosody") -> "Prosody":
        """Multiplicative for the fractions, additive for the dB values."""
        return Prosody((1 + self.pitch) * (1 + other.pitch) - 1, (1 + self.range) * (1 + other.range) - 1,
                       (1 + self.rate) * (1 + other.rate) - 1, self.gain_db + other.gain_db,
                       self.treble_db + other.treble_db, self.bass_db + other.bass_db)


EMOTIONS: dict[str, Prosody] = {
    "neutral": Prosody(),
    "happy": Prosody(pitch=0.20, range=0.70, rate=0.10, gain_db=3.0),
    "angry": Prosody(pitch=0.10, range=0.50, rate=0.18, gain_db=6.0, treble_db=5.0, bass_db=-2.0),
    "sad": Prosody(pitch=-0.12, range=-0.50, rate=-0.22, gain_db=-5.0, treble_db=-5.0, bass_db=2.0),
}


def emotion_prosody(label: str, strength: float = 1.0) -> Prosody:
    """The recipe's change for ``label`` at ``strength`` (1 = full, 0 = neutral)."""
    if label not in EMOTIONS:
        raise ValueError(f"unknown emotion {label!r}; known: {sorted(EMOTIONS)}")
    return EMOTIONS[label].scaled(strength)


@dataclass(frozen=True)
class Speaker:
    """A synthetic speaker: an engine voice plus a neutral baseline (``base``) and a neutral speech level."""

    speaker_id: str
    engine: str  # "espeak" | "flite"
    voice: str  # "en-us+f3" or a flite voice name
    accent: str
    gender: str  # "f" | "m"
    base: Prosody = Prosody()
    level_dbfs: float = -24.0
    expressiveness: tuple[float, ...] = ()  # per LABELS entry; empty = 1.0 everywhere

    def expressiveness_for(self, label: str) -> float:
        return self.expressiveness[LABELS.index(label)] if self.expressiveness and label in LABELS else 1.0

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        return json.dumps(d, sort_keys=True)

    @staticmethod
    def from_json(text: str) -> "Speaker":
        d = json.loads(text)
        d["base"] = Prosody(**d["base"])
        d["expressiveness"] = tuple(d["expressiveness"])
        return Speaker(**d)


def _voice_pool(rng: np.random.Generator) -> list[tuple[str, str, str, str]]:
    """(engine, voice, accent, gender) in a seeded order: flite every 4th slot while flite voices last, espeak
    speakers alternate female/male and use distinct variants before reusing one with another accent."""
    fem = list(ESPEAK_VARIANTS_F)
    mal = list(ESPEAK_VARIANTS_M)
    rng.shuffle(fem)
    rng.shuffle(mal)
    variants: list[tuple[str, str]] = []
    for i in range(max(len(fem), len(mal))):
        if i < len(fem):
            variants.append((fem[i], "f"))
        if i < len(mal):
            variants.append((mal[i], "m"))
    accents = list(ESPEAK_ACCENTS)
    rng.shuffle(accents)
    espeak = []
    for r in range(len(accents)):  # round r: variant t gets accent (t + r) % n -> all pairs distinct
        for t, (var, g) in enumerate(variants):
            acc = accents[(t + r) % len(accents)]
            espeak.append(("espeak", f"{acc}+{var}", acc, g))
    flite = [("flite", v, "en-us" if v != "awb" else "en-gb-scotland", FLITE_VOICES[v][0]) for v in FLITE_VOICES]
    rng.shuffle(flite)
    pool, ei = [], 0
    while ei < len(espeak) or flite:
        if len(pool) % 4 == 3 and flite:
            pool.append(flite.pop(0))
        elif ei < len(espeak):
            pool.append(espeak[ei])
            ei += 1
        else:
            pool.append(flite.pop(0))
    return pool


def max_speakers() -> int:
    return len(ESPEAK_ACCENTS) * (len(ESPEAK_VARIANTS_F) + len(ESPEAK_VARIANTS_M)) + len(FLITE_VOICES)


def make_speakers(n: int, seed: int = 0, mode: str = "easy", prefix: str = "spk") -> list[Speaker]:
    """``n`` distinct speakers with seeded neutral baselines; ``mode="hard"`` adds per-speaker quirks."""
    if n > max_speakers():
        raise ValueError(f"at most {max_speakers()} distinct synthetic speakers, asked for {n}")
    rng = np.random.default_rng([seed, 1])
    pool = _voice_pool(rng)
    out = []
    for i in range(n):
        engine, voice, accent, gender = pool[i]
        base = Prosody(pitch=rng.uniform(-0.10, 0.10), range=rng.uniform(-0.20, 0.20), rate=rng.uniform(-0.08, 0.08),
                       treble_db=rng.uniform(-1.5, 1.5), bass_db=rng.uniform(-1.5, 1.5))
        level = rng.uniform(-27.0, -23.0)
        expr: tuple[float, ...] = ()
        if mode == "hard":
            quirk = Prosody(pitch=rng.uniform(-0.12, 0.12), range=rng.uniform(-0.30, 0.30),
                            rate=rng.uniform(-0.12, 0.12), treble_db=rng.uniform(-5.0, 5.0),
                            bass_db=rng.uniform(-5.0, 5.0))
            base = base.combine(quirk)
            expr = tuple(float(rng.uniform(0.5, 1.3)) for _ in LABELS)
        out.append(Speaker(f"{prefix}{i:03d}", engine, voice, accent, gender, base, float(level), expr))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Synthesis (engine -> sox EQ/band/rate -> trim); shared with pipeline.demo_calls
# ----------------------------------------------------------------------------------------------------------------

def _run(cmd: list[str], data: bytes | None = None) -> bytes:
    p = subprocess.run(cmd, input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({p.returncode}): {p.stderr.decode(errors='replace')[-500:]}")
    return p.stdout


def _pct(x: float) -> str:
    return f"{x * 100:+.1f}%"


def _engine_audio(speaker: Speaker, text: str, p: Prosody) -> tuple[np.ndarray, int, float]:
    """Raw engine output (float32 mono, rate) and the pitch shift in cents still to apply with sox."""
    if speaker.engine == "espeak":
        ssml = (f'<speak><prosody pitch="{_pct(p.pitch)}" range="{_pct(max(p.range, -0.95))}" '
                f'rate="{_pct(max(p.rate, -0.8))}">{escape(text)}</prosody></speak>')
        wav = _run(["espeak-ng", "-m", "-v", speaker.voice, "--stdout", ssml])
        cents = 0.0
    elif speaker.engine == "flite":
        _, f0, sd, settable = FLITE_VOICES[speaker.voice]
        cmd = ["flite", "-voice", speaker.voice, "--setf", f"duration_stretch={1.0 / max(1 + p.rate, 0.2):.4f}"]
        if settable:
            cmd += ["--setf", f"int_f0_target_mean={f0 * (1 + p.pitch):.2f}",
                    "--setf", f"int_f0_target_stddev={sd * max(1 + p.range, 0.05):.2f}"]
            cents = 0.0
        else:  # rms: F0 settings are ignored, shift the pitch afterwards (range stays the voice's own)
            cents = 1200.0 * math.log2(max(1 + p.pitch, 0.2))
        wav = _run(cmd + ["-t", text, "-o", "/dev/stdout"])
    else:
        raise ValueError(f"unknown engine {speaker.engine!r}")
    x, rate = sf.read(io.BytesIO(wav), dtype="float32", always_2d=True)
    return x[:, 0], int(rate), cents


def _frame_rms(x: np.ndarray, rate: int, frame_s: float = 0.01) -> np.ndarray:
    n = max(1, int(rate * frame_s))
    m = len(x) // n
    if m == 0:
        return np.sqrt(np.mean(np.square(x, dtype=np.float64))).reshape(1)
    return np.sqrt(np.mean(np.square(x[: m * n].reshape(m, n), dtype=np.float64), axis=1))


def trim(x: np.ndarray, rate: int, threshold_db: float = -40.0) -> np.ndarray:
    """Cut leading/trailing frames quieter than ``threshold_db`` below the loudest 10 ms frame."""
    e = _frame_rms(x, rate)
    if e.max() <= 0:
        return x
    on = np.nonzero(e >= e.max() * 10 ** (threshold_db / 20))[0]
    n = max(1, int(rate * 0.01))
    return x[on[0] * n: min(len(x), (on[-1] + 1) * n)]


def active_rms(x: np.ndarray, rate: int, threshold_db: float = -30.0) -> float:
    """RMS over the 10 ms frames within ``threshold_db`` of the loudest one (speech level, pauses excluded)."""
    e = _frame_rms(x, rate)
    if e.max() <= 0:
        return 0.0
    act = e[e >= e.max() * 10 ** (threshold_db / 20)]
    return float(np.sqrt(np.mean(act ** 2)))


def set_active_level(x: np.ndarray, rate: int, dbfs: float) -> np.ndarray:
    """Scale so the active speech RMS is ``dbfs``."""
    r = active_rms(x, rate)
    return x if r <= 0 else (x * (10 ** (dbfs / 20) / r)).astype(np.float32)


def synthesize(speaker: Speaker, text: str, prosody: Prosody = Prosody(), *, sample_rate: int = 16000,
               telephone: bool = False) -> np.ndarray:
    """Speech for ``text`` by ``speaker`` with ``prosody`` on top of the speaker's neutral baseline.

    Returns float32 mono at ``sample_rate`` (8 kHz and 300-3400 Hz when ``telephone``), trimmed to the speech,
    with the timbre (bass/treble) applied but at an arbitrary level: use :func:`set_active_level` next.
    """
    p = speaker.base.combine(prosody)
    x, rate, cents = _engine_audio(speaker, text, p)
    out_rate = 8000 if telephone else sample_rate
    effects: list[str] = []
    if abs(cents) > 1:
        effects += ["pitch", f"{cents:.1f}"]
    if abs(p.bass_db) > 0.05:
        effects += ["bass", f"{p.bass_db:.2f}", "200"]
    if abs(p.treble_db) > 0.05:
        effects += ["treble", f"{p.treble_db:.2f}", "2000"]
    if telephone:
        effects += ["sinc", "300-3400"]
    effects += ["rate", "-v", str(out_rate)]
    # Headroom before sox: EQ boosts must not clip in its integer pipeline; the level is set afterwards anyway.
    x = x * np.float32(0.25)
    raw = _run(["sox", "-V1", "-D", "-t", "f32", "-r", str(rate), "-c", "1", "-",
                "-t", "f32", "-r", str(out_rate), "-c", "1", "-"] + effects, x.astype("<f4").tobytes())
    y = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    return trim(y, out_rate)


def make_noise(n: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise: ``white``, ``pink`` (1/f) or ``brown`` (1/f^2)."""
    from scipy.signal import lfilter

    w = rng.standard_normal(n + 2048)
    if kind == "pink":  # Paul Kellet's economy 1/f filter
        w = lfilter([0.049922035, -0.095993537, 0.050612699, -0.004408786],
                    [1.0, -2.494956002, 2.017265875, -0.522189400], w)
    elif kind == "brown":
        w = lfilter([1.0], [1.0, -0.995], w)
    elif kind != "white":
        raise ValueError(f"unknown noise kind {kind!r}")
    w = w[2048:]  # drop the filters' start-up transient
    w = w - w.mean()
    return (w / (np.sqrt(np.mean(w ** 2)) + 1e-12)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------------

FORMATS = {  # extension -> (soundfile format, subtype)
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "opus": ("OGG", "OPUS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}
TELEPHONE_CODECS = {"ulaw": "ULAW", "alaw": "ALAW", "gsm": "GSM610", "pcm16": "PCM_16"}

_OGG_CRC = None


def _ogg_crc(data: bytes) -> int:
    global _OGG_CRC
    if _OGG_CRC is None:
        t = []
        for i in range(256):
            r = i << 24
            for _ in range(8):
                r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else (r << 1)
            t.append(r & 0xFFFFFFFF)
        _OGG_CRC = t
    crc = 0
    for b in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _OGG_CRC[((crc >> 24) & 0xFF) ^ b]
    return crc


def _ogg_set_serial(data: bytes, serial: int) -> bytes:
    """Rewrite every page's stream serial (libsndfile picks a random one) and fix the page CRCs."""
    out = bytearray(data)
    pos = 0
    while pos + 27 <= len(out) and out[pos:pos + 4] == b"OggS":
        nseg = out[pos + 26]
        hlen = 27 + nseg
        plen = hlen + sum(out[pos + 27: pos + 27 + nseg])
        out[pos + 14: pos + 18] = serial.to_bytes(4, "little")
        out[pos + 22: pos + 26] = b"\0\0\0\0"
        out[pos + 22: pos + 26] = _ogg_crc(bytes(out[pos: pos + plen])).to_bytes(4, "little")
        pos += plen
    return bytes(out)


def write_audio(path: str | Path, x: np.ndarray, rate: int, fmt: str = "wav", telephone_codec: str | None = None,
                serial_seed: int = 0) -> None:
    """Write mono ``[N]`` or multichannel ``[C, N]`` float audio. ``telephone_codec`` (ulaw/alaw/gsm/pcm16) sets the
    WAV subtype; other formats use :data:`FORMATS`. Written atomically (temp file + rename)."""
    path = Path(path)
    data = np.clip(x, -1.0, 1.0).astype(np.float32)
    if data.ndim == 2:
        data = data.T
    if fmt == "wav" and telephone_codec:
        container, subtype = "WAV", TELEPHONE_CODECS[telephone_codec]
    else:
        container, subtype = FORMATS[fmt]
    buf = io.BytesIO()
    sf.write(buf, data, rate, format=container, subtype=subtype)
    raw = buf.getvalue()
    if container == "OGG":
        raw = _ogg_set_serial(raw, serial_seed & 0x7FFFFFFF)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(raw)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------------
# Corpus
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class CorpusConfig:
    """What :func:`make_emotion_corpus` builds. Every speaker says every sentence in every label."""

    n_speakers: int = 24
    sentences: tuple[str, ...] = DEFAULT_SENTENCES
    n_sentences: int | None = None  # use only the first n of ``sentences``
    labels: tuple[str, ...] = LABELS
    mode: str = "easy"  # "easy" | "hard"
    telephone: bool = False  # 8 kHz, 300-3400 Hz, ``telephone_codec`` WAV
    telephone_codec: str = "ulaw"  # ulaw | alaw | gsm | pcm16
    sample_rate: int = 16000  # ignored (8000) when telephone
    seed: int = 0
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)  # train/val/test, by speaker
    # hard mode
    strength_range: tuple[float, float] = (0.25, 0.8)
    snr_db_range: tuple[float, float] = (5.0, 30.0)
    target_dbfs: float = -23.0
    level_jitter_db: float = 2.0
    # other formats: this fraction of the clips (at least one per format) is written as alt_formats, round-robin
    alt_formats: tuple[str, ...] = ()
    alt_format_fraction: float = 0.05
    pad_s: float = 0.15  # silence (or noise) around each utterance
    workers: int = 2

    def __post_init__(self):
        self.sentences = tuple(self.sentences)
        self.labels = tuple(self.labels)
        self.alt_formats = tuple(self.alt_formats)
        if self.mode not in ("easy", "hard"):
            raise ValueError(f"mode must be 'easy' or 'hard', not {self.mode!r}")
        unknown = [lab for lab in self.labels if lab not in EMOTIONS]
        if unknown:
            raise ValueError(f"unknown labels {unknown}; known: {sorted(EMOTIONS)}")
        bad = [f for f in self.alt_formats if f not in FORMATS]
        if bad:
            raise ValueError(f"unknown formats {bad}; known: {sorted(FORMATS)}")
        if self.telephone_codec not in TELEPHONE_CODECS:
            raise ValueError(f"telephone_codec must be one of {sorted(TELEPHONE_CODECS)}")
        if self.n_speakers < 1:
            raise ValueError("n_speakers must be >= 1")

    @property
    def rate(self) -> int:
        return 8000 if self.telephone else self.sample_rate

    def used_sentences(self) -> tuple[str, ...]:
        return self.sentences[: self.n_sentences] if self.n_sentences else self.sentences

    def fingerprint(self) -> str:
        d = dataclasses.asdict(self)
        d.pop("workers")
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


MANIFEST_COLUMNS = ["utt_id", "path", "label", "transcript", "speaker", "split", "sample_rate", "duration_s"]


def assign_splits(speaker_ids: list[str], fractions: tuple[float, float, float], seed: int) -> dict[str, str]:
    """Speaker -> train/val/test; every split with a non-zero fraction gets at least one speaker when possible."""
    ids = list(speaker_ids)
    np.random.default_rng([seed, 2]).shuffle(ids)
    n = len(ids)
    ftr, fva, fte = fractions
    tot = ftr + fva + fte
    n_va = max(1, round(n * fva / tot)) if fva > 0 and n >= 3 else 0
    n_te = max(1, round(n * fte / tot)) if fte > 0 and n >= 2 else 0
    while n - n_va - n_te < 1 and (n_va or n_te):
        if n_va >= n_te and n_va:
            n_va -= 1
        else:
            n_te -= 1
    split = {}
    for i, s in enumerate(ids):
        split[s] = "test" if i < n_te else ("val" if i < n_te + n_va else "train")
    return split


def _utt_id(seed: int, speaker: str, sent: int, label: str) -> str:
    h = hashlib.sha1(f"{seed}/{speaker}/{sent}/{label}".encode()).hexdigest()[:8]
    return f"{speaker}_s{sent:02d}_{h}"  # no label in ids or paths


def plan_corpus(out_dir: Path, cfg: CorpusConfig) -> list[dict]:
    """All clip specs (JSON-able dicts), random choices drawn in a fixed order from ``cfg.seed``."""
    speakers = make_speakers(cfg.n_speakers, cfg.seed, cfg.mode)
    splits = assign_splits([s.speaker_id for s in speakers], cfg.split_fractions, cfg.seed)
    rng = np.random.default_rng([cfg.seed, 3])
    sentences = cfg.used_sentences()
    specs = []
    for spk in speakers:
        for si, text in enumerate(sentences):
            for label in cfg.labels:
                uid = _utt_id(cfg.seed, spk.speaker_id, si, label)
                # draw every value in every mode so easy/hard plans line up clip for clip
                strength = rng.uniform(*cfg.strength_range)
                jitter = Prosody(pitch=rng.uniform(-0.05, 0.05), range=rng.uniform(-0.15, 0.15),
                                 rate=rng.uniform(-0.05, 0.05))
                snr = rng.uniform(*cfg.snr_db_range)
                noise_kind = ("white", "pink", "brown")[int(rng.integers(3))]
                level_jit = rng.uniform(-cfg.level_jitter_db, cfg.level_jitter_db)
                noise_seed = int(rng.integers(2 ** 31))
                if cfg.mode == "easy":
                    strength, snr, noise_kind = 1.0, None, None
                    prosody = emotion_prosody(label, 1.0)
                    level = spk.level_dbfs + prosody.gain_db
                else:
                    strength = float(np.clip(strength * spk.expressiveness_for(label), 0.0, 1.0))
                    prosody = emotion_prosody(label, strength).combine(jitter)
                    level = cfg.target_dbfs + level_jit  # normalised: level carries no label
                specs.append(dict(
                    utt_id=uid, label=label, transcript=text, sentence_id=si, speaker=spk.speaker_id,
                    split=splits[spk.speaker_id], speaker_json=spk.to_json(),
                    prosody=dataclasses.asdict(prosody), strength=float(strength), level_dbfs=float(level),
                    snr_db=None if snr is None else float(snr), noise=noise_kind, noise_seed=noise_seed,
                    fmt="wav", sample_rate=cfg.rate, telephone=cfg.telephone,
                    telephone_codec=cfg.telephone_codec if cfg.telephone else None, pad_s=cfg.pad_s,
                    engine=spk.engine, voice=spk.voice, accent=spk.accent, gender=spk.gender, mode=cfg.mode,
                ))
    if cfg.alt_formats and specs:
        frng = np.random.default_rng([cfg.seed, 4])
        k = max(len(cfg.alt_formats), int(round(cfg.alt_format_fraction * len(specs))))
        idx = sorted(frng.choice(len(specs), size=min(k, len(specs)), replace=False).tolist())
        for j, i in enumerate(idx):
            specs[i]["fmt"] = cfg.alt_formats[j % len(cfg.alt_formats)]
    for s in specs:
        s["path"] = str((out_dir / "audio" / s["speaker"] / f"{s['utt_id']}.{s['fmt']}").resolve())
    return specs


def render_clip(spec: dict) -> dict:
    """Synthesize, level, add noise and write one planned clip; returns its facts."""
    spk = Speaker.from_json(spec["speaker_json"])
    rate = spec["sample_rate"]
    x = synthesize(spk, spec["transcript"], Prosody(**spec["prosody"]), sample_rate=rate,
                   telephone=spec["telephone"])
    x = set_active_level(x, rate, spec["level_dbfs"])
    pad = np.zeros(int(round(spec["pad_s"] * rate)), dtype=np.float32)
    x = np.concatenate([pad, x, pad])
    if spec["snr_db"] is not None:
        speech = 10 ** (spec["level_dbfs"] / 20)
        noise = make_noise(len(x), spec["noise"], np.random.default_rng(spec["noise_seed"]))
        x = x + noise * np.float32(speech / 10 ** (spec["snr_db"] / 20))
    peak = float(np.max(np.abs(x))) if len(x) else 0.0
    if peak > 0.99:
        x = x * np.float32(0.99 / peak)
    write_audio(spec["path"], x, rate, spec["fmt"], spec["telephone_codec"], serial_seed=spec["noise_seed"])
    return {"utt_id": spec["utt_id"], "duration_s": round(len(x) / rate, 6), "peak": min(peak, 0.99)}


def _render_batch(specs: list[dict]) -> list[dict]:
    return [render_clip(s) for s in specs]


def render_all(specs: list[dict], workers: int = 2, batch: int = 24) -> list[dict]:
    """Render clip specs in a spawn-started process pool (inline for small jobs or ``workers<=1``)."""
    for d in {str(Path(s["path"]).parent) for s in specs}:
        Path(d).mkdir(parents=True, exist_ok=True)
    if workers <= 1 or len(specs) <= batch:
        return _render_batch(specs)
    chunks = [specs[i: i + batch] for i in range(0, len(specs), batch)]
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as ex:
        return [r for rs in ex.map(_render_batch, chunks) for r in rs]


def check_tools() -> None:
    missing = [t for t in ("espeak-ng", "flite", "sox") if shutil.which(t) is None]
    if missing:
        raise RuntimeError(f"missing synthesis tools {missing}: apt-get install espeak-ng flite sox libsox-fmt-all")


def make_emotion_corpus(out_dir: str | Path, config: CorpusConfig | None = None) -> Path:
    """Build the corpus under ``out_dir`` (audio/<speaker>/<utt_id>.<ext>, manifest.csv, manifest.parquet,
    speakers.csv, config.json) and return the path of ``manifest.csv``."""
    cfg = config or CorpusConfig()
    check_tools()
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    specs = plan_corpus(out, cfg)
    results = {r["utt_id"]: r for r in render_all(specs, cfg.workers)}
    rows = []
    for s in specs:
        rows.append({
            "utt_id": s["utt_id"], "path": s["path"], "label": s["label"], "transcript": s["transcript"],
            "speaker": s["speaker"], "split": s["split"], "sample_rate": s["sample_rate"],
            "duration_s": results[s["utt_id"]]["duration_s"],
            "recording_id": s["utt_id"], "sentence_id": s["sentence_id"], "format": s["fmt"],
            "engine": s["engine"], "voice": s["voice"], "accent": s["accent"], "gender": s["gender"],
            "mode": s["mode"], "strength": round(s["strength"], 4),
            "snr_db": None if s["snr_db"] is None else round(s["snr_db"], 2), "noise": s["noise"],
        })
    df = pd.DataFrame(rows)
    df["snr_db"] = df["snr_db"].astype("float64")
    df.to_csv(out / "manifest.csv", index=False)
    df.to_parquet(out / "manifest.parquet", index=False)
    speaker_table(specs).to_csv(out / "speakers.csv", index=False)
    meta = dict(dataclasses.asdict(cfg), n_clips=len(df), seconds=round(time.perf_counter() - t0, 2),
                fingerprint=cfg.fingerprint())
    (out / "config.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    return out / "manifest.csv"


def speaker_table(specs: list[dict]) -> pd.DataFrame:
    """One row per speaker: voice, split, neutral baseline (base_*), level and expressiveness per label."""
    rows = []
    for j, sp in {s["speaker_json"]: s["split"] for s in specs}.items():
        d = json.loads(j)
        base = d.pop("base")
        expr = d.pop("expressiveness")
        d.update({f"base_{k}": round(v, 4) for k, v in base.items() if k != "gain_db"})
        d.update({f"expressiveness_{lab}": round(expr[i], 4) if expr else 1.0 for i, lab in enumerate(LABELS)})
        d["level_dbfs"] = round(d["level_dbfs"], 2)
        d["split"] = sp
        rows.append(d)
    return pd.DataFrame(rows)


def cached_emotion_corpus(config: CorpusConfig | None = None, name: str = "emotion_corpus") -> Path:
    """The corpus for ``config`` in the asset cache (built once per config fingerprint); its manifest.csv."""
    from emoq_model.assets.paths import asset_dir

    cfg = config or CorpusConfig()
    final = asset_dir(f"{name}-{cfg.mode}-{cfg.fingerprint()}")
    if (final / "manifest.parquet").exists():
        return final / "manifest.csv"
    tmp = final.with_name(final.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    make_emotion_corpus(tmp, cfg)
    # paths are absolute: rewrite them for the final location before the atomic rename
    for fn in ("manifest.csv", "manifest.parquet"):
        p = tmp / fn
        df = pd.read_csv(p) if fn.endswith(".csv") else pd.read_parquet(p)
        df["path"] = df["path"].str.replace(str(tmp), str(final), regex=False)
        df.to_csv(p, index=False) if fn.endswith(".csv") else df.to_parquet(p, index=False)
    try:
        os.replace(tmp, final)
    except OSError:  # built concurrently by someone else
        shutil.rmtree(tmp, ignore_errors=True)
    return final / "manifest.csv"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--speakers", type=int, default=24)
    ap.add_argument("--sentences", type=int, default=None, help="use only the first N built-in sentences")
    ap.add_argument("--mode", choices=("easy", "hard"), default="easy")
    ap.add_argument("--telephone", action="store_true")
    ap.add_argument("--sample-rate", type=int, default=16000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--alt-formats", default="", help="comma list of flac,ogg,opus,mp3 for a few clips")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args(argv)
    cfg = CorpusConfig(n_speakers=a.speakers, n_sentences=a.sentences, mode=a.mode, telephone=a.telephone,
                       sample_rate=a.sample_rate, seed=a.seed,
                       alt_formats=tuple(f for f in a.alt_formats.split(",") if f), workers=a.workers)
    t0 = time.perf_counter()
    m = make_emotion_corpus(a.out_dir, cfg)
    n = len(pd.read_csv(m))
    dt = time.perf_counter() - t0
    print(f"{m}: {n} clips in {dt:.1f} s ({n / dt:.0f} clips/s)")


if __name__ == "__main__":
    main()
