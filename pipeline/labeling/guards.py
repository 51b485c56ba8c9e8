"""What keeps a labeling output consistent across reruns: the model's identity, the one model an output holds, and
one job per output at a time.

* :func:`bundle_digest` hashes every file of a bundle that changes labels or confidences (config, Former +
  projector, adapter or merged LLM, normalisation statistics, calibration), whole; the digest is cached in the
  bundle (``.model_id.json``, keyed by each file's size and mtime) so a 15 GB merged LLM is read once, not at every
  job start.
* :func:`check_output_model`: a rerun resumes an output only if the output's rows came from the same model;
  mixing two bundles' labels in one output would make its summary meaningless.
* :class:`OutputLock`: a lease file in the output (``.emoq.lock``: host, pid, heartbeat). A second job on the same
  output refuses to start; a lock whose process is gone (same host) or whose heartbeat is older than
  ``stale_s`` (another host that died) is taken over.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.fs as pafs

from emoq_model.errors import EmoQError
from emoq_model.io import join, resolve, write_json

DIGEST_CACHE = ".model_id.json"
LOCK_FILE = ".emoq.lock"
# bundle entries whose content changes what labeling writes (the base LLM and the encoder are named by path in
# config.yaml; their weights are the user's checkpoints, identified by that path)
LABEL_FILES = (
    "config.yaml",
    "bundle.json",
    "former.safetensors",
    "feature_norm.json",
    "feature_norm_stats.npz",
    "calibration.json",
)
LABEL_DIRS = ("adapter", "llm_merged")


class OutputError(EmoQError):
    """The output directory cannot be used by this job (another model's labels, another job running)."""


def _label_files(root: Path) -> list[Path]:
    files = [root / f for f in LABEL_FILES if (root / f).is_file()]
    for d in LABEL_DIRS:
        if (root / d).is_dir():
            files += sorted(p for p in (root / d).rglob("*") if p.is_file())
    return files


def bundle_digest(bundle_dir: str | os.PathLike) -> str:
    """sha256 over the bundle's label-relevant files (names and contents), cached by size and mtime."""
    root = Path(bundle_dir).expanduser().resolve()
    files = _label_files(root)
    listing = [[str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    cache = root / DIGEST_CACHE
    with contextlib.suppress(OSError, ValueError, KeyError):
        cached = json.loads(cache.read_text())
        if cached["listing"] == listing:
            return cached["digest"]
    h = hashlib.sha256()
    for p, (rel, size, _) in zip(files, listing):
        h.update(f"{rel}\0{size}\0".encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda f=f: f.read(1 << 22), b""):
                h.update(chunk)
    digest = h.hexdigest()
    with contextlib.suppress(OSError):  # a read-only bundle: hashed again next time
        write_json(cache, {"listing": listing, "digest": digest})
    return digest


def output_model_ids(out_uri: str) -> set[str]:
    """The model ids of the rows already in an output (empty for a new output)."""
    from pipeline.labeling.sink import part_files, segments_dir

    fs, root = resolve(segments_dir(out_uri))
    infos = part_files(fs, root)
    if not infos:
        return set()
    table = pads.dataset([i.path for i in infos], filesystem=fs, format="parquet").to_table(columns=["model_id"])
    return {m for m in table.column("model_id").unique().to_pylist() if m is not None}


def check_output_model(out_uri: str, mid: str, allow_other: bool = False) -> None:
    """Refuse to add ``mid``'s labels to an output that holds another model's (unless ``allow_other``)."""
    other = output_model_ids(out_uri) - {mid}
    if other and not allow_other:
        raise OutputError(
            f"{out_uri} holds labels of {sorted(other)}; this run's model is {mid}. Label into another --output, "
            "or pass --allow-other-model to mix them"
        )


class OutputLock:
    """One labeling job per output: ``with OutputLock(out): ...`` (see the module docstring)."""

    def __init__(self, out_uri: str, stale_s: float = 120.0, heartbeat_s: float = 20.0):
        self.uri = join(out_uri, LOCK_FILE)
        self.stale_s, self.heartbeat_s = stale_s, heartbeat_s
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "token": os.urandom(8).hex()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> dict | None:
        fs, path = resolve(self.uri)
        try:
            with fs.open_input_stream(path) as f:
                return json.loads(f.read().decode())
        except (FileNotFoundError, OSError, ValueError):
            return None

    def _stale(self, held: dict) -> bool:
        if time.time() - float(held.get("heartbeat", 0)) > self.stale_s:
            return True
        if held.get("host") == self.me["host"]:
            try:
                os.kill(int(held["pid"]), 0)
            except ProcessLookupError:
                return True  # the holder died on this host
            except (PermissionError, KeyError, ValueError):
                return False
        return False

    def _write(self, create: bool) -> bool:
        body = json.dumps({**self.me, "heartbeat": time.time()}).encode()
        fs, path = resolve(self.uri)
        fs.create_dir(
            os.path.dirname(path) if isinstance(fs, pafs.LocalFileSystem) else path.rsplit("/", 1)[0], recursive=True
        )
        if create and isinstance(fs, pafs.LocalFileSystem):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)  # atomic: one creator wins
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(body)
            return True
        write_json(self.uri, json.loads(body))
        return True

    def acquire(self) -> None:
        for _ in range(2):
            if self._write(create=True):
                break
            held = self._read()
            if held is not None and not self._stale(held):
                raise OutputError(
                    f"another labeling job holds {self.uri} (host {held.get('host')}, pid {held.get('pid')}); "
                    f"wait for it, or remove the file if that job is gone (it is taken over after {self.stale_s:.0f} s "
                    "without a heartbeat)"
                )
            self._remove()  # stale: take over
        else:
            raise OutputError(f"could not take the lock {self.uri}")
        if (self._read() or {}).get("token") != self.me["token"]:  # object stores: last writer wins; check
            raise OutputError(f"another labeling job took {self.uri} at the same time")
        self._thread = threading.Thread(target=self._beat, name="emoq-output-lock", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if (self._read() or {}).get("token") == self.me["token"]:
                self._write(create=False)

    def _remove(self) -> None:
        fs, path = resolve(self.uri)
        with contextlib.suppress(FileNotFoundError, OSError):
            fs.delete_file(path)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if (self._read() or {}).get("token") == self.me["token"]:
            self._remove()

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
