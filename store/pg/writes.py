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
from ..types import (
    CHANGES,
    TIMER,
    TIMER_DUE,
    TIMERS,
    WORK,
    Completion,
    NewPromise,
    Promise,
    State,
    Wake,
    settled_topic,
)
from . import rows
from .connection import Tx

# (id, its deadline or None, the state asked for, the value)
Settle = tuple[str, float | None, State, Any]

_SETTLE = """
WITH i AS (SELECT * FROM unnest(%s::text[], %s::text[], %s::bytea[], %s::float8[])
           AS i(id, state, value, at)),
t AS (DELETE FROM tasks USING i WHERE tasks.id = i.id RETURNING tasks.id, tasks.counter, tasks.attempt)
UPDATE promises p SET state = i.state, value = i.value, settled_at = i.at,
    attempt = coalesce((SELECT CASE WHEN t.counter = 0 THEN 0 ELSE t.attempt END FROM t WHERE t.id = i.id), 0)
FROM i WHERE p.id = i.id AND p.state = 'pending'
RETURNING p.id, pg_notify(%s, p.id), pg_notify(%s, '')
"""

_WAKE = """
UPDATE tasks t SET state = 'ready', awaiting = '{}', wake = 'first', remaining = 0, not_before = 0,
    ready_since = u.at, queued = nextval('queue_seq')
FROM unnest(%s::text[], %s::float8[]) AS u(id, at) WHERE t.id = u.id
RETURNING pg_notify(%s, '')
"""

_REMAINING = ("UPDATE tasks t SET remaining = u.n FROM unnest(%s::text[], %s::int[]) AS u(id, n) "
              "WHERE t.id = u.id")

_ANALYZE_AFTER = 500  # tasks created in one call

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
    ids = [i[0] for i in first]
    done = tx.execute(_SETTLE, (ids, [i[1].value for i in first], [pack(i[2]) for i in first],
                                [i[3] for i in first], tx.channel(settled_topic("")), tx.channel(CHANGES)))
    waiters = waiters_of(tx, ids)
    settled_ids = {r[0] for r in done.fetchall()}
    settled = [item for item in first if item[0] in settled_ids]
    wake(tx, settled, waiters)
    return [i[0] for i in settled]


_COMPLETE = """
WITH i AS (SELECT * FROM unnest(%(ids)s::text[], %(counters)s::bigint[], %(states)s::text[],
                                %(values)s::bytea[], %(late)s::bytea[])
           AS i(id, counter, state, value, late)),
t AS (DELETE FROM tasks USING i WHERE tasks.id = i.id AND tasks.state = 'claimed'
      AND tasks.counter = i.counter RETURNING tasks.id, tasks.attempt, tasks.deadline)
UPDATE promises p SET
    state = CASE WHEN t.deadline <= %(now)s THEN 'rejected_timedout' ELSE i.state END,
    value = CASE WHEN t.deadline <= %(now)s THEN i.late ELSE i.value END,
    settled_at = CASE WHEN t.deadline <= %(now)s THEN t.deadline ELSE %(now)s END,
    attempt = t.attempt
FROM i JOIN t ON t.id = i.id WHERE p.id = i.id AND p.state = 'pending'
RETURNING p.id, p.state, p.func, p.args, p.parent, p.tags, p.timeout, p.created_at, p.settled_at, p.value,
    p.attempt, pg_notify(%(settled)s, p.id), pg_notify(%(changes)s, '')
"""


def complete(tx: Tx, done: Sequence[Completion], now: float) -> dict[str, Promise]:
    """Settle each claimed promise whose claim is current (deleting its task is the fence:
    the row is locked and its counter checked in one statement), timed out at its deadline
    when late; the promises settled, by id. Each id once: the caller drops repeats."""
    if not done:
        return {}
    ids = [d.id for d in done]
    cursor = tx.execute(_COMPLETE, {
        "ids": ids, "counters": [d.counter for d in done], "states": [d.state.value for d in done],
        "values": [pack(d.value) for d in done], "late": [pack(timeout_error(d.id)) for d in done],
        "now": now, "settled": tx.channel(settled_topic("")), "changes": tx.channel(CHANGES)})
    waiters = waiters_of(tx, ids)
    settled = {r[0]: rows.promise(r) for r in cursor.fetchall()}
    order = [settled[d.id] for d in done if d.id in settled]
    wake(tx, [(p.id, p.state, p.value, p.settled_at or now) for p in order], waiters)
    return settled


def waiters_of(tx: Tx, ids: list[str]) -> Any:
    """The waiters on any of `ids`, locked; sent now, after the settle of `ids` (so it sees who
    waits as of that settle) and read by wake() with the settle's result: one round trip."""
    return tx.execute("SELECT id, awaiting, remaining, wake FROM tasks WHERE state = 'waiting' AND "
                      "awaiting && %s::text[] ORDER BY id FOR UPDATE", (ids,))


def wake(tx: Tx, settled: Sequence[tuple[str, State, Any, float]], waiters: Any) -> None:
    """Count these settles off each of `waiters` (waiters_of), in order; wake each once, when
    its condition holds (the settles' statement announced them)."""
    rows = waiters.fetchall()
    if not settled:
        return
    woken: list[tuple[str, float]] = []
    counted: list[tuple[str, int]] = []
    for wid, awaiting, remaining, how in rows:
        awaited, when, before = set(awaiting), Wake(how), remaining
        for pid, state, _, at in settled:
            if pid in awaited:
                remaining -= 1
                if when.holds(state, remaining):
                    woken.append((wid, at))
                    break
        else:
            if remaining != before:
                counted.append((wid, remaining))
    if counted:
        tx.execute(_REMAINING, ([w for w, _ in counted], [n for _, n in counted]))
    if woken:
        tx.execute(_WAKE, ([w for w, _ in woken], [at for _, at in woken], tx.channel(WORK))).fetchall()


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
        if len(runnable) >= _ANALYZE_AFTER:
            # A fan-out makes the ready queue thousands long at once, before autovacuum looks:
            # planned from stale statistics, each claim would sort the whole queue.
            tx.execute("ANALYZE tasks")
    if any(_due(first[pid]) is not None for pid in created):
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
