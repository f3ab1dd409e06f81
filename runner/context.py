"""The durable context a workflow runs in, and the identity leaf code can ask for.

A workflow is replayed from the top whenever it is not still in some worker's
memory; `ctx.run` at position i finds the child recorded at position i again.
Children spawned before the next await are gathered here and written in one
durable batch when the workflow suspends or finishes.
"""

from __future__ import annotations

import contextvars
import datetime
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from runner.store import (
    MAX_ID_BYTES,
    TIMER,
    TIMER_DUE,
    NewPromise,
    Promise,
    State,
    Wake,
    normalize,
    normalize_packed,
    pack,
)

from .combinators import AsCompleted, Kind, Select, outcome
from .errors import BadInput, ChildIdTooLong, NonDeterminism, RunnerError
from .registry import Registry
from .retry import RETRY_TAG, Retry

EXTERNAL = "<external>"  # func of a promise no function runs: settled from outside


@dataclass(frozen=True, slots=True)
class Wait:
    """What a workflow's await hands its driver: suspend until `wake` holds over `ids`."""

    ids: tuple[str, ...]
    wake: Wake = Wake.FIRST


@dataclass(frozen=True, slots=True)
class Current:
    """Who is running: the promise id is the stable idempotency key to give a provider."""

    id: str
    attempt: int
    func: str
    store: Path


_current: contextvars.ContextVar[Current] = contextvars.ContextVar("runner_current")


def current() -> Current:
    """The promise the calling code runs for; only valid inside a running function."""
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError("runner.current() called outside a running function") from None


def set_current(info: Current) -> contextvars.Token[Current]:
    return _current.set(info)


def child_id(parent: str, position: int) -> str:
    return f"{parent}.{position}"


class Handle:
    """A child promise, returned at once by ctx.run; awaiting it yields its value."""

    __slots__ = ("_ctx", "id")

    def __init__(self, ctx: Context, promise_id: str) -> None:
        self._ctx = ctx
        self.id = promise_id

    def options(self, *, id: str | None = None, retry: Retry | None = None,
                timeout: float | None = None) -> Handle:
        """Options of this one call, given on the handle `ctx.run` (`rpc`, `promise`) just
        returned: an id of the caller's choosing, unique in the run (`approval-order-42`,
        which a system can know in advance); a retry policy in place of the function's,
        stored with the child so any worker uses it; a timeout in seconds, never past the
        parent's own deadline. Replayed, the child is found by its id as recorded."""
        return self._ctx.configure(self, id=id, retry=retry, timeout=timeout)

    def __await__(self) -> Generator[Wait, None, Any]:
        promise = (yield from self._ctx.settled((self.id,), Wake.FIRST))[0]
        assert promise is not None
        return outcome(promise)

    def __repr__(self) -> str:
        return f"Handle({self.id!r})"


def due_time(when: float | datetime.datetime) -> float:
    """A wall-clock time as epoch seconds; a naive datetime is local time, as datetime.timestamp() says."""
    return when.timestamp() if isinstance(when, datetime.datetime) else float(when)


class Context:
    """What a workflow calls: ctx.run, ctx.rpc, ctx.promise, ctx.sleep, and the combinators
    (ctx.all, ctx.any, ctx.race, ctx.as_completed, in combinators.py)."""

    def __init__(self, promise: Promise, recorded: Sequence[Promise], registry: Registry,
                 lookup: Callable[[str], Promise | None]) -> None:
        self.id = promise.id
        self._timeout = promise.timeout
        self._recorded = {p.id: p for p in recorded}
        self._registry = registry
        self.lookup = lookup
        self._position = 0
        self._new: list[NewPromise] = []
        self.diverged: NonDeterminism | None = None  # set once replay took another path

    def run(self, fn: Callable[..., Any], *args: Any) -> Handle:
        """Spawn `fn(*args)` as a durable child; any worker may run it."""
        return self._spawn(self._registry.name_of(fn), list(args), runnable=True)

    def rpc(self, name: str, *args: Any) -> Handle:
        """Spawn the function registered as `name`, which this process need not have loaded."""
        return self._spawn(name, list(args), runnable=True)

    def promise(self, *, id: str | None = None, timeout: float | None = None,
                **tags: Any) -> Handle:
        """A child that no function runs: it waits until settled from outside
        (`runner promises resolve ID`), for a human in the loop. With `id`, it has that id
        (known in advance to whoever settles it); `timeout` rejects it after so many seconds."""
        handle = self._spawn(EXTERNAL, [], runnable=False, tags=tags)
        return handle if id is None and timeout is None else handle.options(id=id, timeout=timeout)

    def sleep(self, seconds: float) -> Handle:
        """A durable timer due `seconds` from now; awaiting it suspends the workflow, which
        holds no worker until the supervisor resolves the timer. A replay finds it fired."""
        return self._timer([float(seconds)], time.time() + float(seconds))

    def sleep_until(self, when: float | datetime.datetime) -> Handle:
        """A durable timer due at a wall-clock time (epoch seconds or a datetime)."""
        due = due_time(when)
        return self._timer([due], due)

    def _timer(self, args: list[Any], due: float) -> Handle:
        # The due time is a tag, not an argument: a replay compares the arguments, and
        # sleep(5) recomputes another due time each time it runs. Replayed, the stored one holds.
        return self._spawn(TIMER, args, runnable=False, tags={TIMER_DUE: due})

    def all(self, handles: Sequence[Handle]) -> Select:
        """Await every value, in order; the first child to fail raises its error."""
        return Select(self, Kind.ALL, handles)

    def any(self, handles: Sequence[Handle]) -> Select:
        """Await the first child to resolve; if all fail, an ExceptionGroup of their errors."""
        return Select(self, Kind.ANY, handles)

    def race(self, handles: Sequence[Handle]) -> Select:
        """Await the first child to settle, value or error: `ctx.race([h, ctx.sleep(5)])` is a timeout."""
        return Select(self, Kind.RACE, handles)

    def as_completed(self, handles: Sequence[Handle]) -> AsCompleted:
        """`async for h in ctx.as_completed(handles)`: the handles in the order they settle."""
        return AsCompleted(self, handles)

    def settled(self, ids: tuple[str, ...], wake: Wake) -> Generator[Wait, None, list[Promise | None]]:
        """Suspend until `wake` holds over the children `ids`; then their promises as stored.

        The driver suspends the workflow on the yielded Wait and resumes it (maybe in
        another process, by replay) once the store woke it; the store may also wake it for
        another reason, so the condition is checked again each time.
        """
        while True:
            promises = [self.lookup(cid) for cid in ids]
            done = [p for p in promises if p is not None and p.settled]
            remaining = len(ids) - len(done)
            if not ids or any(wake.holds(p.state, remaining) for p in done):
                return promises
            yield Wait(tuple(dict.fromkeys(cid for cid, p in zip(ids, promises, strict=True)
                                           if p is None or not p.settled)), wake)

    def _spawn(self, func: str, args: list[Any], *, runnable: bool,
               tags: dict[str, Any] | None = None) -> Handle:
        cid, args, recorded = self.reserve(func, args)
        if recorded is None:
            self._new.append(NewPromise(cid, func, args, parent=self.id, tags=normalize(tags or {}),
                                        timeout=self._timeout, runnable=runnable))
        return Handle(self, cid)

    def reserve(self, func: str, args: list[Any]) -> tuple[str, list[Any], Promise | None]:
        """Take the next position for a child `func(*args)`: its id, its arguments as the
        store holds them, and what is recorded there (checked to be the same call)."""
        position = self._position
        self._position += 1
        cid = child_id(self.id, position)
        size = len(cid.encode("utf-8"))
        if size > MAX_ID_BYTES:  # refused here, where the workflow can see it, not at the write
            raise ChildIdTooLong(self.id, position, size, MAX_ID_BYTES)
        # Also refuses what cannot be stored, in the workflow's frame.
        args, packed = normalize_packed(args)
        recorded = self._recorded.get(cid)
        if recorded is not None:
            # Compared as stored bytes, not with ==: NaN equals NaN, True differs from 1.
            # Only a replayed child pays for packing its recorded arguments.
            if recorded.func != func:
                self._diverge(position, recorded.func, func)
            if pack(recorded.args) != packed:
                self._diverge(position, recorded.func, f"{func} with other arguments")
        return cid, args, recorded

    def configure(self, handle: Handle, *, id: str | None, retry: Retry | None,
                  timeout: float | None) -> Handle:
        """Apply Handle.options to the child just spawned, which is not written yet."""
        pending = self._new[-1] if self._new and self._new[-1].id == handle.id else None
        if pending is None:
            if handle.id not in self._recorded:
                raise RunnerError("options() applies to the handle ctx.run (rpc, promise) just returned")
            if id is not None and id != handle.id:  # recorded without this id: another call
                self._diverge(self._position - 1, f"{self._recorded[handle.id].func} with its own id",
                              f"{self._recorded[handle.id].func} with id {id!r}")
            return handle  # replayed: its options are stored with it
        tags = dict(pending.tags)
        if retry is not None:
            tags[RETRY_TAG] = retry.stored()
        deadline = pending.timeout
        if timeout is not None:
            mine = time.time() + float(timeout)
            deadline = mine if deadline is None else min(deadline, mine)  # never past the parent's
        new = NewPromise(pending.id if id is None else self._named(id), pending.func, pending.args,
                         pending.parent, tags, deadline, pending.runnable)
        self._new.pop()
        recorded = self._recorded.get(new.id)
        if recorded is None:
            self._new.append(new)
        elif recorded.func != new.func or pack(recorded.args) != pack(new.args):
            self._diverge(self._position - 1, recorded.func, f"{new.func} (or other arguments) as {new.id!r}")
        return Handle(self, new.id)

    def _named(self, name: str) -> str:
        """A child id of the caller's choosing: a root id's form, unique in the run and the store."""
        from .invoke import check_root_id  # invoke imports the worker, which imports this module

        check_root_id(name)
        if name in self._recorded:
            return name  # replayed: the same call, checked by the caller
        if any(new.id == name for new in self._new):
            raise BadInput(f"id {name!r} is given to two children of {self.id}")
        found = self.lookup(name)
        if found is not None and found.parent != self.id:
            raise BadInput(f"id {name!r} is taken by another promise (child of {found.parent!r})")
        return name

    def record(self, cid: str, func: str, args: list[Any], value: Any) -> None:
        """Record a decision as a child created resolved, written with the next batch:
        whatever the workflow spawns because of it is in the same frame."""
        self._new.append(NewPromise(cid, func, args, parent=self.id, runnable=False, resolved=True,
                                    value=value))

    def _diverge(self, position: int, expected: str, found: str) -> NoReturn:
        """Raise NonDeterminism, and remember it: a workflow that catches it is parked all the same."""
        self.diverged = NonDeterminism(self.id, position, expected, found)
        raise self.diverged

    def take_new(self) -> list[NewPromise]:
        """Children spawned since the last call: the batch the driver writes next."""
        new, self._new = self._new, []
        for p in new:
            self._recorded[p.id] = Promise(p.id, State.RESOLVED if p.resolved else State.PENDING, p.func,
                                           p.args, p.parent, p.tags, p.timeout, 0.0, value=p.value)
        return new

    def check_complete(self) -> None:
        """A finished workflow must have visited every recorded child: else it took another path."""
        for position in range(self._position, len(self._recorded)):
            cid = child_id(self.id, position)
            if cid in self._recorded:
                self._diverge(position, self._recorded[cid].func, "nothing")
