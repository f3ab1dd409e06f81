"""The few state changes every call is built from, each a statement or two in the caller's transaction.

They keep the directory store's rules (state.py): a settle at or past the deadline
times out at the deadline; a settle deletes the task and wakes each waiter once,
when its condition holds, in the same transaction; a task going back to the ready
queue takes a fresh place in it. Rows are locked before they are judged: a waiter
is read FOR UPDATE, so two children settling at once wake their parent once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..codec import pack
from ..layout import check_id
from ..state import timeout_error
from ..types import CHANGES, TIMER, TIMER_DUE, TIMERS, WORK, NewPromise, State, Wake, settled_topic
from .connection import Tx

# (id, its deadline or None, the state asked for, the value)
Settle = tuple[str, float | None, State, Any]

_SETTLE = """
WITH i AS (SELECT * FROM unnest(%s::text[], %s::text[], %s::bytea[], %s::float8[])
           AS i(id, state, value, at)),
t AS (DELETE FROM tasks USING i WHERE tasks.id = i.id RETURNING tasks.id, tasks.counter, tasks.attempt)
UPDATE promises p SET state = i.state, value = i.value, settled_at = i.at,
    attempt = coalesce((SELECT CASE WHEN t.counter = 0 THEN 0 ELSE t.attempt END FROM t WHERE t.id = i.id), 0)
FROM i WHERE p.id = i.id AND p.state = 'pending' RETURNING p.id
"""

_WAKE = """
UPDATE tasks t SET state = 'ready', awaiting = '{}', wake = 'first', remaining = 0, not_before = 0,
    ready_since = u.at, queued = nextval('queue_seq')
FROM unnest(%s::text[], %s::float8[]) AS u(id, at) WHERE t.id = u.id
"""

_REMAINING = ("UPDATE tasks t SET remaining = u.n FROM unnest(%s::text[], %s::int[]) AS u(id, n) "
              "WHERE t.id = u.id")

_COLUMNS = "id, state, func, args, parent, tags, timeout, created_at, settled_at, value, due"

_READY = """
UPDATE tasks SET state = 'ready', not_before = %s, attempt = %s, last_error = %s, affinity = NULL,
    ready_since = %s, expires_at = NULL, owner = NULL, front = %s, awaiting = '{}', wake = 'first',
    queued = nextval('queue_seq')
WHERE id = %s
"""


def settle(tx: Tx, items: Sequence[Settle], now: float) -> list[str]:
    """Settle each pending one in order (timed out at its deadline when late); the ids settled."""
    return settle_at(tx, [_as_asked(item, now) for item in items])


def _as_asked(item: Settle, now: float) -> tuple[str, State, Any, float]:
    pid, deadline, state, value = item
    if deadline is not None and now >= deadline:  # a late value is never stored
        return pid, State.REJECTED_TIMEDOUT, timeout_error(pid), deadline
    return pid, state, value, now


def time_out(tx: Tx, due: Sequence[tuple[str, float]]) -> list[str]:
    """Time out these (id, deadline) at their deadlines."""
    return settle_at(tx, [(pid, State.REJECTED_TIMEDOUT, timeout_error(pid), at) for pid, at in due])


def settle_at(tx: Tx, items: Sequence[tuple[str, State, Any, float]]) -> list[str]:
    """Settle the pending ones of (id, state, value, at), in order; the first of an id wins."""
    first = list({item[0]: item for item in reversed(items)}.values())[::-1]
    if not first:
        return []
    rows = tx.execute(_SETTLE, ([i[0] for i in first], [i[1].value for i in first],
                                [pack(i[2]) for i in first], [i[3] for i in first])).fetchall()
    done = {r[0] for r in rows}
    settled = [item for item in first if item[0] in done]
    if settled:
        _wake(tx, settled)
        tx.notify(CHANGES, *(settled_topic(i[0]) for i in settled))
    return [i[0] for i in settled]


def _wake(tx: Tx, settled: list[tuple[str, State, Any, float]]) -> None:
    """Count these settles off every waiter, in order; wake each once, when its condition holds."""
    rows = tx.execute("SELECT id, awaiting, remaining, wake FROM tasks WHERE state = 'waiting' AND "
                      "awaiting && %s::text[] ORDER BY id FOR UPDATE", ([i[0] for i in settled],)).fetchall()
    woken: list[tuple[str, float]] = []
    counted: list[tuple[str, int]] = []
    for wid, awaiting, remaining, wake in rows:
        awaited, when = set(awaiting), Wake(wake)
        for pid, state, _, at in settled:
            if pid in awaited:
                remaining -= 1
                if when.holds(state, remaining):
                    woken.append((wid, at))
                    break
        else:
            counted.append((wid, remaining))
    if counted:
        tx.execute(_REMAINING, ([w for w, _ in counted], [n for _, n in counted]))
    if woken:
        tx.execute(_WAKE, ([w for w, _ in woken], [at for _, at in woken]))
        tx.notify(WORK)


def ready(tx: Tx, pid: str, *, not_before: float, attempt: int, error: Any, now: float,
          front: bool = False) -> None:
    """Put a task back in the ready queue, its claim and affinity gone."""
    tx.execute(_READY, (not_before, attempt, pack(error), now, front, pid))
    tx.notify(WORK, CHANGES, *([TIMERS] if not_before > 0 else []))


def create(tx: Tx, news: Sequence[NewPromise], now: float) -> list[str]:
    """Insert the promises (and tasks) of ids not stored yet, the first of duplicates winning;
    the ids created. Every value is packed before anything is written."""
    first: dict[str, NewPromise] = {}
    for new in news:
        check_id(new.id)
        if new.parent is not None:
            check_id(new.parent)
        first.setdefault(new.id, new)
    if not first:
        return []
    rows = [_promise_row(new, now) for new in first.values()]
    columns = [list(column) for column in zip(*rows, strict=True)]
    made = {r[0] for r in tx.execute(
        f"INSERT INTO promises ({_COLUMNS}) SELECT {_COLUMNS} FROM unnest(%s::text[], %s::text[], "
        "%s::text[], %s::bytea[], %s::text[], %s::bytea[], %s::float8[], %s::float8[], %s::float8[], "
        f"%s::bytea[], %s::float8[]) WITH ORDINALITY AS n({_COLUMNS}, o) ORDER BY o "
        "ON CONFLICT (id) DO NOTHING RETURNING id",
        columns).fetchall()}
    created = [pid for pid in first if pid in made]
    runnable = [first[pid] for pid in created if first[pid].runnable and not first[pid].resolved]
    if runnable:
        tx.execute("INSERT INTO tasks (id, state, ready_since, deadline) SELECT id, 'ready', %s, deadline "
                   "FROM unnest(%s::text[], %s::float8[]) WITH ORDINALITY AS n(id, deadline, o) ORDER BY o",
                   (now, [n.id for n in runnable], [n.timeout for n in runnable]))
        tx.notify(WORK)
    if any(first[pid].timeout is not None or _due(first[pid]) is not None for pid in created):
        tx.notify(TIMERS)
    if created:
        tx.notify(CHANGES)
    return created


def _due(new: NewPromise) -> float | None:
    """When a new timer is due (None for any other promise), as Promise.due reads it."""
    if new.func != TIMER or new.resolved:
        return None
    due = new.tags.get(TIMER_DUE)
    return float(due) if isinstance(due, int | float) and not isinstance(due, bool) else None


def _promise_row(new: NewPromise, now: float) -> tuple[Any, ...]:
    state, settled_at, value = ((State.RESOLVED, now, pack(new.value)) if new.resolved
                                else (State.PENDING, None, None))
    return (new.id, state.value, new.func, pack(list(new.args)), new.parent, pack(dict(new.tags)),
            new.timeout, now, settled_at, value, _due(new))
