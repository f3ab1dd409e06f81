"""Checking an operation, or a snapshot body, before the state machine applies it.

A frame with a valid checksum can still hold something StoreState cannot apply
(written by a buggy or foreign program, or damaged before it was checksummed).
Applied, it would raise from deep inside a handler or leave a half-changed
state; checked here, it is reported as damage with its file and byte.

Each op code has one row in OPS: the types of its required fields, then of the
optional trailing fields later code added (a log written before them still
reads). To add an op, or a trailing field, add or extend its row; fields past
the row are accepted unchecked, for logs written by newer code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import codec
from .state import (
    ARCHIVE,
    CLAIM,
    CREATE,
    HEARTBEAT,
    PARK,
    RELEASE,
    RELEASE_OWNER,
    SETTLE,
    UNPARK,
    WAIT,
    StoreState,
)
from .types import TIMER, TIMER_DUE, State, TaskState, Wake


class Invalid(ValueError):
    """An operation or snapshot the state machine cannot apply; the reason names the field."""


Check = Callable[[Any, StoreState], str | None]  # None when fine, else what is wrong


def _kind(name: str, *types: type) -> Check:
    """Exactly one of `types` (bool is not an int here, nor an int a bool)."""
    def check(value: Any, _: StoreState) -> str | None:
        return None if type(value) in types else f"{name} expected, got {type(value).__name__}"
    return check


def _optional(inner: Check) -> Check:
    def check(value: Any, state: StoreState) -> str | None:
        return None if value is None else inner(value, state)
    return check


def _one_of(name: str, allowed: set[str]) -> Check:
    def check(value: Any, _: StoreState) -> str | None:
        return None if type(value) is str and value in allowed else f"{name} expected, got {value!r}"
    return check


def _list_of(inner: Check) -> Check:
    def check(value: Any, state: StoreState) -> str | None:
        if type(value) is not list:
            return f"list expected, got {type(value).__name__}"
        return next((f"item {i}: {err}" for i, item in enumerate(value) if (err := inner(item, state))), None)
    return check


def _record(fields: Sequence[Check], optional: Sequence[Check] = ()) -> Check:
    """A list of at least len(fields) values, each checked in turn."""
    def check(value: Any, state: StoreState) -> str | None:
        if type(value) is not list:
            return f"list expected, got {type(value).__name__}"
        if len(value) < len(fields):
            return f"{len(fields)} fields expected, got {len(value)}"
        for i, (item, inner) in enumerate(zip(value, [*fields, *optional], strict=False)):
            if err := inner(item, state):
                return f"field {i}: {err}"
        return None
    return check


def _any(value: Any, _: StoreState) -> str | None:
    return None


def _known_promise(value: Any, state: StoreState) -> str | None:
    return _STR(value, state) or (None if value in state.promises else f"unknown promise {value!r}")


def _known_task(value: Any, state: StoreState) -> str | None:
    return _STR(value, state) or (None if value in state.tasks else f"no task for {value!r}")


_STR = _kind("text", str)
_INT = _kind("integer", int)
_NUM = _kind("number", int, float)
_BOOL = _kind("boolean", bool)
_OPT_STR, _OPT_NUM = _optional(_STR), _optional(_NUM)
_PROMISE_STATES = {s.value for s in State}
_TASK_STATES = {s.value for s in TaskState}
_STATE = _one_of("promise state", _PROMISE_STATES)
_FINALS = {s.value for s in State if s.settled}
_FINAL = _one_of("final state", _FINALS)
_TASK_STATE = _one_of("task state", _TASK_STATES)
_WAKES = {w.value for w in Wake}
_WAKE = _one_of("wake condition", _WAKES)

# promise_to_list: id, state, func, args, parent, tags, timeout, created_at, settled_at, value, attempt
PROMISE = _record([_STR, _STATE, _STR, _kind("list", list), _OPT_STR, _kind("map", dict), _OPT_NUM,
                   _NUM, _OPT_NUM, _any, _INT])
# TaskRecord.to_list: state, counter, attempt, owner, expires_at, not_before, awaiting, affinity,
# last_error, ready_since, claimed_at
# (+ front, wake, added later)
TASK = _record([_TASK_STATE, _INT, _INT, _OPT_STR, _OPT_NUM, _NUM, _list_of(_STR), _OPT_STR, _any, _NUM,
                _OPT_NUM], [_BOOL, _WAKE])


def _timer(value: Any, state: StoreState) -> str | None:
    """A timer must say when it fires: without a number there, it would wait for ever, unseen."""
    if type(value) is list and len(value) > 5 and value[2] == TIMER and type(value[5]) is dict \
            and type(value[5].get(TIMER_DUE)) not in _NUMS:
        return f"a timer needs a number as its {TIMER_DUE!r} tag"
    return PROMISE(value, state)


@dataclass(frozen=True)
class Op:
    fields: tuple[Check, ...]
    optional: tuple[Check, ...] = ()


OPS: dict[str, Op] = {
    CREATE: Op((_timer, _BOOL)),
    SETTLE: Op((_known_promise, _FINAL, _any, _NUM)),
    CLAIM: Op((_known_task, _STR, _INT, _NUM, _NUM)),
    HEARTBEAT: Op((_STR, _NUM)),
    RELEASE: Op((_known_task, _NUM, _INT, _any, _OPT_STR, _NUM), optional=(_BOOL,)),  # + to the front
    # An awaited id may be archived by the time a snapshot is read: it has settled, so it is
    # not waited for (StoreState._await), and only its type is checked.
    WAIT: Op((_known_task, _list_of(_STR), _OPT_STR), optional=(_WAKE,)),  # + when to wake
    RELEASE_OWNER: Op((_OPT_STR, _NUM)),
    PARK: Op((_known_task, _any)),
    UNPARK: Op((_known_task, _NUM)),
    ARCHIVE: Op((_list_of(_STR), _INT)),  # runs that are not whole are kept, so any id will do
}
EMPTY = StoreState()  # for the checks that look at no state (a record on its own)
_CHECKS = {code: _record(row.fields, row.optional) for code, row in OPS.items()}


def operation(op: Any, state: StoreState) -> None:
    """Raise Invalid unless `op` can be applied to `state` as it is now."""
    if type(op) is not list or not op:
        raise Invalid(f"an operation must be a non-empty list, got {type(op).__name__}")
    if _plain(op, state):
        return
    check = _CHECKS.get(op[0]) if type(op[0]) is str else None
    if check is None:
        raise Invalid(f"unknown operation {op[0]!r}")
    if err := check(op[1:], state):
        raise Invalid(f"operation {op[0]!r}: {err}")


def _plain(op: list[Any], state: StoreState) -> bool:
    """The rows of the ops every child writes (create, claim, settle) as one expression each:
    a fan-out replays them by the thousand. False sends the op to the full check, which
    also says what is wrong."""
    code = op[0]
    if code == CREATE:
        return (len(op) >= 3 and _plain_promise(op[1]) and type(op[2]) is bool
                and (op[1][2] != TIMER or type(op[1][5].get(TIMER_DUE)) in _NUMS))
    if code == SETTLE:
        return (len(op) >= 5 and type(op[1]) is str and op[1] in state.promises and type(op[2]) is str
                and op[2] in _FINALS and type(op[4]) in _NUMS)
    if code == CLAIM:
        return (len(op) >= 6 and type(op[1]) is str and op[1] in state.tasks and type(op[2]) is str
                and type(op[3]) is int and type(op[4]) in _NUMS and type(op[5]) in _NUMS)
    return False


def frame_ops(value: Any) -> list[Any]:
    """The operations a frame holds: a list of them."""
    if type(value) is not list:
        raise Invalid(f"a frame must hold a list of operations, got {type(value).__name__}")
    return value


_NUMS = {int, float}


def _plain_promise(f: Any) -> bool:
    """PROMISE's test as one expression: a snapshot holds 100,000 of them, checked at every open."""
    return (type(f) is list and len(f) >= 11 and type(f[0]) is str and type(f[1]) is str
            and f[1] in _PROMISE_STATES and type(f[2]) is str and type(f[3]) is list
            and (f[4] is None or type(f[4]) is str) and type(f[5]) is dict
            and (f[6] is None or type(f[6]) in _NUMS) and type(f[7]) in _NUMS
            and (f[8] is None or type(f[8]) in _NUMS) and type(f[10]) is int)


def _plain_task(f: Any) -> bool:
    """TASK's test as one expression, for the same reason."""
    return (type(f) is list and len(f) >= 11 and type(f[0]) is str and f[0] in _TASK_STATES
            and type(f[1]) is int and type(f[2]) is int and (f[3] is None or type(f[3]) is str)
            and (f[4] is None or type(f[4]) in _NUMS) and type(f[5]) in _NUMS and type(f[6]) is list
            and all(type(a) is str for a in f[6]) and (f[7] is None or type(f[7]) is str)
            and type(f[9]) in _NUMS and (f[10] is None or type(f[10]) in _NUMS)
            and (len(f) < 12 or type(f[11]) is bool) and (len(f) < 13 or f[12] in _WAKES))


def snapshot(body: Any) -> None:
    """Raise Invalid unless `body` is what StoreState.to_snapshot writes."""
    empty = StoreState()
    if type(body) is not list or len(body) < 2 or type(body[0]) is not list or type(body[1]) is not list:
        raise Invalid("a snapshot body must be [promises, tasks]")
    if len(body) > 2:
        extra = body[2]
        if type(extra) is not dict or type(extra.get("archive_high")) is not int \
                or type(extra.get("created")) is not int or type(extra.get("numbers")) is not list \
                or len(extra["numbers"]) != len(body[0]) or any(type(n) is not int for n in extra["numbers"]):
            raise Invalid("a snapshot's third part must number its promises and say how far the "
                          "history database reaches")
    for i, fields in enumerate(body[0]):
        if not _plain_promise(fields):
            raise Invalid(f"promise {i}: {PROMISE(fields, empty)}")
    ids = {fields[0] for fields in body[0]}
    for i, entry in enumerate(body[1]):
        if type(entry) is not list or len(entry) != 2 or type(entry[0]) is not str:
            raise Invalid(f"task {i}: [id, fields] expected")
        if entry[0] not in ids:
            raise Invalid(f"task {i}: unknown promise {entry[0]!r}")
        if not _plain_task(entry[1]):
            raise Invalid(f"task {i} ({entry[0]!r}): {TASK(entry[1], empty)}")
    # What the records hold of their users' values (args, tags, value, last error): the
    # only parts that can nest, or hold a type of msgpack's own, once the above held.
    values = [f[i] for f in body[0] for i in (3, 5, 9)] + [entry[1][8] for entry in body[1]]
    codec.check_nested(values, codec.FRAME_DEPTH)
