"""The demo's synthetic voices and emotions: engine voices (espeak-ng variants x accents, flite), a speaker's
neutral baseline, and each emotion as a prosody change relative to it.

* Speakers: espeak-ng voice variants x English accents (``en+f3``, ``en-us+m3``, ... -- note ``en-gb+f3``
  silently ignores the variant, so British English is spelled ``en``) and the flite voices ``kal16``, ``awb``,
  ``slt`` (F0 mean/spread via ``--setf int_f0_target_*``) and ``rms`` (ignores those settings; pitched with sox).
  Each speaker has a neutral baseline pitch, rate, pitch range, timbre (bass/treble) and level.
* Emotions, relative to the speaker's neutral: happy +20 % pitch, +70 % range, +10 % rate, +3 dB; angry +10 %,
  +50 %, +18 %, +6 dB, brighter; sad -12 %, -50 %, -22 %, -5 dB, darker.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np

LABELS = ("neutral", "happy", "angry", "sad")


ESPEAK_ACCENTS = (
    "en",
    "en-us",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
# Human-sounding espeak-ng variants (measured median F0 on en-us in Hz); robotic, whispered and very jittery
# variants (whisper, croak, robosoft*, Demonic, david, paul, quincy, ...) are left out.
ESPEAK_VARIANTS_F = {
    "f1": 181,
    "f2": 195,
    "f3": 212,
    "f4": 179,
    "f5": 206,
    "aunty": 174,
    "steph": 184,
    "belinda": 230,
    "Annie": 240,
    "Alicia": 251,
    "Andrea": 245,
    "anika": 272,
    "shelby": 181,
}
ESPEAK_VARIANTS_M = {
    "m1": 94,
    "m2": 101,
    "m3": 105,
    "m4": 93,
    "m5": 103,
    "m6": 101,
    "m7": 107,
    "m8": 86,
    "klatt": 102,
    "klatt3": 102,
    "Andy": 96,
    "Gene": 95,
    "Lee": 96,
    "Mike": 90,
    "victor": 95,
    "Denis": 99,
    "adam": 102,
    "edward": 102,
    "john": 102,
    "norbert": 102,
    "michel": 105,
    "Hugo": 109,
    "miguel": 111,
    "Gene2": 115,
}
# flite voices: (gender, F0 target mean Hz, F0 target stddev Hz, accepts int_f0_target_*). "kal" is the same voice
# as kal16 at 8 kHz; "awb_time" only speaks clock times.
FLITE_VOICES = {
    "kal16": ("m", 95.0, 11.0, True),
    "slt": ("f", 170.0, 20.0, True),
    "awb": ("m", 130.0, 22.0, True),
    "rms": ("m", 101.0, 0.0, False),
}


@dataclass(frozen=True)
class Prosody:
    """Changes relative to a speaker's neutral: fractions for pitch/range/rate, dB for gain and EQ shelves."""

    pitch: float = 0.0
    range: float = 0.0
    rate: float = 0.0
    gain_db: float = 0.0
    treble_db: float = 0.0
    bass_db: float = 0.0

    def scaled(self, s: float) -> Prosody:
        return Prosody(*(v * s for v in dataclasses.astuple(self)))

    def combine(self, other: Prosody) -> Prosody:
        """Multiplicative for the fractions, additive for the dB values."""
        return Prosody(
            (1 + self.pitch) * (1 + other.pitch) - 1,
            (1 + self.range) * (1 + other.range) - 1,
            (1 + self.rate) * (1 + other.rate) - 1,
            self.gain_db + other.gain_db,
            self.treble_db + other.treble_db,
            self.bass_db + other.bass_db,
        )


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
    def from_json(text: str) -> Speaker:
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
        base = Prosody(
            pitch=rng.uniform(-0.10, 0.10),
            range=rng.uniform(-0.20, 0.20),
            rate=rng.uniform(-0.08, 0.08),
            treble_db=rng.uniform(-1.5, 1.5),
            bass_db=rng.uniform(-1.5, 1.5),
        )
        level = rng.uniform(-27.0, -23.0)
        expr: tuple[float, ...] = ()
        if mode == "hard":
            quirk = Prosody(
                pitch=rng.uniform(-0.12, 0.12),
                range=rng.uniform(-0.30, 0.30),
                rate=rng.uniform(-0.12, 0.12),
                treble_db=rng.uniform(-5.0, 5.0),
                bass_db=rng.uniform(-5.0, 5.0),
            )
            base = base.combine(quirk)
            expr = tuple(float(rng.uniform(0.5, 1.3)) for _ in LABELS)
        out.append(Speaker(f"{prefix}{i:03d}", engine, voice, accent, gender, base, float(level), expr))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Synthesis (engine -> sox EQ/band/rate -> trim); shared with pipeline.demo.calls
# ----------------------------------------------------------------------------------------------------------------
