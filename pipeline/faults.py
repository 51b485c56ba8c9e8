"""Fault injection for the reliability tests: make a stage's worker process die in the middle of a batch.

Off unless ``EMOQ_FAULTS_DIR`` is set in the workers' environment. A test arms a fault by writing a file named
after the stage into that folder, holding N: the N-th batch the stage handles in one process then kills its own
process with SIGKILL after doing the work but before returning it (the worst moment: the work is lost). The arm
file is renamed to ``<stage>.fired`` first, so each armed fault fires exactly once even when Ray restarts the
actor and retries the batch. A file ``<stage>.sleep`` holding seconds slows every batch of the stage down (to
give a test time to kill the driver mid-run). A file ``<stage>.poison`` holding a text makes the stage's process
die on *every* batch holding a recording whose id contains that text (a file that crashes the decoder), and
appends a line to ``<stage>.poison.log`` each time.
"""

from __future__ import annotations

import os
import signal
import time

ENV = "EMOQ_FAULTS_DIR"
_calls: dict[str, int] = {}


def maybe_die(stage: str, recording_ids=()) -> None:
    root = os.environ.get(ENV)
    if not root:
        return
    _calls[stage] = _calls.get(stage, 0) + 1
    arm = os.path.join(root, stage)
    try:
        with open(arm + ".poison") as f:
            poison = f.read().strip()
    except OSError:
        poison = ""
    if poison and any(poison in str(r) for r in recording_ids):
        with open(arm + ".poison.log", "a") as f:
            f.write(f"{os.getpid()} {len(recording_ids)}\n")
        os.kill(os.getpid(), signal.SIGKILL)
    try:
        with open(arm + ".sleep") as f:
            time.sleep(float(f.read().strip()))
    except (OSError, ValueError):
        pass
    try:
        with open(arm) as f:
            n = int(f.read().strip() or 1)
    except (OSError, ValueError):
        return
    if _calls[stage] < n:
        return
    try:
        os.rename(arm, arm + ".fired")  # atomic: only one process wins
    except OSError:
        return
    with open(arm + ".pid", "w") as f:
        f.write(str(os.getpid()))
    os.kill(os.getpid(), signal.SIGKILL)
