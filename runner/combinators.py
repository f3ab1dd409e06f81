"""Waiting on several children: ctx.all, ctx.any, ctx.race and ctx.as_completed.

Which child won is decided once, when the workflow first sees its condition hold, and
recorded as a child of its own (func DECISION, created resolved with the winner's
index) in the same frame as whatever the workflow does next. A replay reads the
decision back instead of looking again, so it takes the same branch even if other
children settled since. The workflow suspends once per combinator, on a wake-up
condition the store evaluates (see store Wake), not once per child.
"""

from __future__ import annotations

import enum
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any

from runner.store import Promise, State, Wake

from .error_values import raise_error

if TYPE_CHECKING:
    from .context import Context, Handle

DECISION = "<decision>"  # func of a recorded decision: resolved with the winner's index (-1: none)


class Kind(enum.StrEnum):
    ALL = "all"  # every value, in order; the first failure raises
    ANY = "any"  # the first to resolve; if every one fails, an ExceptionGroup of their errors
    RACE = "race"  # the first to settle, either way


_WAKES = {Kind.ALL: Wake.ALL, Kind.ANY: Wake.ANY, Kind.RACE: Wake.FIRST}


def outcome(promise: Promise) -> Any:
    """A settled child's value, or its error raised."""
    if promise.state is State.RESOLVED:
        return promise.value
    raise raise_error(promise)


def pick(kind: Kind, promises: Sequence[Promise | None]) -> int:
    """The deciding child: the earliest to settle of those that decide `kind` (ties go to
    the first in order), or -1 when none does (ALL: all resolved; ANY: all failed)."""
    def decides(p: Promise) -> bool:
        if kind is Kind.RACE:
            return True
        return (p.state is State.RESOLVED) is (kind is Kind.ANY)

    found = [(p.settled_at or 0.0, i) for i, p in enumerate(promises)
             if p is not None and p.settled and decides(p)]
    return min(found)[1] if found else -1


class Select:
    """An awaitable over several handles; awaiting it again gives the same answer."""

    def __init__(self, ctx: Context, kind: Kind, handles: Sequence[Handle]) -> None:
        self.handles = list(handles)
        if not self.handles and kind is not Kind.ALL:
            raise ValueError(f"ctx.{kind.value}() needs at least one handle")
        self._ctx, self.kind = ctx, kind
        self._ids = [h.id for h in self.handles]
        self._cid, _, recorded = ctx.reserve(DECISION, [kind.value, self._ids])
        self._decided: int | None = None if recorded is None else recorded.value

    def decide(self) -> Generator[Any, None, int]:
        """The deciding index, recorded the first time; waits (suspends) until there is one."""
        if self._decided is None:
            promises = yield from self._ctx.settled(tuple(self._ids), _WAKES[self.kind])
            self._decided = pick(self.kind, promises)
            self._ctx.record(self._cid, DECISION, [self.kind.value, self._ids], self._decided)
        return self._decided

    def __await__(self) -> Generator[Any, None, Any]:
        index = yield from self.decide()
        if index >= 0:
            return outcome(self._promise(index))
        if self.kind is Kind.ALL:
            return [outcome(self._promise(i)) for i in range(len(self._ids))]
        raise ExceptionGroup(f"ctx.any: all {len(self._ids)} children failed",
                             [raise_error(self._promise(i)) for i in range(len(self._ids))])

    def _promise(self, index: int) -> Promise:
        """A child the decision says has settled: settled for ever, so a replay reads the same."""
        promise = self._ctx.lookup(self._ids[index])
        assert promise is not None and promise.settled, self._ids[index]
        return promise


class AsCompleted:
    """`async for h in ctx.as_completed(handles)`: each handle as it settles, each step a
    recorded race over those left; awaiting the handle gives its value or raises."""

    def __init__(self, ctx: Context, handles: Sequence[Handle]) -> None:
        self._ctx = ctx
        self._left = list(handles)

    def __aiter__(self) -> AsCompleted:
        return self

    def __anext__(self) -> _Next:
        if not self._left:
            raise StopAsyncIteration
        return _Next(self, Select(self._ctx, Kind.RACE, self._left))

    def _take(self, index: int) -> Handle:
        return self._left.pop(index)


class _Next:
    def __init__(self, owner: AsCompleted, race: Select) -> None:
        self._owner, self._race = owner, race

    def __await__(self) -> Generator[Any, None, Handle]:
        index = yield from self._race.decide()
        return self._owner._take(index)
