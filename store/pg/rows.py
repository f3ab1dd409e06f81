"""Rows of the promises and tasks tables, and the frozen records they stand for.

Every value column holds msgpack bytes written by codec.pack and read by
codec.unpack: nothing read from the database can execute code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from .. import codec
from ..state import timeout_error
from ..types import Promise, State, Task, TaskState, Wake

_STATES = {s.value: s for s in State}
_TASK_STATES = {s.value: s for s in TaskState}
_WAKES = {w.value: w for w in Wake}

# A promise row, with its task's counter and attempt (what a timed-out read needs).
PROMISE = ("p.id, p.state, p.func, p.args, p.parent, p.tags, p.timeout, p.created_at, p.settled_at, "
           "p.value, p.attempt, t.counter, t.attempt")
PROMISE_FROM = "promises p LEFT JOIN tasks t ON t.id = p.id"
TASK = ("id, state, counter, attempt, owner, expires_at, not_before, awaiting, affinity, last_error, "
        "claimed_at, wake")


def unpack(data: bytes | None) -> Any:
    return None if data is None else codec.unpack(bytes(data))


def promise(row: tuple[Any, ...]) -> Promise:
    """The stored record of a PROMISE row (not as a read at some time sees it)."""
    return Promise(row[0], _STATES[row[1]], row[2], unpack(row[3]), row[4], unpack(row[5]), row[6], row[7],
                   row[8], unpack(row[9]), row[10])


def seen(row: tuple[Any, ...], now: float) -> Promise:
    """A PROMISE row as a read at `now` sees it: timed out at its deadline once past it,
    exactly as the sweep will write it (its attempt: the one that ran, 0 if none did)."""
    p = promise(row)
    if p.timeout is None or p.settled or now < p.timeout:
        return p
    counter, attempt = row[11], row[12]
    ran = 0 if counter is None or counter == 0 else attempt
    return replace(p, state=State.REJECTED_TIMEDOUT, value=timeout_error(p.id), settled_at=p.timeout,
                   attempt=ran)


def task(row: tuple[Any, ...]) -> Task:
    return Task(row[0], _TASK_STATES[row[1]], row[2], row[3], row[4], row[5], row[6], tuple(row[7]), row[8],
                unpack(row[9]), row[10], _WAKES[row[11]])


def stored(tx: Any, ids: Sequence[str]) -> list[Promise]:
    """The stored records of `ids` (each must exist), read in the transaction `tx`."""
    found = {r[0]: promise(r) for r in tx.execute(
        f"SELECT {PROMISE} FROM {PROMISE_FROM} WHERE p.id = ANY(%s)", (list(ids),))}
    return [found[pid] for pid in ids]
