"""The labeling flow's column contract: which columns each stage needs, adds and drops, checked once at plan time.

One row is one recording from source to sink (segments travel as arrays inside it), so a stage that forgets a
column, or a new stage inserted in the wrong place, fails when the plan is built, with the stage and column named,
instead of as a ``KeyError`` deep inside a Ray actor after the models have loaded. Ray's ``ray.data.llm`` stages
declare their inputs the same way.

Columns (one value per recording):

========================  =====================================================================================
``recording_id``          the recording's id (manifest, or the path relative to the input folder)
``path`` / ``raw_path``   URI of the audio / exact bytes of a local name that is not UTF-8
``member``                a tar shard's member: JSON ``{name, offset, size}`` of its bytes in ``path``, or none
``transcript``            a manifest transcript for the whole recording (optional)
``channel_names``         comma-joined channel names (``agent,customer``), or none
``given_segments``        the manifest's segments as JSON (skip VAD), or none
``error``                 why the recording cannot be labelled (set by any stage; the row still flows to the sink)
``duration_s``            decoded duration
``audio``                 ``[channels * samples]`` float32 at the model rate (dropped after encoding)
``seg_offsets``           per segment, its start in ``audio`` (``n + 1`` offsets)
``seg_channel``           per segment, its channel index
``seg_start_s/seg_end_s`` per segment, its time span in the recording
``seg_transcript``        per segment, a JSON list of transcripts (manifest or ASR)
``prompt_embeds``         all segments' soft prompts stacked ``[sum(tokens), hidden]`` (dropped after labeling)
``prompt_offsets``        per segment, its first prompt row
``labels``                per segment, the label
``confidence``            per segment, the calibrated probability of the label
``probabilities``         per segment, ``[n_labels]`` calibrated probabilities
``label_mass``            per segment, the LLM's probability mass on label tokens (out-of-distribution signal)
========================  =====================================================================================
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from emoq_model.errors import EmoQError

SOURCE = ("recording_id", "path", "raw_path", "member", "transcript", "channel_names", "given_segments", "error")
PREPARED = (
    "recording_id",
    "path",
    "channel_names",
    "duration_s",
    "source_sample_rate",
    "num_channels",
    "error",
    "audio",
    "seg_offsets",
    "seg_channel",
    "seg_start_s",
    "seg_end_s",
    "seg_transcript",
)
SEGMENTS = ("seg_offsets", "seg_channel", "seg_start_s", "seg_end_s")
PROMPTS = ("prompt_embeds", "prompt_offsets")
LABELS = ("labels", "confidence", "probabilities", "label_mass")
WRITTEN = ("recording_id", "num_segments", "duration_s", "speech_s", "error")  # one small row per recording


class PlanError(EmoQError):
    """A labeling plan whose stages do not fit together (a stage needs a column no earlier stage provides)."""


@dataclass(frozen=True)
class StageColumns:
    """A stage's contract: the columns it reads, the ones it adds (or rewrites) and the ones it drops."""

    name: str
    needs: tuple[str, ...]
    adds: tuple[str, ...] = ()
    drops: tuple[str, ...] = ()
    replaces_all: bool = False  # the stage's output is exactly ``adds`` (e.g. the sink's report rows)

    def apply(self, available: set[str]) -> set[str]:
        missing = [c for c in self.needs if c not in available]
        if missing:
            raise PlanError(
                f"labeling stage {self.name!r} needs columns {missing} that no earlier stage provides "
                f"(available: {sorted(available)})"
            )
        if self.replaces_all:
            return set(self.adds)
        return (available | set(self.adds)) - set(self.drops)


PREPARE = StageColumns(
    "prepare",
    needs=SOURCE,
    adds=PREPARED,
    replaces_all=True,
)
TRANSCRIBE = StageColumns(
    "transcribe", needs=("recording_id", "audio", "seg_offsets", "seg_transcript"), adds=("seg_transcript",)
)
ENCODE = StageColumns(
    "encode", needs=("recording_id", "audio", *SEGMENTS, "seg_transcript"), adds=PROMPTS, drops=("audio",)
)
LABEL = StageColumns("label", needs=(*PROMPTS, *SEGMENTS[1:]), adds=LABELS, drops=PROMPTS)
ENCODE_AND_LABEL = StageColumns("encode+label", needs=ENCODE.needs, adds=LABELS, drops=("audio",))
WRITE = StageColumns(
    "write",
    needs=(
        "recording_id",
        "path",
        "channel_names",
        "duration_s",
        "error",
        "seg_channel",
        "seg_start_s",
        "seg_end_s",
        "seg_transcript",
        *LABELS,
    ),
    adds=WRITTEN,
    replaces_all=True,
)


def check_plan(stages: Sequence[StageColumns], source: Iterable[str] = SOURCE) -> set[str]:
    """Walk the plan's stages from the source columns; raise :class:`PlanError` at the first stage whose needs
    are not met; return the columns that reach the end."""
    available = set(source)
    for st in stages:
        available = st.apply(available)
    return available


def rows_of(batch: dict) -> list[dict]:
    """A ``map_batches`` batch (column -> values) as one dict per recording."""
    n = len(batch["recording_id"])
    return [{k: batch[k][i] for k in batch} for i in range(n)]


def columns_of(rows: list[dict], keys: Iterable[str]) -> dict:
    """The inverse of :func:`rows_of` for ``keys``."""
    return {k: [r.get(k) for r in rows] for k in keys}
