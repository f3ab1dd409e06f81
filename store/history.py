"""Each promise's executions, read from the log: who claimed it, when, and how that ended.

The state a store keeps is the present (a promise's current task, the attempt that
settled it); its log is the past. A follower of the log that remembers every claim and
what ended it can say "send_push ran twice, the first time killed" from the store
alone, which is what a crash test asserts. Only what the log still holds is known: a
store that compacted (past 8 MiB of log) starts its history at its snapshot.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

from .deaths import died
from .replica import Replica
from .state import CLAIM, CREATE, PARK, RELEASE, RELEASE_OWNER, SETTLE, UNPARK, WAIT
from .types import State, TaskState

# Where each operation that carries a time keeps it (CREATE: inside the promise's fields).
_TIME_AT = {CLAIM: 5, SETTLE: 4, RELEASE: 6, RELEASE_OWNER: 2, UNPARK: 2}
_ENDS = (SETTLE, RELEASE, RELEASE_OWNER, WAIT, PARK)


@dataclass(frozen=True, slots=True)
class Execution:
    """One claim of a promise: an attempt of a leaf, or one step of a workflow.

    `outcome` is "running" while the claim is held, then one of: "resolved",
    "rejected", "rejected_canceled", "rejected_timedout" (it settled the promise),
    "failed" (it raised and a later attempt follows), "died" (its process died),
    "released" (given back untouched, e.g. its worker was stopped by the supervisor),
    "suspended" (a workflow step that now awaits children) or "parked".
    `ended` is the time of the write that ended it (for a suspended step, the time of
    the children created with it, or the last time the log recorded before).
    """

    promise_id: str
    func: str
    attempt: int
    owner: str
    counter: int
    started: float
    ended: float | None = None
    outcome: str = "running"
    error: Any = None

    @property
    def pid(self) -> int:
        """The pid of the process that held the claim (owners are "<pid>@<start time>")."""
        return int(self.owner.split("@", 1)[0])


class History(Replica):
    """A follower of one store's log that keeps every execution it reads, in log order."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self._done: list[Execution] = []
        self._open: dict[str, Execution] = {}
        self._clock = 0.0
        super().__init__(root)

    def executions(self) -> list[Execution]:
        """Every execution so far, in the order the claims were taken, caught up with the log."""
        self.refresh()
        with self._mutex:
            found = self._done + list(self._open.values())
        return sorted(found, key=lambda e: (e.started, e.counter))

    def _apply(self, op: list[Any]) -> None:
        code = op[0]
        at = op[1][7] if code == CREATE else op[_TIME_AT[code]] if code in _TIME_AT else None
        if isinstance(at, float | int):
            self._clock = max(self._clock, float(at))
        super()._apply(op)
        if code == CLAIM:
            pid, task = op[1], self.state.tasks[op[1]]
            self._open[pid] = Execution(pid, self.state.promises[pid].func, task.attempt, op[2], op[3], op[5])
        elif code in _ENDS:
            ids = [op[1]] if code != RELEASE_OWNER else list(self._open)
            for pid in ids:
                self._close(pid)

    def _close(self, pid: str) -> None:
        """End the open execution of `pid` if this operation ended its claim."""
        run = self._open.get(pid)
        if run is None:
            return
        task = self.state.tasks.get(pid)
        if task is not None and task.state is TaskState.CLAIMED and task.counter == run.counter:
            return  # still held (an older log's RELEASE_OWNER that named someone else)
        promise = self.state.promises[pid]
        if task is None:
            error = promise.value if promise.state is not State.RESOLVED else None
            outcome = "died" if died(error) else promise.state.value
        elif task.state is TaskState.WAITING:
            outcome, error = "suspended", None
        elif task.state is TaskState.PARKED:
            outcome, error = "parked", task.last_error
        elif task.attempt > run.attempt:
            error = task.last_error
            outcome = "died" if died(error) else "failed"
        else:
            outcome, error = "released", None
        ended = promise.settled_at if task is None and promise.settled_at is not None else self._clock
        self._done.append(replace(run, ended=max(ended, run.started), outcome=outcome, error=error))
        del self._open[pid]


def open_history(path: str) -> History:
    """Follow the store at `path` (created if missing, as open_store does) for its executions."""
    return History(path)
