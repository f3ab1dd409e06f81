"""The store's vocabulary: promise and task states, records, claims.

Records handed out are frozen, so a caller can never change stored state by
mutating what it was given.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

MAX_ID_BYTES = 1024


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
