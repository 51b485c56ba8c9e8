"""What a person watching a job sees: one progress line or bar per phase, a final table, and the libraries' log
output (Ray, Ray Data, vLLM, transformers, torch) in a log file instead of on the console.

    with quiet_logs(f"{out}/logs/label.log", verbose=False):
        init_ray(log_to_driver=False)            # workers' stdout/stderr stay in Ray's session log dir
        note_ray_session()
        report = run(cfg)                        # Progress lines from the driver loop
    print(final_table(report, log_path=...))
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

# Worker processes are separate: their libraries read these at import. Forwarded to a local Ray's workers by
# pipeline.ray_env.init_ray(log_to_driver=False); set in the driver by quiet_logs.
QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "VLLM_LOGGING_LEVEL": "WARNING",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TQDM_DISABLE": "1",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
}
# Loggers (and their children) that libraries give console handlers of their own, with propagation off.
NOISY_LOGGERS = ("ray", "vllm", "transformers", "torch", "datasets", "huggingface_hub", "py.warnings")
log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- progress


def _duration(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _is_terminal(stream: TextIO) -> bool:
    """A terminal with a size: tqdm draws nothing on a pty of 0 x 0 (some container shells), lines work there."""
    try:
        if not stream.isatty():
            return False
        size = os.get_terminal_size(stream.fileno())
        return size.columns > 0 and size.lines > 0
    except (AttributeError, OSError, ValueError):
        return False


class Progress:
    """Progress of one job phase over ``total`` files (recordings): a tqdm bar on an interactive terminal, else a
    line at most every ``interval_s`` (plus a final one), so that a log collector gets a few readable lines
    instead of a redrawn bar. ``counts``: which running totals the phase shows beside its files (``segments``,
    ``audio``); failures are shown once there are any."""

    def __init__(
        self,
        total: int,
        phase: str = "label",
        unit: str = "recordings",
        stream: TextIO | None = None,
        interactive: bool | None = None,
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        counts: tuple[str, ...] = ("segments", "audio"),
    ):
        self.total, self.phase, self.unit, self.counts = int(total), phase, unit, tuple(counts)
        self.stream = stream if stream is not None else sys.stderr
        self.interval_s, self.clock = interval_s, clock
        self.files = self.segments = self.failed = 0
        self.audio_s = 0.0
        self.start = self._last = clock()
        self.closed = False
        if interactive is None:
            interactive = _is_terminal(self.stream)
        self._bar = None
        if interactive:
            from tqdm import tqdm

            # disable=False explicitly: quiet_logs sets TQDM_DISABLE for the libraries' bars, not for this one
            self._bar = tqdm(
                total=self.total,
                desc=f"[{phase}]",
                unit="rec",
                file=self.stream,
                disable=False,
                dynamic_ncols=True,
                leave=True,
            )

    def update(self, files: int = 1, segments: int = 0, audio_s: float = 0.0, failed: int = 0) -> None:
        self.files += files
        self.segments += segments
        self.audio_s += audio_s
        self.failed += failed
        if self._bar is not None:
            self._bar.set_postfix_str(self._counts(), refresh=False)
            self._bar.update(files)
        elif self.files < self.total and self.clock() - self._last >= self.interval_s:  # the last: close()
            self._print()

    def eta_s(self) -> float | None:
        """Seconds left at the rate so far (None before the first file)."""
        if not self.files:
            return None
        return (self.clock() - self.start) / self.files * max(0, self.total - self.files)

    def _counts(self) -> str:
        parts = [f"{self.segments} segments"] if "segments" in self.counts else []
        if "audio" in self.counts:
            parts.append(f"{self.audio_s / 3600:.2f} h audio")
        if self.failed:
            parts.append(f"{self.failed} failed")
        return " · ".join(parts)

    def line(self) -> str:
        elapsed = self.clock() - self.start
        eta = self.eta_s()
        tail = "done" if self.closed else ("ETA ?" if eta is None else f"ETA {_duration(eta)}")
        counts = self._counts()
        return (
            f"[{self.phase}] {self.files}/{self.total} {self.unit} · {counts + ' · ' if counts else ''}"
            f"{_duration(elapsed)} elapsed · {tail}"
        )

    def _print(self) -> None:
        self._last = self.clock()
        print(self.line(), file=self.stream, flush=True)

    def write(self, msg: str) -> None:
        """A message that does not break the bar."""
        if self._bar is not None:
            self._bar.write(msg, file=self.stream)
        else:
            print(msg, file=self.stream, flush=True)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._bar is not None:
            self._bar.close()
        else:
            self._print()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ProgressCounter:
    """Counts that Ray tasks and actors add to (``counter.add.remote(files=.., audio_s=..)``) while the driver
    blocks in a Ray Data write: :func:`remote_progress` runs it as a zero-CPU actor and polls it."""

    def __init__(self):
        self.counts = {"files": 0, "segments": 0, "audio_s": 0.0, "failed": 0}

    def add(self, files: int = 0, segments: int = 0, audio_s: float = 0.0, failed: int = 0) -> None:
        for k, v in (("files", files), ("segments", segments), ("audio_s", audio_s), ("failed", failed)):
            self.counts[k] += v

    def get(self) -> dict:
        return dict(self.counts)


@contextmanager
def remote_progress(
    total: int, phase: str, unit: str = "recordings", show: bool = True, interval_s: float = 1.0, **progress_kw
) -> Iterator[object | None]:
    """A :class:`Progress` for a phase whose work runs in Ray workers and whose driver call blocks (e.g.
    ``ds.write_parquet``). Yields a :class:`ProgressCounter` actor handle to pass to the workers (None when not
    ``show``: nothing to count); a driver thread moves the bar by what they added. Ray must be initialised."""
    if not show:
        yield None
        return
    import ray

    counter = ray.remote(num_cpus=0)(ProgressCounter).remote()
    progress = Progress(total, phase=phase, unit=unit, **progress_kw)
    shown = ProgressCounter().get()  # what the bar shows so far: the counter's keys, all zero
    stop = threading.Event()

    def poll() -> None:
        while True:
            stopping = stop.wait(interval_s)
            try:
                now = ray.get(counter.get.remote(), timeout=30)
            except Exception:  # the actor is gone (cluster shutting down): the bar just stops moving
                return
            d = {k: now[k] - shown[k] for k in shown}
            if any(d.values()):
                progress.update(d["files"], segments=d["segments"], audio_s=d["audio_s"], failed=d["failed"])
                shown.update(now)
            if stopping:
                return

    thread = threading.Thread(target=poll, name=f"progress-{phase}", daemon=True)
    thread.start()
    try:
        yield counter
    finally:
        stop.set()
        thread.join(timeout=60)
        progress.close()
        ray.kill(counter)


# ------------------------------------------------------------------------------------------ final table


def final_table(report: dict, log_path: str | os.PathLike | None = None, title: str = "Labelling finished") -> str:
    """The label report (:func:`pipeline.labeling.job.run`) as an aligned plain-text table."""
    r = report
    rows = [
        ("recordings found", r.get("recordings_found", 0)),
        ("already done", r.get("already_done", 0)),
        ("labelled", r.get("labeled", 0)),
        ("failed", r.get("failed", 0)),
    ]
    for key, name in (
        ("retried_failed", "retried (failed before)"),
        ("isolated", "retried one by one"),
        ("crashed", "failed every attempt"),
        ("duplicate_recordings", "duplicated recordings"),
    ):
        if r.get(key):
            rows.append((name, r[key]))
    wall = r.get("wall_s", 0.0)
    rows += [
        ("segments", r.get("segments", 0)),
        ("audio", f"{r.get('audio_hours', r.get('audio_s', 0.0) / 3600):.3f} h"),
        ("speech", f"{r.get('speech_s', 0.0) / 3600:.3f} h"),
        ("wall time", f"{wall:.1f} s"),
        ("speed", f"{r.get('audio_s_per_s', 0.0):.1f} audio s/s"),
        ("output", r.get("output", "")),
        ("segments dir", r.get("segments_dir", "")),
        ("summary", r.get("summary", "")),
    ]
    if log_path is not None:
        rows.append(("log file", str(log_path)))
    w = max(len(k) for k, _ in rows)
    return "\n".join([title, *(f"  {k:<{w}}  {v}" for k, v in rows)])


def _epoch_line(rec: dict) -> str:
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    return (
        f"[train] stage {rec.get('stage')} epoch {rec.get('epoch')}: loss {f(rec.get('train_loss'))} · val UA "
        f"{f(rec.get('val_ua'))} WA {f(rec.get('val_wa'))} loss {f(rec.get('val_loss'))} · "
        f"{rec.get('epoch_s', 0):.0f} s{' *' if rec.get('is_best') else ''}"
    )


@contextmanager
def follow_train_metrics(
    path: str | os.PathLike,
    enabled: bool = True,
    interval_s: float = 2.0,
    out: Callable[[str], None] | None = None,
    epochs: int | None = None,
    stream: TextIO | None = None,
) -> Iterator[None]:
    """While the block runs, print each epoch that rank 0 appends to a Ray Train run's ``metrics.jsonl``: with
    ``log_to_driver=False`` the workers' own epoch lines are only in Ray's logs. Epochs already in the file
    (a resumed run) are not repeated. ``epochs``: the run's epochs over all its stages; a :class:`Progress` bar
    (``[train] k/epochs epochs · ETA``) moves by one per epoch and the epoch lines are written above it (on
    ``stream``); without it, or with ``out``, the lines go to ``out`` (default ``print``)."""
    if not enabled:
        yield
        return
    path = Path(path)

    def read() -> list[str]:
        try:
            return path.read_text().splitlines()
        except OSError:
            return []

    seen = len(read())
    progress = Progress(epochs, phase="train", unit="epochs", counts=(), stream=stream) if epochs else None
    if progress is not None and seen:  # a resumed run: the epochs done before count as done
        progress.update(min(seen, epochs))
    emit = out or (progress.write if progress is not None else print)
    stop = threading.Event()

    def poll() -> None:
        nonlocal seen
        while True:
            stopping = stop.wait(interval_s)
            for ln in read()[seen:]:
                try:
                    rec = json.loads(ln)
                except ValueError:  # caught mid-write: read again next time
                    break
                emit(_epoch_line(rec))
                if progress is not None:
                    progress.update(1)
                seen += 1
            if stopping:
                return

    thread = threading.Thread(target=poll, name="follow-train-metrics", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)
        if progress is not None:
            progress.close()


# --------------------------------------------------------------------------------------------- log file


class _LogFile(logging.FileHandler):
    """The log file's handler keeps its own format: ``ray.init`` sets its format on every handler of the 'ray'
    logger."""

    def setFormatter(self, fmt: logging.Formatter | None) -> None:
        if self.formatter is None:
            super().setFormatter(fmt)


def _is_console(h: logging.Handler) -> bool:
    """A handler a library set up for the terminal: a stream handler that is not a file (Ray's PlainRayHandler,
    vLLM's and transformers' stdout/stderr handlers)."""
    return isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)


def line_buffered() -> None:
    """Console output on stdout (the job's messages, the table) and stderr (progress) in the order printed, also
    when both go to one file or pipe."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(line_buffering=True)
        except (AttributeError, ValueError):  # not a text file (a test's capture): nothing to do
            pass


def default_log_path(output: str, name: str) -> Path:
    """``<output>/logs/<name>.log``; for an output URI (s3://...) a local file under the temp dir."""
    if "://" in output:
        import tempfile

        return Path(tempfile.gettempdir(), "emoq-logs", f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.log")
    return Path(output).expanduser().resolve() / "logs" / f"{name}.log"


def ray_session_dir() -> str | None:
    """This driver's Ray session directory (workers' stdout/stderr are under its ``logs/``), if Ray is up."""
    try:
        import ray

        node = ray._private.worker._global_node
        return None if node is None else node.get_session_dir_path()
    except Exception:  # a Ray without this internal: the header just lacks the line
        return None


def note_ray_session() -> None:
    """Write where Ray keeps the workers' logs into the log file (after ``ray.init``)."""
    d = ray_session_dir()
    if d:
        log.info(
            "Ray session dir: %s (worker stdout/stderr: %s/logs/worker-*.out|err, Ray Data: %s/logs/ray-data)", d, d, d
        )


@contextmanager
def quiet_logs(
    log_path: str | os.PathLike, verbose: bool = False, announce: Callable[[str], None] | None = print
) -> Iterator[Path | None]:
    """Unless ``verbose``: the libraries' Python logging (and warnings) go to ``log_path`` instead of the
    console, their progress bars are off, and :data:`QUIET_ENV` is set for worker processes. Yields the log
    path (None when verbose). Everything is restored on exit; nested uses write to both files.

    Worker processes log to Ray's session directory either way; keep them off the console with
    ``init_ray(log_to_driver=False)``, then :func:`note_ray_session` writes that directory into the file.
    """
    if verbose:
        yield None
        return
    import ray  # noqa: F401  (configures its loggers at import: ours must come after)
    import ray.data

    path = Path(log_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = _LogFile(path, encoding="utf-8")
    fh.setLevel(logging.INFO)
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    env_before = {k: os.environ.get(k) for k in QUIET_ENV}
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    tf = _quiet_transformers()  # before the handlers go: it may configure transformers' logger
    root = logging.getLogger()
    root_level = root.level
    warnings_captured = getattr(logging, "_warnings_showwarning", None) is not None
    removed: list[tuple[logging.Logger, logging.Handler]] = []
    added: list[logging.Logger] = [root]
    names = [
        n
        for n in list(logging.Logger.manager.loggerDict)
        if any(n == p or n.startswith(p + ".") for p in NOISY_LOGGERS)
    ]
    for name in sorted(set(names) | set(NOISY_LOGGERS)):
        lg = logging.getLogger(name)
        for h in [h for h in lg.handlers if _is_console(h)]:
            lg.removeHandler(h)
            removed.append((lg, h))
        if not lg.propagate:  # its records never reach the root's handler
            lg.addHandler(fh)
            added.append(lg)
    root.addHandler(fh)
    if root.level > logging.INFO:
        root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    ctx = ray.data.DataContext.get_current()
    bars = ctx.enable_progress_bars
    ctx.enable_progress_bars = False  # Ray Data's bars, or its "logging_progress" lines when not on a terminal
    log.info(
        "log of %s (pid %d): Ray, Ray Data, vLLM, transformers and torch output of this driver",
        " ".join(sys.argv) or "python",
        os.getpid(),
    )
    if announce is not None:
        announce(f"logs: {path}")
    try:
        yield path
    finally:
        ctx.enable_progress_bars = bars
        logging.captureWarnings(warnings_captured)
        if tf is not None:
            tf()
        for lg in added:
            lg.removeHandler(fh)
        for lg, h in removed:
            lg.addHandler(h)
        root.setLevel(root_level)
        fh.close()
        for k, v in env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _quiet_transformers() -> Callable[[], None] | None:
    """transformers read TRANSFORMERS_VERBOSITY / HF_HUB_DISABLE_PROGRESS_BARS at import; if the driver imported
    it already, turn its warnings and bars down now. Returns the undo."""
    tl = sys.modules.get("transformers.utils.logging")
    if tl is None:
        return None
    level, bars = tl.get_verbosity(), tl.is_progress_bar_enabled()
    tl.set_verbosity_error()
    tl.disable_progress_bar()

    def undo() -> None:
        tl.set_verbosity(level)
        if bars:
            tl.enable_progress_bar()

    return undo
