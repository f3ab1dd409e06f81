"""A holder's death is an attempt: the error it leaves, and who decides what comes next.

The store does not know retry policies (they live with the functions, in the runner),
so whoever gives a dead holder's claims back passes a `Decide`. It is asked once per
task, before the frame is written, and its answer is written into the frame: applying
the log never calls it, so every process reads the same outcome.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .types import Promise, Task

WORKER_DIED = "WorkerDied"

# (the promise, its task as the dead holder left it, the error of the death) -> seconds to
# wait before the next attempt, or None to reject the promise with that error instead.
Decide = Callable[[Promise, Task, dict[str, Any]], float | None]


def retry_at_once(_promise: Promise, _task: Task, _error: dict[str, Any]) -> float | None:
    """The default decision: the next attempt may start at once, however many came before."""
    return 0.0


def died_error(owner: str | None, attempt: int, how: str | None) -> dict[str, Any]:
    """The error a death leaves as the task's last error (or as the promise's, once spent)."""
    message = f"worker {owner} died running attempt {attempt}"
    return {"type": WORKER_DIED, "message": f"{message} ({how})" if how else message}


def died(error: Any) -> bool:
    """Whether a task's last error is a death (the attempt before ended like this one)."""
    return isinstance(error, dict) and error.get("type") == WORKER_DIED
