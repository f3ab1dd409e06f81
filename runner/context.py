"""The durable context a workflow runs in, and the identity leaf code can ask for.

A workflow is replayed from the top whenever it is not still in some worker's
memory; `ctx.run` at position i finds the child recorded at position i again.
Children spawned before the next await are gathered here and written in one
durable batch when the workflow suspends or finishes.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from runner.store import NewPromise, Promise, State, normalize_packed, pack

from .error_values import raise_error
from .errors import NonDeterminism
from .registry import Registry

EXTERNAL = "<external>"  # func of a promise no function runs: settled from outside


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

    def __await__(self) -> Generator[Handle, Promise, Any]:
        promise = self._ctx.lookup(self.id)
        if promise is None or not promise.settled:
            # Hand the handle to the driver, which suspends the workflow and sends
            # back the settled promise when it resumes, maybe in another process.
            promise = yield self
        if promise.state is State.RESOLVED:
            return promise.value
        raise raise_error(promise)

    def __repr__(self) -> str:
        return f"Handle({self.id!r})"


class Context:
    """What a workflow calls: ctx.run, ctx.rpc, ctx.promise."""

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

    def promise(self, **tags: Any) -> Handle:
        """A child that no function runs: it waits until settled from outside
        (`runner promises resolve ID`), for a human in the loop."""
        return self._spawn(EXTERNAL, [], runnable=False, tags=tags)

    def _spawn(self, func: str, args: list[Any], *, runnable: bool,
               tags: dict[str, Any] | None = None) -> Handle:
        position = self._position
        self._position += 1
        cid = child_id(self.id, position)
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
        else:
            self._new.append(NewPromise(cid, func, args, parent=self.id, tags=tags or {},
                                        timeout=self._timeout, runnable=runnable))
        return Handle(self, cid)

    def _diverge(self, position: int, expected: str, found: str) -> NoReturn:
        """Raise NonDeterminism, and remember it: a workflow that catches it is parked all the same."""
        self.diverged = NonDeterminism(self.id, position, expected, found)
        raise self.diverged

    def take_new(self) -> list[NewPromise]:
        """Children spawned since the last call: the batch the driver writes next."""
        new, self._new = self._new, []
        for p in new:
            self._recorded[p.id] = Promise(p.id, State.PENDING, p.func, p.args, p.parent, p.tags,
                                           p.timeout, 0.0)
        return new

    def check_complete(self) -> None:
        """A finished workflow must have visited every recorded child: else it took another path."""
        for position in range(self._position, len(self._recorded)):
            cid = child_id(self.id, position)
            if cid in self._recorded:
                self._diverge(position, self._recorded[cid].func, "nothing")
