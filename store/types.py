"""The store's vocabulary: promise and task states, records, claims.

Records handed out are frozen, so a caller can never change stored state by
mutating what it was given.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

MAX_ID_BYTES = 1024
# The func of a timer: a promise no function runs, resolved by the supervisor when it is due
# (its tag TIMER_DUE, a wall-clock time). Not a deadline: a deadline rejects, a timer resolves.
TIMER = "<timer>"
TIMER_DUE = "due"

# What a watch() waits for. A store wakes a watcher only for its topic, so an idle worker
# sleeps through the settles of a fan-out and a waiting `invoke` wakes once, for its root.
WORK = "work"  # a task may have become claimable: created, released, woken, unparked
# The schedule moved: a timer, or a task delayed (a retry's backoff). Not a deadline: every
# read sees a promise past it timed out, and the supervisor's sweep writes it.
TIMERS = "timers"
CHANGES = "changes"  # any change at all: for tools that follow the history (chaos, inspection)


def settled_topic(promise_id: str) -> str:
    """The topic of one promise's settle (a store may share it among several ids)."""
    return f"settled:{promise_id}"


class State(enum.StrEnum):
    """A promise's state. Every state but PENDING is final."""

    PENDING = "pending"
    RESOLVED = "resolved"
    REJECTED = "rejected"
    REJECTED_CANCELED = "rejected_canceled"
    REJECTED_TIMEDOUT = "rejected_timedout"

    @property
    def settled(self) -> bool:
        return self is not State.PENDING


class TaskState(enum.StrEnum):
    """Where the execution of a pending promise stands."""

    READY = "ready"  # may be claimed (once its not_before has passed)
    CLAIMED = "claimed"  # a worker holds a lease on it
    WAITING = "waiting"  # suspended until one of the promises it awaits settles
    PARKED = "parked"  # its replay took another path: held, unclaimable, until resumed by hand


class Wake(enum.StrEnum):
    """When a workflow waiting on several promises is woken: once, when its condition holds."""

    FIRST = "first"  # one of them settles (a single await, ctx.race, each step of as_completed)
    ALL = "all"  # every one settles, or one is rejected (ctx.all fails fast)
    ANY = "any"  # one resolves, or every one settles (ctx.any: all of them failed)

    def holds(self, settled: State, remaining: int) -> bool:
        """Whether a waiter wakes once one of its promises settled as `settled`, with
        `remaining` of them still pending."""
        if self is Wake.FIRST or remaining == 0:
            return True
        return (settled is not State.RESOLVED) if self is Wake.ALL else (settled is State.RESOLVED)


@dataclass(frozen=True, slots=True)
class Promise:
    id: str
    state: State
    func: str
    args: list[Any]
    parent: str | None
    tags: dict[str, Any]
    timeout: float | None
    created_at: float
    settled_at: float | None = None
    value: Any = None  # the result when resolved, an error mapping when rejected
    attempt: int = 0  # the attempt that settled it (0: never run by a worker)

    @property
    def settled(self) -> bool:
        return self.state.settled

    @property
    def due(self) -> float | None:
        """When a timer fires; None for any other promise (or a timer stored without a time)."""
        if self.func != TIMER:
            return None
        due = self.tags.get(TIMER_DUE)
        return float(due) if isinstance(due, int | float) and not isinstance(due, bool) else None


@dataclass(frozen=True, slots=True)
class NewPromise:
    """A request to create a promise; `runnable` gives it a task a worker will claim."""

    id: str
    func: str
    args: list[Any] = field(default_factory=list)
    parent: str | None = None
    tags: dict[str, Any] = field(default_factory=dict)
    timeout: float | None = None
    runnable: bool = True
    # Created settled, resolved with `value`: a decision a workflow records (which child won)
    resolved: bool = False
    value: Any = None


@dataclass(frozen=True, slots=True)
class Task:
    """The execution state of one pending, runnable promise."""

    id: str
    state: TaskState
    counter: int  # fencing token: bumped by every claim
    attempt: int  # 1-based; bumped by every retry after a failure
    owner: str | None
    expires_at: float | None
    not_before: float
    awaiting: tuple[str, ...]
    affinity: str | None
    last_error: Any
    claimed_at: float | None  # when the current claim was taken
    wake: Wake = Wake.FIRST  # when a waiting task is woken, judged over `awaiting`


@dataclass(frozen=True, slots=True)
class Claim:
    """A lease on a task: only a completion carrying this counter is accepted."""

    promise: Promise
    counter: int
    attempt: int
    owner: str
    expires_at: float

    @property
    def id(self) -> str:
        return self.promise.id


@dataclass(frozen=True, slots=True)
class Completion:
    """One claimed promise to settle, in a batch written as a single frame."""

    id: str
    counter: int
    state: State
    value: Any


def require_final(states: Iterable[State], call: str) -> None:
    """Refuse a write that would settle to a pending state: a caller's bug, told at once."""
    if not all(state.settled for state in states):
        raise ValueError(f"{call} needs a final state")


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Promise]
    cursor: int | None  # pass back to get the next page; None when there is no more


@dataclass(frozen=True, slots=True)
class Stats:
    by_state: dict[str, int]
    ready: int
    claimed: int
    waiting: int
    delayed: int
    parked: int = 0
