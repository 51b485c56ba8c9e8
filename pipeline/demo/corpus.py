"""Synthetic emotional speech: a labelled, speaker-disjoint demo corpus built offline with espeak-ng, flite and sox.

No emotional speech corpus can be downloaded here (no hub access), so this module synthesizes one. Voices and emotions:
:mod:`pipeline.demo.voices`; rendering: :mod:`pipeline.demo.synthesis`; file formats: :mod:`pipeline.demo.codecs`.

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
import json
import multiprocessing as mp
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.demo.codecs import FORMATS, TELEPHONE_CODECS, write_audio
from pipeline.demo.synthesis import check_tools, make_noise, set_active_level, synthesize
from pipeline.demo.voices import EMOTIONS, LABELS, Prosody, Speaker, emotion_prosody, make_speakers

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
                jitter = Prosody(
                    pitch=rng.uniform(-0.05, 0.05), range=rng.uniform(-0.15, 0.15), rate=rng.uniform(-0.05, 0.05)
                )
                snr = rng.uniform(*cfg.snr_db_range)
                noise_kind = ("white", "pink", "brown")[int(rng.integers(3))]
                level_jit = rng.uniform(-cfg.level_jitter_db, cfg.level_jitter_db)
                noise_seed = int(rng.integers(2**31))
                if cfg.mode == "easy":
                    strength, snr, noise_kind = 1.0, None, None
                    prosody = emotion_prosody(label, 1.0)
                    level = spk.level_dbfs + prosody.gain_db
                else:
                    strength = float(np.clip(strength * spk.expressiveness_for(label), 0.0, 1.0))
                    prosody = emotion_prosody(label, strength).combine(jitter)
                    level = cfg.target_dbfs + level_jit  # normalised: level carries no label
                specs.append(
                    dict(
                        utt_id=uid,
                        label=label,
                        transcript=text,
                        sentence_id=si,
                        speaker=spk.speaker_id,
                        split=splits[spk.speaker_id],
                        speaker_json=spk.to_json(),
                        prosody=dataclasses.asdict(prosody),
                        strength=float(strength),
                        level_dbfs=float(level),
                        snr_db=None if snr is None else float(snr),
                        noise=noise_kind,
                        noise_seed=noise_seed,
                        fmt="wav",
                        sample_rate=cfg.rate,
                        telephone=cfg.telephone,
                        telephone_codec=cfg.telephone_codec if cfg.telephone else None,
                        pad_s=cfg.pad_s,
                        engine=spk.engine,
                        voice=spk.voice,
                        accent=spk.accent,
                        gender=spk.gender,
                        mode=cfg.mode,
                    )
                )
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
    x = synthesize(spk, spec["transcript"], Prosody(**spec["prosody"]), sample_rate=rate, telephone=spec["telephone"])
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
    chunks = [specs[i : i + batch] for i in range(0, len(specs), batch)]
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as ex:
        return [r for rs in ex.map(_render_batch, chunks) for r in rs]


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
        rows.append(
            {
                "utt_id": s["utt_id"],
                "path": s["path"],
                "label": s["label"],
                "transcript": s["transcript"],
                "speaker": s["speaker"],
                "split": s["split"],
                "sample_rate": s["sample_rate"],
                "duration_s": results[s["utt_id"]]["duration_s"],
                "recording_id": s["utt_id"],
                "sentence_id": s["sentence_id"],
                "format": s["fmt"],
                "engine": s["engine"],
                "voice": s["voice"],
                "accent": s["accent"],
                "gender": s["gender"],
                "mode": s["mode"],
                "strength": round(s["strength"], 4),
                "snr_db": None if s["snr_db"] is None else round(s["snr_db"], 2),
                "noise": s["noise"],
            }
        )
    df = pd.DataFrame(rows)
    df["snr_db"] = df["snr_db"].astype("float64")
    df.to_csv(out / "manifest.csv", index=False)
    df.to_parquet(out / "manifest.parquet", index=False)
    speaker_table(specs).to_csv(out / "speakers.csv", index=False)
    meta = dict(
        dataclasses.asdict(cfg),
        n_clips=len(df),
        seconds=round(time.perf_counter() - t0, 2),
        fingerprint=cfg.fingerprint(),
    )
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
    from emoq_model.assets.paths import asset_dir, build_atomically

    cfg = config or CorpusConfig()
    final = asset_dir(f"{name}-{cfg.mode}-{cfg.fingerprint()}")

    def write(tmp: Path) -> None:
        make_emotion_corpus(tmp, cfg)
        # paths are absolute: rewrite them for the final location before the atomic rename
        for fn in ("manifest.csv", "manifest.parquet"):
            p = tmp / fn
            df = pd.read_csv(p) if fn.endswith(".csv") else pd.read_parquet(p)
            df["path"] = df["path"].str.replace(str(tmp.resolve()), str(final), regex=False)
            df.to_csv(p, index=False) if fn.endswith(".csv") else df.to_parquet(p, index=False)

    spec = {"generator": "pipeline.demo.corpus", "fingerprint": cfg.fingerprint(), "mode": cfg.mode}
    return build_atomically(final, spec, write) / "manifest.csv"


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
    cfg = CorpusConfig(
        n_speakers=a.speakers,
        n_sentences=a.sentences,
        mode=a.mode,
        telephone=a.telephone,
        sample_rate=a.sample_rate,
        seed=a.seed,
        alt_formats=tuple(f for f in a.alt_formats.split(",") if f),
        workers=a.workers,
    )
    t0 = time.perf_counter()
    m = make_emotion_corpus(a.out_dir, cfg)
    n = len(pd.read_csv(m))
    dt = time.perf_counter() - t0
    print(f"{m}: {n} clips in {dt:.1f} s ({n / dt:.0f} clips/s)")


if __name__ == "__main__":
    main()
