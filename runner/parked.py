"""Parked workflows: a replay that took another path waits, with its error, for a fix.

Rejecting such a workflow would destroy a run that fixed code can finish. Parked, it
holds no worker and its settled children stay settled; `runner promises retry ID`
or the next supervisor to start makes it ready again, and its replay finds them.
"""

from __future__ import annotations

import shlex
from typing import Any

from runner.store import NotFound, PromiseStore, Task, TaskState

from .error_values import error_text
from .errors import NotParked, Parked


def resume_hint(promise_id: str) -> str:
    """The command that resumes a parked promise, ready to paste."""
    return f"runner promises retry {shlex.quote(promise_id)}"


def parked_info(task: Task | None) -> dict[str, Any] | None:
    """What the views show of a parked task: the error that parked it and how to resume it."""
    if task is None or task.state is not TaskState.PARKED:
        return None
    return {"error": task.last_error, "resume": resume_hint(task.id)}


def resume(store: PromiseStore, promise_id: str) -> None:
    """Make one parked promise ready again; refuse an unknown or an unparked one."""
    if store.unpark(promise_id):
        return
    promise = store.get(promise_id)
    if promise is None:
        raise NotFound(promise_id)
    task = store.task(promise_id)
    if promise.settled:
        state = promise.state.value
    else:
        state = f"pending, {task.state.value}" if task is not None else "pending, settled from outside"
    raise NotParked(promise_id, state)


def parked_in_run(store: PromiseStore, root: str) -> Parked | None:
    """Why the run under `root` cannot finish, if a task in it (or it) is parked."""
    for task in store.parked():
        pid: str | None = task.id
        while pid is not None and pid != root:
            found = store.get(pid)
            pid = found.parent if found is not None else None
        if pid == root:
            error = task.last_error
            message = error.get("message") if isinstance(error, dict) else None
            return Parked(root, task.id, str(message or error_text(error)), resume_hint(task.id))
    return None
