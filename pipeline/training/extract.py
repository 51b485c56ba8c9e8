"""Feature cache: a Ray Data job that runs the frozen speech encoder once over a labelled manifest.
The CLI: ``jobs/extract_features.py``.

manifest rows (utt_id, path, label, transcript, speaker, split; optionally ``channel``, ``segment_start_s``,
``segment_end_s`` to cut one turn out of a longer recording, e.g. a labelled call archive:
:func:`pipeline.recipes.call_archive_manifest`), or the samples of tar shards, read by the labeling job's readers ->
open + decode + resample through the labeling job's decode path (:mod:`pipeline.decode`), channel or mono mix, cut
(Ray tasks, per-file error rows) -> encoder (actor pool of :class:`EncodeActor`, GPU actors with ``--gpus-per-actor``,
fractional CPUs otherwise) -> Parquet shards under ``OUT_DIR/shards`` (layout in :mod:`emoq_model.features`:
``[L, T, D]`` float16 frames per utterance with lengths, label, transcript, speaker, split; a file that cannot be read
or encoded becomes a row with ``error`` set and no frames) -> ``meta.json`` and per-speaker frame statistics
``speaker_stats.parquet`` (for per-speaker feature normalisation in training / evaluation).

Works embedded (plain ``python``: starts a local Ray) and against a cluster (``RAY_ADDRESS`` / ``--address`` /
``ray job submit --working-dir . -- python jobs/extract_features.py ...``); on a multi-node cluster ``OUT_DIR``
must be shared storage (NFS or a pyarrow URI such as ``s3://bucket/features``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time

import numpy as np
import pandas as pd
import pyarrow as pa

from emoq_model import features as F
from pipeline.decode import DecodeLimits

DECODE_COLUMNS = [
    "utt_id",
    "path",
    "label",
    "transcript",
    "speaker",
    "split",
    "error",
    "num_samples",
    "duration_s",
    "start_s",
    "end_s",
    "audio",
]
ROW_COLUMNS = ("utt_id", "path", "raw_path", "member", "label", "transcript", "speaker", "split")
SEGMENT_COLUMNS = ["channel", "segment_start_s", "segment_end_s"]  # optional: a turn of a longer recording
SPEED_COLUMN = "speed"  # speed-perturbed copies (training augmentation): play the turn this many times faster
MAX_SOURCE_S = 4 * 3600.0  # a segment row's source recording may be this long (the segment itself: max_duration_s)


# ---------------------------------------------------------------------------------------------- stages


def _s(v):
    """Manifest cell -> str or None (NaN / empty -> None)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    v = str(v)
    return v if v.strip() else None


def _f(v) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) or v == "" else float(v)


def _channel(samples: np.ndarray, channel) -> np.ndarray:
    """``[channels, frames]`` -> one channel (index) or, without one (None / -1), the mix of all channels."""
    c = _f(channel)
    if c is None or int(c) < 0:
        return samples.mean(axis=0)
    if int(c) >= samples.shape[0]:
        from pipeline.audio import AudioError

        raise AudioError(f"channel {int(c)} asked for, recording has {samples.shape[0]}")
    return samples[int(c)]


def decode_batch(
    batch: pd.DataFrame, sample_rate: int, max_duration_s: float, limits: DecodeLimits | None = None
) -> pd.DataFrame:
    """Read, decode and resample each file through the labeling job's decode path
    (:func:`pipeline.decode.load_recording`: header-first limits, FIFOs refused, URIs and tar members), then take
    the row's channel (or the mix) and cut its turn; failures become rows with ``error`` set."""
    from pipeline import audio
    from pipeline.decode import MemberSpan, load_recording

    base = limits or DecodeLimits()
    rows = []
    for r in batch.to_dict("records"):
        out = {k: _s(r.get(k)) for k in ("utt_id", "path", "label", "transcript", "speaker", "split")}
        out.update(error=_s(r.get("error")), num_samples=None, duration_s=None, start_s=None, end_s=None, audio=None)
        if out["error"] is not None:  # the reader could not use the row (bad manifest row, bad sidecar, ...)
            out["error"] = f"input: {out['error']}"
            rows.append(out)
            continue
        try:
            start, end = _f(r.get("segment_start_s")), _f(r.get("segment_end_s"))
            cut = start is not None or end is not None
            longest = max(MAX_SOURCE_S, max_duration_s) if cut else max_duration_s
            lim = dataclasses.replace(base, sample_rate=sample_rate, max_duration_s=longest)
            raw = r.get("raw_path")
            member = MemberSpan.from_json(r["member"]) if _s(r.get("member")) else None
            _, a = load_recording(out["path"], lim, bytes(raw) if raw is not None else None, member)
            mono = _channel(a.samples, r.get("channel"))  # resampled with all channels, as labeling does
            if cut:  # one turn of a longer recording: cut from the resampled recording, exactly as labeling cuts
                i0 = int(round((start or 0.0) * sample_rate))
                i1 = mono.size if end is None else int(round(end * sample_rate))
                if not 0 <= i0 < i1 <= mono.size + sample_rate // 100:  # 10 ms of rounding slack at the end
                    raise audio.AudioError(f"segment [{start}, {end}] s outside the recording ({a.duration_s:.2f} s)")
                mono = mono[i0:i1]
                audio.check_duration(mono.size / sample_rate, max_duration_s, "segment")
            speed = _f(r.get(SPEED_COLUMN))
            if cut:  # where the turn lies in its call (conversation context); a slower copy's call is longer
                out.update(
                    start_s=i0 / sample_rate / (speed or 1.0), end_s=(i0 + mono.size) / sample_rate / (speed or 1.0)
                )
            if speed is not None and speed != 1.0:  # faster and higher (speed > 1) or slower and lower, as a tape
                mono = audio.resample(mono, sample_rate, sample_rate / speed)
            if mono.size == 0:
                raise audio.AudioError("recording has 0 samples after resampling")
            out.update(
                num_samples=int(mono.size),
                duration_s=float(mono.size / sample_rate) if cut or speed else a.duration_s,
                audio=np.ascontiguousarray(mono, dtype="<f4").tobytes(),
            )
        except audio.AudioError as e:
            out["error"] = f"decode: {e}"
        except Exception as e:  # any other per-file failure is a row, never a crash
            out["error"] = f"decode: {type(e).__name__}: {e}"
        rows.append(out)
    return pd.DataFrame(rows, columns=DECODE_COLUMNS)


class EncodeActor:
    """Holds the frozen :class:`~emoq_model.encoder.SpeechEncoder`; turns decoded rows into feature rows."""

    def __init__(
        self,
        encoder_cfg: dict,
        dtype: str = "float16",
        threads: int | None = None,
        asr_model: str | None = None,
        progress=None,
        asr_dtype: str = "float32",
    ):
        """``progress``: a :class:`pipeline.console.ProgressCounter` actor handle told each batch's rows;
        ``asr_dtype``: the ASR decoder's dtype (the labeling job's ``--asr-dtype`` choices)."""
        import torch

        from emoq_model.config import EncoderConfig
        from emoq_model.encoder import SpeechEncoder

        if threads:
            torch.set_num_threads(int(threads))
        self.encoder = SpeechEncoder(EncoderConfig(**encoder_cfg))
        self.dtype, self.progress = dtype, progress
        self.decoder = self.asr = None
        if asr_model:  # train as served: the transcript is what ASR hears, decoded like labeling decodes it
            from pipeline.labeling.asr import Transcribe, WhisperDecoder, same_checkpoint

            if self.encoder.family == "whisper" and same_checkpoint(self.encoder.cfg.path, asr_model):
                self.decoder = WhisperDecoder(asr_model, device=str(self.encoder.device), dtype=asr_dtype)
            else:
                self.asr = Transcribe(asr_model, sample_rate=self.encoder.sample_rate, dtype=asr_dtype)

    def _encode(self, waves: list[np.ndarray]) -> tuple[list[np.ndarray], list[str] | None]:
        out = self.encoder(waves)
        hidden = out.hidden.float().cpu()
        lengths = out.mask.sum(-1).tolist()
        items = []
        for i, n in enumerate(lengths):
            h = hidden[..., i, : int(n), :]
            items.append((h if h.dim() == 3 else h[None]).numpy())
        texts = None
        if self.decoder is not None:
            texts = self.decoder.transcribe_states(out.decoder_states, out.decoder_lengths.tolist())
        elif self.asr is not None:
            texts = self.asr.transcribe(waves)
        return items, texts

    def __call__(self, batch: pd.DataFrame) -> pa.Table:
        rows = batch.to_dict("records")
        ok = [i for i, r in enumerate(rows) if r.get("audio") is not None and _s(r.get("error")) is None]
        feats: dict[int, np.ndarray] = {}
        heard: dict[int, str] = {}
        errors: dict[int, str] = {}
        if ok:
            waves = [np.frombuffer(rows[i]["audio"], dtype="<f4") for i in ok]
            try:
                items, texts = self._encode(waves)
                for k, (i, f) in enumerate(zip(ok, items)):
                    feats[i] = f
                    if texts is not None:
                        heard[i] = texts[k]
            except Exception:  # isolate the item(s) that fail
                for i, w in zip(ok, waves):
                    try:
                        items, texts = self._encode([w])
                        feats[i] = items[0]
                        if texts is not None:
                            heard[i] = texts[0]
                    except Exception as e:
                        errors[i] = f"encode: {type(e).__name__}: {e}"
        out = []
        for i, r in enumerate(rows):
            row = {k: _s(r.get(k)) for k in ("utt_id", "path", "label", "transcript", "speaker", "split", "error")}
            row["num_samples"] = (
                None if r.get("num_samples") is None or pd.isna(r.get("num_samples")) else int(r["num_samples"])
            )
            for k in ("duration_s", "start_s", "end_s"):
                row[k] = None if r.get(k) is None or pd.isna(r.get(k)) else float(r[k])
            row.update(n_layers=None, n_frames=None, dim=None, frames=None)
            if i in heard:
                row["transcript"] = heard[i] or None
            if i in errors:
                row["error"] = errors[i]
            elif i in feats:
                f = feats[i]
                if not np.isfinite(f).all():
                    row["error"] = "encode: non-finite encoder output"
                else:
                    data, (n_layers, t, d) = F.encode_frames(f, self.dtype)
                    row.update(n_layers=n_layers, n_frames=t, dim=d, frames=data)
            elif row["error"] is None:
                row["error"] = "no audio"
            out.append(row)
        if self.progress is not None:  # waited for (~1 ms a batch): the counts are in before the rows are written
            import ray

            ray.get(
                self.progress.add.remote(
                    files=len(out),
                    audio_s=sum(len(rows[i]["audio"]) for i in ok) / 4 / self.encoder.sample_rate,  # float32 bytes
                    failed=sum(r["error"] is not None for r in out),
                )
            )
        return pa.Table.from_pylist(out, schema=F.feature_schema())


# ---------------------------------------------------------------------------------------------- driver


def encode_rows(
    df: pd.DataFrame,
    shards: str,
    *,
    batch_size: int,
    sample_rate: int,
    max_duration_s: float,
    limits: DecodeLimits | None,
    encoder_actor_kwargs: dict,
    actors: int,
    cpus_per_actor: float,
    gpus_per_actor: float,
    rows_per_file: int,
) -> None:
    """One Ray Data pass: ``df``'s rows -> decode tasks -> :class:`EncodeActor` pool -> Parquet files appended to
    ``shards``."""
    import ray

    if len(df) == 0:
        return
    cols = [c for c in (*ROW_COLUMNS, "error", *SEGMENT_COLUMNS, SPEED_COLUMN) if c in df]
    n_blocks = max(1, min(len(df), math.ceil(len(df) / max(batch_size * 4, 1))))
    bounds = np.linspace(0, len(df), n_blocks + 1).astype(int)
    parts = [
        df[cols].iloc[a:b].astype(object).where(df[cols].iloc[a:b].notna(), None)
        for a, b in zip(bounds[:-1], bounds[1:])
        if b > a
    ]
    ds = ray.data.from_pandas(parts)
    ds = ds.map_batches(
        decode_batch,
        batch_format="pandas",
        batch_size=batch_size,
        num_cpus=0.25,
        fn_kwargs={"sample_rate": sample_rate, "max_duration_s": max_duration_s, "limits": limits},
    )
    ds = ds.map_batches(
        EncodeActor,
        batch_format="pandas",
        batch_size=batch_size,
        fn_constructor_kwargs=encoder_actor_kwargs,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor or None,
    )
    ds.write_parquet(shards, min_rows_per_file=rows_per_file, compression=F.shard_compression())


def recorded_utt_id(utt_id: str) -> str:
    """The recorded turn a speed-perturbed copy was made from (itself for a recorded row)."""
    return str(utt_id).split(F.SPEED_COPY_TAG)[0]


def with_recorded_transcripts(copies: pd.DataFrame, shards: str) -> pd.DataFrame:
    """``copies`` with each row's transcript replaced by what the ASR heard in its recorded turn (read back from
    the first pass's shards); a turn whose transcript is missing (failed, or nothing heard) leaves none."""
    import pyarrow.dataset as pds

    fs, root = F.resolve(shards)
    heard = pds.dataset(root, filesystem=fs, format="parquet").to_table(columns=["utt_id", "transcript"])
    by_id = dict(zip(heard.column("utt_id").to_pylist(), heard.column("transcript").to_pylist()))
    out = copies.copy()
    out["transcript"] = [by_id.get(recorded_utt_id(u)) for u in out["utt_id"]]
    return out


def speed_perturbed(df: pd.DataFrame, factors: tuple[float, ...], splits: tuple[str, ...] = ("train",)) -> pd.DataFrame:
    """``df`` plus one copy of each row of ``splits`` per speed factor (Kaldi-style speed perturbation: resampled
    like a tape played faster or slower, so pitch, formants and rate move together). Why: a new voice per factor
    for a corpus with few speakers. A copy is its own speaker (``speaker~sp1.1``), so per-speaker/channel
    statistics are computed over the copy, as labeling would for that voice; other splits (validation, test) are
    never perturbed, so model selection and evaluation see only real audio."""
    factors = tuple(float(f) for f in factors if float(f) != 1.0)
    if not factors:
        return df
    if any(not 0.5 <= f <= 2.0 for f in factors):
        raise ValueError(f"speed factors must lie in [0.5, 2.0], got {factors}")
    base = df[df["split"].isin(splits) & df["error"].isna()] if "error" in df else df[df["split"].isin(splits)]
    copies = []
    for f in factors:
        c = base.copy()
        tag = f"{F.SPEED_COPY_TAG}{f:g}"
        c["utt_id"] = c["utt_id"].astype(str) + tag
        c["speaker"] = [f"{s}{tag}" if _s(s) is not None else None for s in c["speaker"]]
        c[SPEED_COLUMN] = f
        if "duration_s" in c:
            c["duration_s"] = c["duration_s"] / f
        copies.append(c)
    return pd.concat([df, *copies], ignore_index=True)


def read_manifest(uri: str, splits: list[str] | None = None, limit: int | None = None) -> pd.DataFrame:
    """The rows to extract, read by the labeling job's readers (:mod:`pipeline.labeling.sources`):

    * a labelled manifest (CSV / JSONL / Parquet, local or on any pyarrow filesystem such as ``s3://``; relative
      paths are taken from its folder; names that are not UTF-8 are kept, as ``raw_path``), or
    * tar shards (a ``.tar``, or a folder or glob of them; :mod:`pipeline.shards`): one row per sample, with
      label, speaker, split (and optionally a turn: channel, segment_start_s, segment_end_s) from its ``key.json``.

    A row the reader cannot use (a bad manifest line, a bad sidecar, a member cut off by a truncated shard) is kept
    with ``error`` set, so it is counted in the cache, never dropped. ``splits`` keeps those splits (and every
    error row)."""
    from pipeline.labeling.sources import MANIFEST_EXTENSIONS, list_audio
    from pipeline.labeling.sources import read_manifest as read_records
    from pipeline.recipes.common import MANIFEST_COLUMNS

    if uri.lower().endswith(MANIFEST_EXTENSIONS):
        records = read_records(uri, required=MANIFEST_COLUMNS)  # one read of the manifest
    else:
        records = list_audio(uri)
    rows = []
    for r in records:
        x = r.extra
        row = {
            "utt_id": x.get("utt_id") or r.recording_id,
            "path": r.path,
            "raw_path": r.raw_path,
            "member": r.member,
            "label": x.get("label"),
            "transcript": r.transcript,
            "speaker": x.get("speaker"),
            "split": x.get("split"),
            "error": r.error,
        }
        row.update({k: x[k] for k in (*SEGMENT_COLUMNS, "duration_s") if x.get(k) is not None})
        rows.append(row)
    df = pd.DataFrame(rows)
    if splits:
        df = df[df["split"].isin(splits) | df["error"].notna()]
    if limit:
        df = df.head(limit)
    if df["utt_id"].duplicated().any():
        raise ValueError(
            f"{uri}: duplicate utt_id values, e.g. {df.loc[df['utt_id'].duplicated(), 'utt_id'].head(3).tolist()}"
        )
    if len(df) == 0:
        raise ValueError(f"{uri}: no rows to extract (splits={splits})")
    if "duration_s" in df:
        df["duration_s"] = pd.to_numeric(df["duration_s"], errors="coerce")
    return df.reset_index(drop=True)


def extract_features(
    manifest: str,
    out_dir: str,
    cfg=None,
    splits: list[str] | None = None,
    actors: int | None = None,
    cpus_per_actor: float | None = None,
    gpus_per_actor: float = 0.0,
    batch_size: int = 16,
    dtype: str = "float16",
    threads: int | None = None,
    overwrite: bool = False,
    limit: int | None = None,
    rows_per_file: int = 512,
    max_duration_s: float = 600.0,
    asr_model: str | None = None,
    limits: DecodeLimits | None = None,
    progress: bool = False,
    speed_perturb: tuple[float, ...] = (),
    asr_dtype: str = "float32",
    copy_transcripts: str = "asr",
) -> dict:
    """Run the extraction (Ray must be initialised) and return ``meta.json``'s content. ``asr_model`` (a local
    Whisper checkpoint): each row's ``transcript`` is what that ASR hears (decoded from the encoder's own states when
    the encoder is that checkpoint, as labeling does), so a text bundle trains on ASR errors; ``meta.json`` records
    the WER against the manifest's transcripts. ``manifest``: anything :func:`read_manifest` reads (a manifest or
    tar shards, local or a URI). ``limits``: the decode limits (the labeling job's defaults; ``max_duration_s``
    bounds each utterance, a cut turn's source may be up to 4 h). ``progress``: a bar (or a line every 10 s) of the
    rows encoded, on stderr. ``speed_perturb``: speed factors (e.g. ``(0.9, 1.1)``) of extra copies of each
    ``train`` row (:func:`speed_perturbed`). ``asr_dtype``: the ASR decoder's dtype. ``copy_transcripts``: a
    speed-perturbed copy's transcript is what the ASR hears in it (``asr``: other ASR errors than its recorded
    turn's, a text augmentation) or its recorded turn's (``recorded``: one decode per turn, the copies encoded in a
    second pass; measured on the demo: 14 % less extraction time, and a model 0.02-0.03 UA worse)."""
    import ray

    from emoq_model.config import load_config
    from pipeline.console import remote_progress

    t0 = time.perf_counter()
    cfg = cfg or load_config(None, check_assets=False)
    enc = dict(vars(cfg.encoder))
    if gpus_per_actor > 0:
        enc["device"] = "cuda" if enc["device"] in ("auto", "cpu") else enc["device"]
    elif enc["device"] == "auto":
        enc["device"] = "cpu"
    fs, root = F.resolve(out_dir)
    shards = F.join(out_dir, F.SHARDS_DIR)
    if F.exists(shards) or F.exists(F.join(out_dir, F.META_FILE)):
        if not overwrite:
            raise FileExistsError(f"{out_dir} already holds a feature cache (use --overwrite)")
        for name in (F.SHARDS_DIR,):
            if F.exists(F.join(out_dir, name)):
                fs.delete_dir(F.resolve(F.join(out_dir, name))[1])
        for name in (F.META_FILE, F.SPEAKER_STATS_FILE):
            if F.exists(F.join(out_dir, name)):
                fs.delete_file(F.resolve(F.join(out_dir, name))[1])

    df = speed_perturbed(read_manifest(manifest, splits, limit), tuple(speed_perturb))
    if "duration_s" in df and df["duration_s"].notna().all():  # similar lengths per encoder batch: less padding
        df = df.sort_values("duration_s", kind="stable").reset_index(drop=True)
    from transformers import AutoFeatureExtractor

    sample_rate = int(AutoFeatureExtractor.from_pretrained(cfg.encoder.path).sampling_rate)

    n_gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus_per_actor > 0:
        actors = actors or max(1, int(n_gpus / gpus_per_actor))
        cpus_per_actor = 1.0 if cpus_per_actor is None else cpus_per_actor
    else:
        actors = actors or 1
        # fractional: whole-CPU actor pools next to the streaming producer hang silently on 2-core machines (measured)
        cpus_per_actor = 0.5 if cpus_per_actor is None else cpus_per_actor
    if threads is None and gpus_per_actor <= 0:
        threads = max(1, (os.cpu_count() or 1) // actors)

    copies = df[SPEED_COLUMN].notna() if SPEED_COLUMN in df else pd.Series(False, index=df.index)
    if copy_transcripts not in ("asr", "recorded"):
        raise ValueError(f"copy_transcripts must be asr or recorded, got {copy_transcripts!r}")
    # "recorded": ASR once per recorded turn; its copies are encoded in a second pass with the transcript it heard
    reuse = bool(asr_model) and copy_transcripts == "recorded" and bool(copies.any())
    passes = [(df[~copies], asr_model), (df[copies], None)] if reuse else [(df, asr_model)]
    with remote_progress(len(df), "extract", unit="turns", show=progress, counts=("audio",)) as counter:
        for i, (part, asr) in enumerate(passes):
            if i and reuse:
                part = with_recorded_transcripts(part, shards)
            encode_rows(
                part,
                shards,
                batch_size=batch_size,
                sample_rate=sample_rate,
                max_duration_s=max_duration_s,
                limits=limits,
                encoder_actor_kwargs={
                    "encoder_cfg": enc,
                    "dtype": dtype,
                    "threads": threads,
                    "asr_model": asr,
                    "asr_dtype": asr_dtype,
                    "progress": counter,
                },
                actors=actors,
                cpus_per_actor=cpus_per_actor,
                gpus_per_actor=gpus_per_actor,
                rows_per_file=rows_per_file,
            )
    t_encode = time.perf_counter() - t0

    meta = {
        "format": F.FORMAT,
        "manifest": os.path.abspath(manifest) if "://" not in manifest else manifest,
        "n_input_errors": int(df["error"].notna().sum()),
        "encoder": {k: v for k, v in vars(cfg.encoder).items()},
        "sample_rate": sample_rate,
        "dtype": dtype,
        # rows cut from recordings (a labelled call archive): their `speaker` is one channel of one call, the
        # population labeling normalises over (emoq_model.features.norm_groups)
        "groups": "channels" if any(c in df for c in SEGMENT_COLUMNS) else "speakers",
        "turn_times": True,  # rows cut from recordings carry start_s / end_s (conversation context)
        "transcripts": f"asr:{asr_model}" if asr_model else "manifest",
        **({"asr_dtype": asr_dtype} if asr_model else {}),
        "speed_perturb": sorted(float(f) for f in speed_perturb if float(f) != 1.0),
        # a speed-perturbed copy's transcript: its recorded turn's (ASR'd once) or its own ASR
        **({"copy_transcripts": "recorded" if reuse else "asr"} if asr_model and copies.any() else {}),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    from emoq_model.model import encoder_dims  # dims from the encoder's config, no weights loaded

    dim, n_layers = encoder_dims(cfg)
    meta.update(dim=int(dim), n_layers=int(n_layers))
    F.write_text(F.join(out_dir, F.META_FILE), json.dumps(meta, indent=1))
    cache = F.FeatureCache(out_dir)
    index = cache.index()
    stats = F.compute_group_stats(cache.iter_items(), key="speaker")
    F.write_stats(stats, F.join(out_dir, F.SPEAKER_STATS_FILE), key="speaker")
    meta.update(
        n_rows=int(len(index)),
        n_errors=int(index["error"].notna().sum()),
        errors=index.loc[index["error"].notna(), ["utt_id", "error"]].head(20).to_dict("records"),
        splits={str(k): int(v) for k, v in index.loc[index["error"].isna(), "split"].value_counts().items()},
        labels={str(k): int(v) for k, v in index.loc[index["error"].isna(), "label"].value_counts().items()},
        n_speakers=len(stats),
        audio_s=float(index["num_samples"].fillna(0).sum() / sample_rate),
        encode_s=round(t_encode, 2),
        **({"asr_wer": asr_wer(df, index)} if asr_model else {}),
        total_s=round(time.perf_counter() - t0, 2),
    )
    F.write_text(F.join(out_dir, F.META_FILE), json.dumps(meta, indent=1))
    return meta


def asr_wer(manifest: pd.DataFrame, index: pd.DataFrame) -> float | None:
    """WER of the cache's (ASR) transcripts against the manifest's, over the recorded rows that have a reference
    (speed-perturbed copies left out: they say the same words as their recorded turn)."""
    from pipeline.labeling.asr import normalise_text, word_error_rate

    ref = manifest.set_index("utt_id")["transcript"] if "transcript" in manifest else pd.Series(dtype=object)
    pairs = [
        (ref[u], h if isinstance(h, str) else None)
        for u, h in zip(index["utt_id"], index["transcript"])
        if not F.is_speed_copy(u) and u in ref.index and isinstance(ref[u], str) and normalise_text(ref[u])
    ]
    if not pairs:
        return None
    return round(word_error_rate([r for r, _ in pairs], [h for _, h in pairs]), 4)
