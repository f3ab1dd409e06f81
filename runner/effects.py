"""Side effects a function records, so a crash test can prove from outside the store what ran.

    from runner import current, effects, function

    @function
    def charge(order):
        payments.charge(order, idempotency_key=current().id)
        effects.record("charge", amount=order["amount"])

Each call appends one JSON line to the effects journal: the effect's name, the id,
attempt and function of the promise it ran for, the pid and the time, then the given
fields. The journal is `effects.jsonl` in the store directory, or the file named by
$RUNNER_EFFECTS (`runner chaos` points it outside the store, so the evidence is not
the store's own word). One O_APPEND write per line: lines of concurrent workers never
interleave, and a SIGKILL mid-write leaves at most a cut last line, which `read` skips.

Record in the functions that do the work (leaves), after the work: a workflow's body
replays from the top each time it resumes, so a record there repeats by design.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .context import current

JOURNAL_ENV = "RUNNER_EFFECTS"
JOURNAL_NAME = "effects.jsonl"
_OWN = ("effect", "promise_id", "attempt", "func", "pid", "time")


def journal_path(store_dir: Path | str) -> Path:
    """Where effects of functions running on this store are recorded: $RUNNER_EFFECTS, else the store's."""
    override = os.environ.get(JOURNAL_ENV)
    return Path(override) if override else Path(store_dir) / JOURNAL_NAME


def record(name: str, **fields: Any) -> dict[str, Any]:
    """Record that the running function just did `name`; returns the line written.

    Raises RuntimeError outside a running function (there is no promise to tie it to),
    ValueError when a field would hide one of the runner's own (`_OWN`).
    """
    call = current()
    taken = sorted(set(fields) & set(_OWN))
    if taken:
        raise ValueError(f"effects.record: {', '.join(taken)} is recorded by the runner itself")
    line = {"effect": name, "promise_id": call.id, "attempt": call.attempt, "func": call.func,
            "pid": os.getpid(), "time": time.time(), **fields}
    append(journal_path(call.store), line)
    return line


def append(path: Path | str, line: Mapping[str, Any]) -> None:
    """Append one JSON line with a single O_APPEND write (also for a journal of your own, an outbox)."""
    data = (json.dumps(line, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def read(path: Path | str) -> list[dict[str, Any]]:
    """Every line of a journal, oldest first; a missing file is an empty journal.

    A line cut short by a kill mid-write is not a record of anything, so it is skipped.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    lines = []
    for raw in text.splitlines():
        with contextlib.suppress(ValueError):
            line = json.loads(raw)
            if isinstance(line, dict):
                lines.append(line)
    return lines
