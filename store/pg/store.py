"""The PostgreSQL store: the store interface over a promises and a tasks table.

Each call is one transaction (connection.py), built from the changes in writes.py.
Claims take ready tasks with SELECT ... FOR UPDATE SKIP LOCKED, so workers on
several hosts never wait on each other's rows; every claim bumps the task's counter,
and a completion is written only while its counter is the current one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from ..codec import pack
from ..deaths import Decide, retry_at_once
from ..errors import NotFound, StaleClaim
from ..types import (
    CHANGES,
    Claim,
    Completion,
    NewPromise,
    Page,
    Promise,
    State,
    Stats,
    Task,
    Wake,
    require_final,
)
from . import queries, rows, writes
from .connection import Database, Tx
from .listen import PgWatch
from .supervisors import Supervisors
from .url import redact, split

DEFAULT_LEASE = 30.0  # seconds, as the directory store's
AFFINITY_GRACE = 1.0  # seconds a woken workflow waits for the worker that has it in memory

class PgStore:
    """A promise store in a PostgreSQL schema, shared by processes on any number of hosts."""

    def __init__(self, url: str, *, lease: float = DEFAULT_LEASE, schema: str | None = None) -> None:
        dsn, chosen = split(url, schema)
        self.location = redact(url)
        self.lease = lease
        self._db = Database(dsn, self.location, chosen)
        self._supervisors = Supervisors(self._db)
        self._due: tuple[int, float | None] = (-1, None)  # (Database.writes, next_due) of the last claim
        self.shared = self._supervisors.shared  # whether several supervisors may run at once

    def __repr__(self) -> str:
        return f"PgStore({self.location!r}, schema={self._db.schema!r})"

    def close(self) -> None:
        """Close this handle's connections (in a forked child, only let go of them)."""
        self._supervisors.close()
        self._db.close()

    # -- promises -----------------------------------------------------------------

    def create(self, promises: Sequence[NewPromise], now: float | None = None) -> list[Promise]:
        """Create promises in one transaction; an id that exists returns what is stored."""
        at = time.time() if now is None else now

        def body(tx: Tx) -> list[Promise]:
            writes.create(tx, promises, at)
            return rows.stored(tx, [new.id for new in promises])

        return self._db.run(body)

    def get(self, promise_id: str, *, now: float | None = None) -> Promise | None:
        """The promise as of `now` (timed out once overdue, swept or not)."""
        at = time.time() if now is None else now
        found = self._db.query(f"SELECT {rows.PROMISE} FROM {rows.PROMISE_FROM} WHERE p.id = %s",
                               (promise_id,))
        return rows.seen(found[0], at) if found else None

    def task(self, promise_id: str) -> Task | None:
        found = self._db.query(f"SELECT {rows.TASK} FROM tasks WHERE id = %s", (promise_id,))
        return rows.task(found[0]) if found else None

    def children(self, parent: str, now: float | None = None) -> list[Promise]:
        """The children of `parent` in creation order, each as `get` sees it at `now`."""
        return self.search(parent=parent, limit=1 << 62, now=now).items

    def search(self, *, state: State | None = None, parent: str | None = None,
               prefix: str | None = None, limit: int = 100, cursor: int = 0,
               now: float | None = None, tags: Mapping[str, Any] | None = None) -> Page:
        """Promises in creation order, filtered as `get` sees them at `now`; the cursor is the
        creation number of the next match. Tags are matched here, on the decoded values."""
        at = time.time() if now is None else now
        where: list[str] = ["p.num > %s"]
        params: list[Any] = []
        if state is not None:
            where.append("(CASE WHEN p.state = 'pending' AND p.timeout <= %s THEN 'rejected_timedout' "
                         "ELSE p.state END) = %s")
            params += [at, state.value]
        if parent is not None:
            where.append("p.parent = %s")
            params.append(parent)
        if prefix is not None:
            where.append("starts_with(p.id, %s)")
            params.append(prefix)
        wanted = list((tags or {}).items())
        query = (f"SELECT {rows.PROMISE}, p.num FROM {rows.PROMISE_FROM} WHERE {' AND '.join(where)} "
                 "ORDER BY p.num LIMIT %s")
        found: list[tuple[int, Promise]] = []
        after = cursor - 1
        batch = min(limit + 1, 10_000) if not wanted else 1_000
        while len(found) <= limit:
            page = self._db.query(query, (after, *params, batch))
            for row in page:
                p = rows.seen(row, at)
                if all(k in p.tags and p.tags[k] == v for k, v in wanted):
                    found.append((row[-1], p))
            if len(page) < batch:
                break
            after = page[-1][-1]
        if len(found) <= limit:
            return Page([p for _, p in found], None)
        return Page([p for _, p in found[:limit]], found[limit][0])

    def settle(self, promise_id: str, state: State, value: Any = None,
               now: float | None = None) -> Promise:
        """Settle a pending promise; settling a settled one returns it unchanged. At or past its
        deadline it times out instead; cancelling cancels every pending descendant too."""
        require_final([state], "settle")
        at = time.time() if now is None else now
        pack(value)  # refused before anything is read or written

        def body(tx: Tx) -> Promise:
            row = tx.execute("SELECT state, timeout FROM promises WHERE id = %s FOR UPDATE",
                             (promise_id,)).fetchone()
            if row is None:
                raise NotFound(promise_id)
            if row[0] == State.PENDING.value:
                items: list[writes.Settle] = [(promise_id, row[1], state, value)]
                if state is State.REJECTED_CANCELED:
                    cause = {"type": "Canceled", "message": f"canceled with {promise_id}"}
                    below = writes.pending_below(tx, promise_id)
                    items += [(pid, deadline, state, cause) for pid, deadline in below]
                writes.settle(tx, items, at)
            return rows.stored(tx, [promise_id])[0]

        return self._db.run(body)

    # -- claims -----------------------------------------------------------------------

    def claim(self, owner: str, now: float | None = None, *, limit: int = 1,
              lease: float | None = None) -> list[Claim]:
        """Lease up to `limit` ready tasks to `owner` (its own woken workflows first, then in
        queue order), each with a fresh counter. Never an overdue one: every promise past its
        deadline is timed out instead, before this returns."""
        at = time.time() if now is None else now
        found = self._db.query(queries.CLAIM, self._claim_args(owner, at, limit, lease))
        self._due = (self._db.writes, found[0][-2])
        if found[0][-1]:
            self._db.run(lambda tx: writes.time_out(tx, tx.execute(queries.OVERDUE, (at,)).fetchall()))
        return self._claims(found, owner)

    def _claim_args(self, owner: str, now: float, limit: int, lease: float | None) -> dict[str, Any]:
        expires = now + (self.lease if lease is None else lease)
        return {"now": now, "owner": owner, "n": max(0, limit), "grace": AFFINITY_GRACE, "expires": expires,
                "changes": self._db.channel(CHANGES)}

    @staticmethod
    def _claims(found: list[Any], owner: str) -> list[Claim]:
        """The claims of a CLAIM statement's rows (its NULL row, when nothing was claimed, is none)."""
        return [Claim(rows.promise(r), r[11], r[12], owner, r[13]) for r in found if r[0] is not None]

    def heartbeat(self, owner: str, now: float | None = None, *, lease: float | None = None,
                  ids: Sequence[str] | None = None) -> int:
        """Extend the leases `owner` holds (only those of `ids`, if given); returns how many."""
        at = time.time() if now is None else now
        expires = at + (self.lease if lease is None else lease)
        query = "UPDATE tasks SET expires_at = %s WHERE state = 'claimed' AND owner = %s"
        params: tuple[Any, ...] = (expires, owner)
        if ids is not None:
            query, params = query + " AND id = ANY(%s)", (*params, list(ids))
        return len(self._db.query(query + " RETURNING 1", params))

    @staticmethod
    def _fenced(tx: Tx, pid: str, counter: int) -> tuple[Any, ...]:
        """The claimed task's row, locked, if `counter` is its current claim; else StaleClaim."""
        row = tx.execute("SELECT state, counter, attempt, last_error, deadline FROM tasks WHERE id = %s "
                         "FOR UPDATE", (pid,)).fetchone()
        if row is None:
            raise StaleClaim(pid, counter, "the promise is settled or has no task")
        if row[0] != "claimed" or row[1] != counter:
            raise StaleClaim(pid, counter, f"the task is {row[0]} at counter {row[1]}")
        return tuple(row)

    def complete(self, promise_id: str, counter: int, state: State, value: Any,
                 now: float | None = None, *, creates: Sequence[NewPromise] = ()) -> Promise:
        """Settle a claimed promise, its task gone and its waiters woken, in one transaction, if
        the claim is current. Past its deadline it times out and `creates` are dropped."""
        require_final([state], "complete")
        if not creates:  # the fenced group commit of one: a statement less than fencing first
            [done] = self.complete_many([Completion(promise_id, counter, state, value)], now)
            if isinstance(done, StaleClaim):
                raise done
            return done
        at = time.time() if now is None else now

        def body(tx: Tx) -> Promise:
            deadline = self._fenced(tx, promise_id, counter)[4]
            if deadline is None or at < deadline:
                writes.create(tx, creates, at)
            writes.settle(tx, [(promise_id, deadline, state, value)], at)
            return rows.stored(tx, [promise_id])[0]

        return self._db.run(body)

    def complete_many(self, completions: Sequence[Completion],
                      now: float | None = None) -> list[Promise | StaleClaim]:
        """Group commit: settle many claimed promises in one transaction. Each is fenced on its
        own; a stale one is returned as its StaleClaim and the others are still written."""
        require_final((done.state for done in completions), "complete")
        at = time.time() if now is None else now
        return self._db.run(lambda tx: _completed(tx, completions, at))

    def complete_and_claim(self, completions: Sequence[Completion], owner: str, limit: int,
                           now: float | None = None, *, lease: float | None = None
                           ) -> tuple[list[Promise | StaleClaim], list[Claim]]:
        """complete_many and claim up to `limit` for `owner`, in one transaction. The claims are
        picked before the settles apply, so a workflow they wake is claimed by the next call."""
        require_final((done.state for done in completions), "complete")
        at = time.time() if now is None else now

        def body(tx: Tx) -> tuple[list[Promise | StaleClaim], list[Any]]:
            found = tx.execute(queries.CLAIM, self._claim_args(owner, at, limit, lease)).fetchall()
            # Fenced as of before the claims: a task claimed just now was ready, no completion's.
            ready = {r[0]: r[11] - 1 for r in found if r[0] is not None}
            outcomes = _completed(tx, completions, at, ready)
            if found[0][-1]:  # overdue promises: those the completions did not settle time out now
                writes.time_out(tx, tx.execute(queries.OVERDUE, (at,)).fetchall())
            return outcomes, found

        outcomes, found = self._db.run(body)
        self._due = (self._db.writes, found[0][-2])
        return outcomes, self._claims(found, owner)

    def suspend(self, promise_id: str, counter: int, awaiting: Sequence[str],
                now: float | None = None, *, creates: Sequence[NewPromise] = (),
                affinity: str | None = None, wake: Wake = Wake.FIRST) -> bool:
        """Release a workflow's claim until `wake` holds over `awaiting`, creating its new
        children. Returns False, keeping the claim, when it holds already."""
        if not awaiting:
            raise ValueError("suspend needs at least one promise to await")
        at = time.time() if now is None else now
        unique = list(dict.fromkeys(awaiting))

        def body(tx: Tx) -> bool:
            writes.create(tx, creates, at)  # undone with the rest if the claim is stale
            args = {"id": promise_id, "counter": counter, "ids": unique, "n": len(unique),
                    "awaiting": list(awaiting), "wake": wake.value, "affinity": affinity,
                    "changes": tx.channel(CHANGES)}
            state, current, known, waits = tx.execute(queries.SUSPEND, args).fetchone()
            if state is None:
                raise StaleClaim(promise_id, counter, "the promise is settled or has no task")
            if state != "claimed" or current != counter:
                raise StaleClaim(promise_id, counter, f"the task is {state} at counter {current}")
            unknown = [a for a in unique if a not in set(known or ())]
            if unknown:
                raise NotFound(unknown[0])  # waiting on it would wait forever
            return bool(waits)

        return self._db.run(body)

    def retry(self, promise_id: str, counter: int, *, delay: float, error: Any,
              now: float | None = None) -> None:
        """Give a failed attempt back, to be claimed again after `delay` as the next attempt
        (or, past the promise's deadline, time it out: no attempt is left)."""
        at = time.time() if now is None else now
        pack(error)

        def body(tx: Tx) -> None:
            row = self._fenced(tx, promise_id, counter)
            writes.next_attempt(tx, promise_id, row[2], row[4], delay, error, at)

        self._db.run(body)

    def release(self, promise_id: str, counter: int, now: float | None = None) -> None:
        """Give a claim back untouched; the next claim's counter fences this holder off."""
        at = time.time() if now is None else now

        def body(tx: Tx) -> None:
            row = self._fenced(tx, promise_id, counter)
            writes.ready(tx, promise_id, not_before=0.0, attempt=row[2], error=rows.unpack(row[3]), now=at)

        self._db.run(body)

    def park(self, promise_id: str, counter: int, error: Any) -> None:
        """End a claim by holding the task with `error` until unpark(): no worker claims it."""
        data = pack(error)

        def body(tx: Tx) -> None:
            self._fenced(tx, promise_id, counter)
            tx.execute("UPDATE tasks SET state = 'parked', last_error = %s, expires_at = NULL, owner = NULL, "
                       "affinity = NULL, awaiting = '{}', wake = 'first' WHERE id = %s", (data, promise_id))
            tx.notify(CHANGES)

        self._db.run(body)

    def unpark(self, promise_id: str | None = None, now: float | None = None) -> list[str]:
        """Make a parked task (every one, when None) ready again; returns the ids unparked."""
        at = time.time() if now is None else now

        def body(tx: Tx) -> list[str]:
            found = tx.execute("SELECT id, attempt, last_error FROM tasks WHERE state = 'parked' "
                               "AND (%s::text IS NULL OR id = %s) ORDER BY id FOR UPDATE",
                               (promise_id, promise_id)).fetchall()
            for pid, attempt, error in found:
                writes.ready(tx, pid, not_before=0.0, attempt=attempt, error=rows.unpack(error), now=at)
            return [r[0] for r in found]

        return self._db.run(body)

    def parked(self) -> list[Task]:
        return self._tasks("state = 'parked' ORDER BY id")

    def claims(self) -> list[Task]:
        return self._tasks("state = 'claimed' ORDER BY owner, id")

    def _tasks(self, where: str) -> list[Task]:
        return [rows.task(r) for r in self._db.query(f"SELECT {rows.TASK} FROM tasks WHERE {where}")]

    # -- deaths and the sweep -------------------------------------------------------------

    def release_owner(self, owner: str | None, now: float | None = None, *, how: str | None = None,
                      decide: Decide = retry_at_once, counted: bool = True) -> list[str]:
        """Give back every claim of `owner` (of everyone when None): its holder is dead. Each
        death is an attempt (`decide` says what comes next); `counted=False` gives the claims
        back untouched. Workflows it had in memory lose their affinity."""
        at = time.time() if now is None else now

        def body(tx: Tx) -> list[str]:
            whose = queries.HELD.format("(%s::text IS NULL OR t.owner = %s)")
            held = tx.execute(whose, (owner, owner)).fetchall()
            if counted:
                writes.deaths(tx, held, how, decide, at)
            else:
                for row in held:
                    writes.ready(tx, row[0], not_before=0.0, attempt=row[3], error=rows.unpack(row[9]),
                                 now=at, front=True)
            tx.execute("UPDATE tasks SET affinity = NULL WHERE affinity IS NOT NULL "
                       "AND (%s::text IS NULL OR affinity = %s)", (owner, owner))
            return [r[0] for r in held]

        return self._db.run(body)

    def expire(self, now: float | None = None, *, decide: Decide = retry_at_once) -> list[str]:
        """The backstop: a lease past its expiry is its holder's death (an attempt, as in
        release_owner), and overdue promises time out at their deadline. Returns each id once."""
        at = time.time() if now is None else now

        def body(tx: Tx) -> list[str]:
            held = tx.execute(queries.HELD.format("t.expires_at <= %s") + " SKIP LOCKED", (at,)).fetchall()
            writes.deaths(tx, held, "its lease expired", decide, at)
            timed_out = writes.time_out(tx, tx.execute(queries.OVERDUE, (at,)).fetchall())
            return list(dict.fromkeys([r[0] for r in held] + timed_out))

        return self._db.run(body)

    def next_due(self) -> float | None:
        """When the earliest delayed task (a retry's backoff) becomes claimable: as the last
        claim saw it, if this handle wrote nothing since (the caller watches TIMERS for the
        others' writes), else read now."""
        written, due = self._due
        if written == self._db.writes:
            return due
        return self._db.query("SELECT min(not_before) FROM tasks WHERE state = 'ready' AND not_before > %s",
                              (time.time(),))[0][0]

    def next_timer(self) -> float | None:
        """When the earliest pending timer is due."""
        found = self._db.query("SELECT min(due) FROM promises WHERE state = 'pending' AND due IS NOT NULL")
        return found[0][0]

    def fire_timers(self, now: float | None = None) -> list[str]:
        """Resolve every timer due by `now`, settled at `now` (or timed out, past a deadline)."""
        at = time.time() if now is None else now

        def body(tx: Tx) -> list[str]:
            due = tx.execute("SELECT id, timeout FROM promises WHERE state = 'pending' AND due <= %s "
                             "ORDER BY due, id FOR UPDATE SKIP LOCKED", (at,)).fetchall()
            return writes.settle(tx, [(pid, deadline, State.RESOLVED, None) for pid, deadline in due], at)

        return self._db.run(body)

    # -- retention and inspection ------------------------------------------------------------

    def gc(self, settled_before: float, now: float | None = None) -> list[str]:
        """Remove every whole run (a root and all below it, every one settled) whose last
        settle came before `settled_before`; returns their roots, oldest first."""

        def body(tx: Tx) -> list[str]:
            found = tx.execute(
                "WITH RECURSIVE run(root, id, state, settled_at) AS ("
                " SELECT id, id, state, settled_at FROM promises WHERE parent IS NULL AND state <> 'pending'"
                " AND settled_at < %s"
                " UNION ALL SELECT r.root, p.id, p.state, p.settled_at FROM promises p"
                " JOIN run r ON p.parent = r.id)"
                " SELECT root, array_agg(id) FROM run GROUP BY root HAVING bool_and(state <> 'pending')"
                " AND max(settled_at) < %s ORDER BY max(settled_at), root",
                (settled_before, settled_before)).fetchall()
            if found:
                gone = [pid for _, ids in found for pid in ids]
                tx.execute("DELETE FROM promises WHERE id = ANY(%s)", (gone,))
                tx.notify(CHANGES)
            return [root for root, _ in found]

        return self._db.run(body)

    def stats(self, now: float | None = None) -> Stats:
        at = time.time() if now is None else now

        def body(tx: Tx) -> tuple[list[Any], Any]:
            by_state = tx.execute("SELECT CASE WHEN state = 'pending' AND timeout <= %s "
                                  "THEN 'rejected_timedout' ELSE state END, count(*) FROM promises "
                                  "GROUP BY 1", (at,)).fetchall()
            tasks = tx.execute(
                "SELECT count(*) FILTER (WHERE state = 'ready' AND not_before <= %(now)s),"
                " count(*) FILTER (WHERE state = 'claimed'), count(*) FILTER (WHERE state = 'waiting'),"
                " count(*) FILTER (WHERE state = 'ready' AND not_before > %(now)s),"
                " count(*) FILTER (WHERE state = 'parked') FROM tasks", {"now": at}).fetchone()
            return by_state, tasks

        by_state, tasks = self._db.run(body)
        counts = {s.value: 0 for s in State}
        counts.update({name: n for name, n in by_state})
        return Stats(counts, *tasks)

    def watch(self, *topics: str) -> PgWatch:
        """A LISTEN connection of its own: readable once a change of these topics is committed."""
        return self._db.watch(topics)

    # -- supervisors (supervisors.py) ---------------------------------------------------------

    def lock_supervisor(self) -> bool:
        return self._supervisors.lock()

    def unlock_supervisor(self) -> None:
        self._supervisors.unlock()

    def publish_supervisor(self, info: dict[str, Any]) -> None:
        self._supervisors.publish(info)

    def supervisor(self) -> dict[str, Any] | None:
        return self._supervisors.describe()

    def join_supervisor(self, sid: str) -> None:
        self._supervisors.join(sid)

    def beat_supervisor(self, sid: str) -> bool:
        return self._supervisors.beat(sid)

    def supervisor_beats(self) -> dict[str, float]:
        return self._supervisors.beats()

    def retire_supervisor(self, sid: str) -> dict[str, Any] | None:
        return self._supervisors.retire(sid)

    def lock_sweeper(self, lapse: float) -> bool:
        return self._supervisors.lock_sweeper(lapse)

    def supervisors(self) -> list[dict[str, Any]]:
        return self._supervisors.every()

    def lost_supervisors(self) -> list[dict[str, Any]]:
        return self._supervisors.lost()

    def lock_holders(self) -> list[int]:
        """No process holds a lock on the whole store: rows are locked, for a transaction."""
        return []


def _completed(tx: Tx, completions: Sequence[Completion], now: float,
               ready: Mapping[str, int] | None = None) -> list[Promise | StaleClaim]:
    """Settle the current ones of `completions` (writes.complete); a stale one, or a second
    completion of one id, is its StaleClaim, saying why. `ready`: tasks claimed in this
    transaction, by their counter before it: they were ready, so no completion is current."""
    ready = ready or {}
    first = list({d.id: d for d in reversed(completions) if d.id not in ready}.values())[::-1]
    settled = writes.complete(tx, first, now)
    stale = {d.id for d in completions if d.id not in settled and d.id not in ready}
    found = {} if not stale else {r[0]: r[1:] for r in tx.execute(
        "SELECT id, state, counter FROM tasks WHERE id = ANY(%s)", (list(stale),)).fetchall()}
    found.update({pid: ("ready", counter) for pid, counter in ready.items()})
    outcomes: list[Promise | StaleClaim] = []
    for done in completions:
        promise = settled.pop(done.id, None)  # a second completion of it in this batch is stale
        reason = ("the promise is settled or has no task" if done.id not in found
                  else "the task is {} at counter {}".format(*found[done.id]))
        outcomes.append(promise or StaleClaim(done.id, done.counter, reason))
    return outcomes
