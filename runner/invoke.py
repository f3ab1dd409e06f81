"""Starting a root promise and waiting for it, with or without a supervisor running.

Waiting sleeps on the store's watch. When no supervisor holds the store, the
waiter becomes one for as long as its own root is pending, so `runner invoke`
works alone; if another waiter got there first and leaves, the next one takes over.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Callable
from typing import Any

from runner.store import MAX_ID_BYTES, NewPromise, Promise, PromiseStore, State, check_id, settled_topic

from .errors import BadInput, Interrupted
from .location import StoreLocation
from .parked import parked_in_run
from .registry import Registry
from .supervisor import Supervisor

BACKSTOP = 1.0  # seconds between looks at the store when nothing woke us
# A run that ended like this abandoned its branches: waiting for them helps nobody.
_ABANDONED = (State.REJECTED_TIMEDOUT, State.REJECTED_CANCELED)
_CHILD_SUFFIX = re.compile(r"\.\d+\Z")
# Bytes of the id limit kept for descendants' suffixes (`.<n>` per level): 16 levels of
# `.999`. A deeper tree, or a wider one, may still pass the limit; ctx.run refuses that child.
DESCENDANT_RESERVE = 64
MAX_ROOT_ID_BYTES = MAX_ID_BYTES - DESCENDANT_RESERVE


def check_root_id(promise_id: str) -> str:
    """A root id may be any storable text but the form of a child's id, so none can collide,
    and short enough that its children's ids fit too."""
    check_id(promise_id)
    if _CHILD_SUFFIX.search(promise_id):
        raise BadInput(f"id {promise_id!r} ends in '.<number>', the form reserved for child promises")
    size = len(promise_id.encode("utf-8"))
    if size > MAX_ROOT_ID_BYTES:
        raise BadInput(f"a root id may be at most {MAX_ROOT_ID_BYTES} bytes of UTF-8, got {size}: "
                       f"the last {DESCENDANT_RESERVE} of the {MAX_ID_BYTES} a promise id may have are "
                       "kept for its children's ids")
    return promise_id


def submit(store: PromiseStore, registry: Registry, func: str, args: list[Any],
           promise_id: str, timeout: float | None = None) -> Promise:
    """Create the root promise, or find the run that already has this id."""
    registry.lookup(func)
    check_root_id(promise_id)
    promise = store.create([NewPromise(promise_id, func, args, timeout=timeout)])[0]
    if promise.func != func:
        raise BadInput(f"promise {promise_id!r} exists and runs {promise.func!r}, not {func!r}")
    if promise.parent is not None:
        raise BadInput(f"promise {promise_id!r} is a child of {promise.parent!r}, not a root")
    return promise


def wait(store: PromiseStore, location: StoreLocation, registry: Registry, promise_id: str, *,
         workers: int, concurrency: int, on_change: Callable[[], None] = lambda: None,
         on_settled: Callable[[Promise], None] = lambda _: None) -> Promise:
    """Block until the promise settles, supervising the store ourselves when nobody does.

    `on_settled` hears of the result at once, before an embedded supervisor drains
    (branches of this or other runs still running finish before it returns; those of a
    run that timed out or was cancelled are killed, their late results fenced off).
    A SIGINT or SIGTERM stops the wait with Interrupted: the run stays on disk, and
    whoever supervises the store next (a later invoke of the id, `runner start`) finishes it.
    A run with a parked workflow raises Parked: waiting would wait for a fix to the code,
    which the workers already running cannot load. A supervisor we start ourselves first
    lets parked workflows replay, in case the code was fixed since.
    """
    told = False

    def settled(promise: Promise | None) -> bool:
        nonlocal told
        if promise is None or not promise.settled:
            return False
        if not told:
            told = True
            on_settled(promise)
        return True

    watch = store.watch(settled_topic(promise_id))
    try:
        while True:
            promise = store.get(promise_id)
            assert promise is not None
            on_change()
            if settled(promise):
                return promise
            # On a store several supervisors share, one that runs serves us: no need for our own.
            if not (store.shared and store.supervisor() is not None) and store.lock_supervisor():
                supervisor = Supervisor(store, location, registry, workers=workers,
                                        concurrency=concurrency)

                def done(supervisor: Supervisor = supervisor) -> bool:
                    on_change()
                    promise = store.get(promise_id)
                    if not settled(promise):
                        return parked_in_run(store, promise_id) is not None  # drain, then say so
                    assert promise is not None
                    if promise.state in _ABANDONED:
                        supervisor.stop_now()
                    return True

                supervisor.run(until=done, wake_on=[settled_topic(promise_id)])
                if supervisor.stopped_by is not None:
                    raise _interrupted(store, promise_id, supervisor.stopped_by)
                if (parked := parked_in_run(store, promise_id)) is not None:
                    raise parked
                continue
            if (parked := parked_in_run(store, promise_id)) is not None:
                raise parked  # no fix can reach the code another supervisor has loaded
            watch.wait(BACKSTOP)
    except KeyboardInterrupt:  # waiting on another supervisor's work: the run goes on there
        raise _interrupted(store, promise_id, signal.SIGINT) from None
    finally:
        watch.close()


def _interrupted(store: PromiseStore, promise_id: str, signum: int) -> Interrupted:
    """The error that tells the user how to pick the run up again, by its function's name."""
    promise = store.get(promise_id)
    return Interrupted(promise_id, promise.func if promise is not None else "FUNC", signum)
