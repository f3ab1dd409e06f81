"""Settling a promise from outside: a human approves, rejects or cancels.

A settled promise never changes, so settling one twice is refused (AlreadySettled,
exit 2) rather than reported as done: a script learns that its decision was not
the one recorded. Whoever settles first wins; the loser is told which state won.
Cancelling also cancels every pending descendant (the store does it in the same
write), and a workflow awaiting a cancelled child gets `runner.errors.Canceled`.
"""

from __future__ import annotations

import time
from typing import Any

from runner.store import NotFound, Promise, PromiseStore, State

from .errors import AlreadySettled

CANCEL_REASON = "canceled from the command line"


def settle(store: PromiseStore, promise_id: str, state: State, value: Any,
           now: float | None = None) -> Promise:
    """Settle a pending promise with `value`; refuse an unknown or settled one."""
    now = time.time() if now is None else now
    before = store.get(promise_id)
    if before is None:
        raise NotFound(promise_id)
    if before.settled:
        raise AlreadySettled(promise_id, before.state.value)
    after = store.settle(promise_id, state, value, now=now)
    if after.settled_at != now:  # someone settled it between our read and our write
        raise AlreadySettled(promise_id, after.state.value)
    return after


def resolve(store: PromiseStore, promise_id: str, value: Any) -> Promise:
    return settle(store, promise_id, State.RESOLVED, value)


def reject(store: PromiseStore, promise_id: str, message: str, type_name: str = "Rejected") -> Promise:
    """Reject with an error: an awaiting workflow raises `type_name` (a builtin like
    ValueError comes back as itself, any other name as ChildFailed)."""
    return settle(store, promise_id, State.REJECTED, {"type": type_name, "message": message})


def cancel(store: PromiseStore, promise_id: str, reason: str = CANCEL_REASON) -> tuple[Promise, list[str]]:
    """Cancel a promise and its pending descendants; returns it and the descendants cancelled."""
    now = time.time()
    pending = _pending_descendants(store, promise_id)
    promise = settle(store, promise_id, State.REJECTED_CANCELED, {"type": "Canceled", "message": reason},
                     now=now)
    canceled = []
    for pid in pending:
        p = store.get(pid)
        if p is not None and p.state is State.REJECTED_CANCELED and p.settled_at == now:
            canceled.append(pid)
    return promise, canceled


def _pending_descendants(store: PromiseStore, promise_id: str) -> list[str]:
    found, stack = [], [promise_id]
    while stack:
        for child in store.children(stack.pop()):
            if not child.settled:
                found.append(child.id)
            stack.append(child.id)
    return found
