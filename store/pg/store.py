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
from ..deaths import Decide, died_error, retry_at_once
from ..errors import NotFound, StaleClaim
from ..types import CHANGES, Claim, Completion, NewPromise, Page, Promise, State, Stats, Task, Wake
from . import rows, writes
from .connection import Database, Tx
from .listen import PgWatch
from .supervisors import Supervisors
from .url import redact, split

DEFAULT_LEASE = 30.0  # seconds, as the directory store's
AFFINITY_GRACE = 1.0  # seconds a woken workflow waits for the worker that has it in memory

_CANDIDATES = ("SELECT id, front, queued FROM tasks WHERE state = 'ready' "
               "AND not_before <= %(now)s AND (deadline IS NULL OR deadline > %(now)s) AND {which} "
               "ORDER BY {order} LIMIT %(n)s FOR UPDATE SKIP LOCKED")
# One statement, so a transaction of its own (one round trip): the owner's own woken
# workflows first, then the queue's (given back after a death at its front), none overdue;
# each claimed with a fresh counter; their promises, and whether any promise is overdue
# (one row of NULLs, saying so, when nothing was claimed).
_CLAIM = f"""
WITH mine AS ({_CANDIDATES.format(which="affinity = %(owner)s", order="id")}),
others AS ({_CANDIDATES.format(which="(affinity IS NULL OR (affinity <> %(owner)s AND "
                                     "ready_since + %(grace)s <= %(now)s))",
                               order="front DESC, queued")}),
picked AS (SELECT * FROM (SELECT id, 0 AS k, id AS name, false AS front, 0::bigint AS queued FROM mine
                          UNION ALL SELECT id, 1, '', front, queued FROM others) AS c
           ORDER BY k, name, front DESC, queued LIMIT %(n)s),
claimed AS (UPDATE tasks t SET state = 'claimed', owner = %(owner)s, counter = t.counter + 1,
                expires_at = %(expires)s, claimed_at = %(now)s, front = false, affinity = NULL,
                awaiting = '{{}}', wake = 'first', not_before = 0
            FROM picked WHERE t.id = picked.id RETURNING t.id, t.counter, t.attempt),
got AS (SELECT p.id, p.state, p.func, p.args, p.parent, p.tags, p.timeout, p.created_at, p.settled_at,
               p.value, p.attempt, c.counter, c.attempt AS run, picked.k, picked.name, picked.front,
               picked.queued
        FROM claimed c JOIN picked ON picked.id = c.id JOIN promises p ON p.id = c.id)
SELECT got.id, got.state, got.func, got.args, got.parent, got.tags, got.timeout, got.created_at,
       got.settled_at, got.value, got.attempt, got.counter, got.run,
       (SELECT count(*) FROM (SELECT pg_notify(%(changes)s, '') FROM got LIMIT 1) AS n),
       EXISTS (SELECT 1 FROM promises WHERE state = 'pending' AND timeout <= %(now)s)
FROM (SELECT 1) AS one LEFT JOIN got ON true
ORDER BY got.k, got.name, got.front DESC, got.queued
"""
# Judge and write a suspend in one statement. The awaited promises are read FOR SHARE: a
# settle of one of them waits for this commit and then sees the task waiting, or this waits
# for the settle's commit and sees it settled; no wake-up falls between. The task waits
# only if its claim is current, every awaited id exists, and `wake` does not hold already.
_SUSPEND = """
WITH aw AS (SELECT id, state FROM promises WHERE id = ANY(%(ids)s) ORDER BY id FOR SHARE),
me AS (SELECT state, counter FROM tasks WHERE id = %(id)s FOR UPDATE),
judged AS (SELECT count(*) AS found, count(*) FILTER (WHERE state = 'pending') AS remaining,
                  count(*) FILTER (WHERE state <> 'pending') AS settled,
                  bool_or(state NOT IN ('pending', 'resolved')) AS failed, bool_or(state = 'resolved') AS won,
                  array_agg(id) AS known
           FROM aw),
waiting AS (UPDATE tasks t SET state = 'waiting', awaiting = %(awaiting)s, remaining = j.remaining,
                wake = %(wake)s, affinity = %(affinity)s, owner = NULL, expires_at = NULL
            FROM judged j WHERE t.id = %(id)s AND t.state = 'claimed' AND t.counter = %(counter)s
                AND j.found = %(n)s AND NOT (j.settled > 0 AND (%(wake)s = 'first' OR j.remaining = 0
                    OR (%(wake)s = 'all' AND j.failed) OR (%(wake)s = 'any' AND j.won)))
            RETURNING t.id)
SELECT (SELECT state FROM me), (SELECT counter FROM me), j.known,
       (SELECT count(pg_notify(%(changes)s, '')) FROM waiting)
FROM judged j
"""
_OVERDUE = ("SELECT id, timeout FROM promises WHERE state = 'pending' AND timeout <= %s "
            "ORDER BY timeout, id FOR UPDATE SKIP LOCKED")
_HELD = ("SELECT t.id, t.state, t.counter, t.attempt, t.owner, t.expires_at, t.not_before, t.awaiting, "
         "t.affinity, t.last_error, t.claimed_at, t.wake, t.deadline FROM tasks t WHERE t.state = 'claimed' "
         "AND {} ORDER BY t.id FOR UPDATE")


class PgStore:
    """A promise store in a PostgreSQL schema, shared by processes on any number of hosts."""

    def __init__(self, url: str, *, lease: float = DEFAULT_LEASE, schema: str | None = None) -> None:
        dsn, chosen = split(url, schema)
        self.location = redact(url)
        self.lease = lease
        self._db = Database(dsn, self.location, chosen)
        self._supervisors = Supervisors(self._db)
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
            return self._stored(tx, [new.id for new in promises])

        return self._db.run(body)

    @staticmethod
    def _stored(tx: Tx, ids: Sequence[str]) -> list[Promise]:
        found = {r[0]: rows.promise(r) for r in tx.execute(
            f"SELECT {rows.PROMISE} FROM {rows.PROMISE_FROM} WHERE p.id = ANY(%s)", (list(ids),))}
        return [found[pid] for pid in ids]

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
        if not state.settled:
            raise ValueError("settle needs a final state")
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
                    below = _pending_below(tx, promise_id)
                    items += [(pid, deadline, state, cause) for pid, deadline in below]
                writes.settle(tx, items, at)
            return self._stored(tx, [promise_id])[0]

        return self._db.run(body)

    # -- claims -----------------------------------------------------------------------

    def claim(self, owner: str, now: float | None = None, *, limit: int = 1,
              lease: float | None = None) -> list[Claim]:
        """Lease up to `limit` ready tasks to `owner` (its own woken workflows first, then in
        queue order), each with a fresh counter. Never an overdue one: every promise past its
        deadline is timed out instead, before this returns."""
        at = time.time() if now is None else now
        expires = at + (self.lease if lease is None else lease)
        if limit <= 0:
            return []

        found = self._db.query(_CLAIM, {"now": at, "owner": owner, "n": limit, "grace": AFFINITY_GRACE,
                                        "expires": expires, "changes": self._db.channel(CHANGES)})
        if found[0][-1]:
            self._db.run(lambda tx: writes.time_out(tx, tx.execute(_OVERDUE, (at,)).fetchall()))
        return [Claim(rows.promise(r), r[11], r[12], owner, expires) for r in found if r[0] is not None]

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
        if not state.settled:
            raise ValueError("complete needs a final state")
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
            return self._stored(tx, [promise_id])[0]

        return self._db.run(body)

    def complete_many(self, completions: Sequence[Completion],
                      now: float | None = None) -> list[Promise | StaleClaim]:
        """Group commit: settle many claimed promises in one transaction. Each is fenced on its
        own; a stale one is returned as its StaleClaim and the others are still written."""
        for done in completions:
            if not done.state.settled:
                raise ValueError("complete needs a final state")
        at = time.time() if now is None else now

        def body(tx: Tx) -> list[Promise | StaleClaim]:
            first = list({d.id: d for d in reversed(completions)}.values())[::-1]
            settled = writes.complete(tx, first, at)
            stale = {d.id for d in completions if d.id not in settled}
            found = {} if not stale else {r[0]: r[1:] for r in tx.execute(
                "SELECT id, state, counter FROM tasks WHERE id = ANY(%s)", (list(stale),)).fetchall()}
            outcomes: list[Promise | StaleClaim] = []
            for done in completions:
                promise = settled.pop(done.id, None)  # a second completion of it in this batch is stale
                reason = ("the promise is settled or has no task" if done.id not in found
                          else "the task is {} at counter {}".format(*found[done.id]))
                outcomes.append(promise or StaleClaim(done.id, done.counter, reason))
            return outcomes

        return self._db.run(body)

    def complete_and_claim(self, completions: Sequence[Completion], owner: str, limit: int,
                           now: float | None = None, *, lease: float | None = None
                           ) -> tuple[list[Promise | StaleClaim], list[Claim]]:
        """complete_many, then claim: two transactions, since a database has no fdatasync per
        call for one to share."""
        return self.complete_many(completions, now), self.claim(owner, now, limit=limit, lease=lease)

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
            state, current, known, waits = tx.execute(_SUSPEND, args).fetchone()
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
            _next_attempt(tx, promise_id, row[2], row[4], delay, error, at)

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
            held = tx.execute(_HELD.format("(%s::text IS NULL OR t.owner = %s)"), (owner, owner)).fetchall()
            if counted:
                _deaths(tx, held, how, decide, at)
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
            held = tx.execute(_HELD.format("t.expires_at <= %s") + " SKIP LOCKED", (at,)).fetchall()
            _deaths(tx, held, "its lease expired", decide, at)
            timed_out = writes.time_out(tx, tx.execute(_OVERDUE, (at,)).fetchall())
            return list(dict.fromkeys([r[0] for r in held] + timed_out))

        return self._db.run(body)

    def next_due(self) -> float | None:
        """When the earliest delayed task (a retry's backoff) becomes claimable."""
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


def _pending_below(tx: Tx, pid: str) -> list[tuple[str, float | None]]:
    """(id, deadline) of the pending promises below `pid`, deepest first."""
    return tx.execute(
        "WITH RECURSIVE below(id, depth) AS (SELECT id, 1 FROM promises WHERE parent = %s"
        " UNION ALL SELECT p.id, b.depth + 1 FROM promises p JOIN below b ON p.parent = b.id)"
        " SELECT p.id, p.timeout FROM below b JOIN promises p ON p.id = b.id WHERE p.state = 'pending'"
        " ORDER BY b.depth DESC, p.num DESC", (pid,)).fetchall()


def _next_attempt(tx: Tx, pid: str, attempt: int, deadline: float | None, delay: float, error: Any,
                  now: float, *, front: bool = False) -> None:
    """Release for the next attempt after `delay`; past the deadline, time it out instead."""
    if deadline is not None and now >= deadline:
        writes.time_out(tx, [(pid, deadline)])
        return
    writes.ready(tx, pid, not_before=now + delay if delay > 0 else 0.0, attempt=attempt + 1, error=error,
                 now=now, front=front)


def _deaths(tx: Tx, held: list[Any], how: str | None, decide: Decide, now: float) -> None:
    """The attempts the dead holders ran have ended: each goes to the front after `decide`'s
    delay, or is rejected with the death's error when `decide` says no attempt is left."""
    if not held:
        return
    promises = {p.id: p for p in PgStore._stored(tx, [r[0] for r in held])}
    for row in held:
        task = rows.task(row[:12])
        error = died_error(task.owner, task.attempt, how)
        delay = decide(promises[task.id], task, error)
        if delay is None:
            writes.settle(tx, [(task.id, row[12], State.REJECTED, error)], now)
        else:
            _next_attempt(tx, task.id, task.attempt, row[12], delay, error, now, front=True)
