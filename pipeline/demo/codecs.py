"""Audio files as the demo writes them: containers (WAV/FLAC/OGG/...), telephone codecs (mu-law, A-law, GSM 6.10),
written atomically and byte-reproducibly (OGG stream serials derived from the clip, not random)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf

from emoq_model.io import write_bytes

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
    while pos + 27 <= len(out) and out[pos : pos + 4] == b"OggS":
        nseg = out[pos + 26]
        hlen = 27 + nseg
        plen = hlen + sum(out[pos + 27 : pos + 27 + nseg])
        out[pos + 14 : pos + 18] = serial.to_bytes(4, "little")
        out[pos + 22 : pos + 26] = b"\0\0\0\0"
        out[pos + 22 : pos + 26] = _ogg_crc(bytes(out[pos : pos + plen])).to_bytes(4, "little")
        pos += plen
    return bytes(out)


def write_audio(
    path: str | Path,
    x: np.ndarray,
    rate: int,
    fmt: str = "wav",
    telephone_codec: str | None = None,
    serial_seed: int = 0,
) -> None:
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
    write_bytes(path, raw)


# ----------------------------------------------------------------------------------------------------------------
# Corpus
# ----------------------------------------------------------------------------------------------------------------
