"""The ASR stage on real speech: fills missing transcripts, keeps given ones."""

import json

from emoq_model.assets.speech_samples import asterisk_sounds_dir, asterisk_transcripts
from emoq_model.assets.whisper_ct2 import build_whisper_tiny_en
from pipeline.labeling.asr import Transcribe
from pipeline.labeling.prepare import PrepareConfig, prepare_recording


def test_transcribe_fills_only_missing_transcripts():
    root, refs = asterisk_sounds_dir(), asterisk_transcripts()
    names = ["vm-goodbye", "vm-password"]
    rows = []
    for i, n in enumerate(names):
        given = json.dumps([{"start": 0.0, "end": 30.0, "transcript": "kept as given" if i else None}])
        rows.append(
            prepare_recording(
                {
                    "recording_id": n,
                    "path": str(root / f"{n}.wav"),
                    "transcript": None,
                    "channel_names": None,
                    "given_segments": given,
                    "error": None,
                },
                PrepareConfig(sample_rate=16000),
            )
        )
    batch = {k: [r[k] for r in rows] for k in rows[0]}
    out = Transcribe(str(build_whisper_tiny_en()), sample_rate=16000)(batch)
    first = json.loads(out["seg_transcript"][0])[0].lower()
    assert "goodbye" in first and "goodbye" in refs["vm-goodbye"].lower()
    assert json.loads(out["seg_transcript"][1]) == ["kept as given"]
