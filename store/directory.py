"""The directory store: the embedded, default implementation of the store interface.

Each operation checks what it may do against the state a Replica keeps in step
with the log, then commits its changes as one frame. What the directory holds
is described in layout.py.
"""

from __future__ import annotations

import heapq
import itertools
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .deaths import Decide, died_error, retry_at_once
from .errors import (
    NotFound,
    StaleClaim,
)
from .layout import check_id
from .presence import SupervisorPresence
from .replica import Replica
from .state import (
    CLAIM,
    CREATE,
    HEARTBEAT,
    PARK,
    RELEASE,
    RELEASE_OWNER,
    SETTLE,
    UNPARK,
    WAIT,
    overdue,
    promise_to_list,
    timeout_error,
)
from .types import (
    Claim,
    Completion,
    NewPromise,
    Page,
    Promise,
    State,
    Stats,
    Task,
    TaskState,
    Wake,
    require_final,
)

DEFAULT_LEASE = 30.0  # seconds; heartbeats extend it, a seen death releases at once
AFFINITY_GRACE = 1.0  # seconds a woken workflow waits for the worker that has it in memory


class DirStore(Replica):
    """A promise store in one directory, safe to share between processes."""

    def __init__(self, root: str | os.PathLike[str], *, lease: float = DEFAULT_LEASE) -> None:
        self._presence = SupervisorPresence(Path(root))
        super().__init__(root)
        self.lease = lease

    def close(self) -> None:
        """Close this handle's descriptors (in a forked child too: closing never unlocks)."""
        super().close()
        self._presence.close()

    # -- the one supervisor ---------------------------------------------------------

    def lock_supervisor(self) -> bool:
        return self._presence.acquire()

    def unlock_supervisor(self) -> None:
        self._presence.release()

    def publish_supervisor(self, info: dict[str, Any]) -> None:
        self._presence.publish(info)

    def supervisor(self) -> dict[str, Any] | None:
        return self._presence.describe()

    # One supervisor at a time (lock_supervisor), so it alone beats and sweeps: there is
    # nobody to declare dead, and a previous one's claims go back when the next starts.
    shared = False

    def join_supervisor(self, sid: str) -> None:
        pass

    def beat_supervisor(self, sid: str) -> bool:
        return True

    def supervisor_beats(self) -> dict[str, float]:
        return {}

    def retire_supervisor(self, sid: str) -> dict[str, Any] | None:
        return None

    def lock_sweeper(self, lapse: float) -> bool:
        return True

    def supervisors(self) -> list[dict[str, Any]]:
        info = self.supervisor()
        return [] if info is None else [info]

    def lost_supervisors(self) -> list[dict[str, Any]]:
        return []

    # -- promises -----------------------------------------------------------------

    def create(self, promises: Sequence[NewPromise], now: float | None = None) -> list[Promise]:
        """Create promises in one durable batch; an id that exists returns what is stored."""
        now = time.time() if now is None else now
        with self._locked():
            self._commit(self._create_ops(promises, now))
            return [self._stored(new.id) for new in promises]

    def get(self, promise_id: str, *, now: float | None = None) -> Promise | None:
        """The promise as of `now` (timed out once overdue, swept or not)."""
        now = time.time() if now is None else now
        self._usable()
        with self._mutex:
            p = self.state.promises.get(promise_id)
            if p is not None and p.settled and p.parent is not None and self.state.pending(p.parent):
                # Settled is final, and a run with a promise pending in it (the parent) is
                # neither archived nor removed: no write anyone makes changes the answer, so no
                # catching up (and no lock) is needed. A workflow's awaits of its settled children come here.
                return p
        with self._locked():
            p = self._lookup(promise_id)
            return None if p is None else self.state.seen(p, now)

    def _lookup(self, pid: str) -> Promise | None:
        """The promise, from the live state or else from the history database."""
        p = self.state.promises.get(pid)
        if p is None and self.state.archive_high:
            p = self.archive.get(pid)
        return p

    def _stored(self, pid: str) -> Promise:
        p = self._lookup(pid)
        assert p is not None, f"{pid} was just stored"
        return p

    def _archived(self, new: NewPromise) -> bool:
        """Whether `new`'s id is taken in the history database. A child of a held parent is
        held too (StoreState.complete_runs), so only the others are looked up there."""
        if not self.state.archive_high or (new.parent is not None and new.parent in self.state.promises):
            return False
        return self.archive.get(new.id) is not None

    def task(self, promise_id: str) -> Task | None:
        with self._locked():
            record = self.state.tasks.get(promise_id)
            return None if record is None else record.frozen(promise_id)

    def children(self, parent: str, now: float | None = None) -> list[Promise]:
        """The children of `parent` in creation order, each as `get` sees it at `now`."""
        now = time.time() if now is None else now
        with self._locked():
            return self._children(parent, now)

    def _children(self, parent: str, now: float) -> list[Promise]:
        promises, seen = self.state.promises, self.state.seen
        held = [seen(promises[c], now) for c in self.state.children.get(parent, ())]
        if parent in promises or not self.state.archive_high:
            return held
        return self.archive.children(parent) + held  # archived first: created before any held

    def search(self, *, state: State | None = None, parent: str | None = None,
               prefix: str | None = None, limit: int = 100, cursor: int = 0,
               now: float | None = None, tags: Mapping[str, Any] | None = None) -> Page:
        """Promises in creation order, filtered (`tags`: each of these tags has this value),
        each as `get` sees it at `now`; page with the returned cursor. The live state and
        the history database are merged by creation number, which is also the cursor."""
        now = time.time() if now is None else now
        wanted = list((tags or {}).items())

        def match(p: Promise) -> bool:
            return ((state is None or p.state is state) and (prefix is None or p.id.startswith(prefix))
                    and all(k in p.tags and p.tags[k] == v for k, v in wanted))

        with self._locked():
            if parent is not None:
                return _page(self._children(parent, now), cursor, limit, match)
            seen, numbers = self.state.seen, self.state.numbers
            live = ((numbers[pid], seen(p, now)) for pid, p in self.state.promises.items()
                    if numbers[pid] >= cursor)
            found = (entry for entry in heapq.merge(self._archived_from(cursor, state, limit), live,
                                                    key=lambda entry: entry[0])
                     if match(entry[1]))
            items = list(itertools.islice(found, limit + 1))
        if len(items) <= limit:
            return Page([p for _, p in items], None)
        return Page([p for _, p in items[:limit]], items[limit][0])

    def _archived_from(self, start: int, state: State | None, limit: int) -> Iterator[tuple[int, Promise]]:
        """(number, promise) of the archived promises from creation number `start` on."""
        after = start - 1
        while self.state.archive_high:
            rows = self.archive.page(after, max(limit + 1, 256), state)
            if not rows:
                return
            for number, p in rows:
                if p.id not in self.state.promises:  # held too: a pass cut short by a crash
                    yield number, p
            after = rows[-1][0]

    def settle(self, promise_id: str, state: State, value: Any = None,
               now: float | None = None) -> Promise:
        """Settle a pending promise; settling a settled one returns it unchanged.

        At or past its deadline it times out instead (see _settle_op). Cancelling also
        cancels every pending descendant, in the same frame.
        """
        require_final([state], "settle")
        now = time.time() if now is None else now
        with self._locked():
            p = self._lookup(promise_id)
            if p is None:
                raise NotFound(promise_id)
            if p.settled:
                return p
            ops = [self._settle_op(promise_id, state, value, now)]
            if state is State.REJECTED_CANCELED:
                cause = {"type": "Canceled", "message": f"canceled with {promise_id}"}
                ops += [self._settle_op(d, state, cause, now)
                        for d in self.state.descendants_pending(promise_id)]
            self._commit(ops)
            return self.state.promises[promise_id]

    def _settle_op(self, pid: str, state: State, value: Any, now: float) -> list[Any]:
        """Settle `pid` as asked, or, at or past its deadline, time it out at the deadline.

        A late value is never stored, whether or not a sweep has run. The timeout is
        the one the sweep would write and a reader is shown (StoreState.seen), so all agree.
        """
        if overdue(self.state.promises[pid], now):
            return self._timeout_op(pid)
        return [SETTLE, pid, state.value, value, now]

    def _timeout_op(self, pid: str) -> list[Any]:
        """Time `pid` out as of its deadline, not of whenever this is noticed."""
        deadline = self.state.promises[pid].timeout
        return [SETTLE, pid, State.REJECTED_TIMEDOUT.value, timeout_error(pid), deadline]

    # -- tasks ----------------------------------------------------------------------

    def claim(self, owner: str, now: float | None = None, *, limit: int = 1,
              lease: float | None = None) -> list[Claim]:
        """Lease up to `limit` ready tasks to `owner`, each with a fresh fencing counter.

        Never an overdue one: every promise past its deadline is timed out in the same
        frame instead (the sweep's work, done as soon as anyone would act on it).
        """
        now = time.time() if now is None else now
        with self._locked():
            ops, claimed = self._claim_ops(owner, now, limit, lease)
            self._commit(ops)
            return claimed()

    def _claim_ops(self, owner: str, now: float, limit: int, lease: float | None,
                   settling: frozenset[str] = frozenset()
                   ) -> tuple[list[list[Any]], Callable[[], list[Claim]]]:
        """The operations of a claim, and what gives its Claims once they are applied.
        `settling`: ids settled in the same frame, so not timed out here too."""
        expires = now + (self.lease if lease is None else lease)
        due = [pid for pid in self.state.timed_out(now) if pid not in settling]
        ops = [self._timeout_op(pid) for pid in due]
        skip = set(due)
        picked = list(itertools.islice(
            (pid for pid in self.state.candidates(owner, now, AFFINITY_GRACE) if pid not in skip),
            max(0, limit)))
        tasks = self.state.tasks
        ops += [[CLAIM, pid, owner, tasks[pid].counter + 1, expires, now] for pid in picked]

        def claimed() -> list[Claim]:
            return [Claim(self.state.promises[pid], tasks[pid].counter, tasks[pid].attempt, owner, expires)
                    for pid in picked]

        return ops, claimed

    def next_due(self) -> float | None:
        """When the earliest delayed task (a retry's backoff) becomes claimable, as of this
        handle's last call, without the store lock.

        A worker asks on each idle turn, just after a claim caught up, and watches TIMERS,
        which every delayed task written later produces: it is woken to ask again.
        """
        with self._mutex:  # another thread of ours may be applying a frame
            return self.state.delayed[0][0] if self.state.delayed else None

    def next_timer(self) -> float | None:
        """When the earliest pending timer is due."""
        with self._locked():
            return self.state.next_timer()

    def fire_timers(self, now: float | None = None) -> list[str]:
        """Resolve every timer due by `now`, settled at `now`, waking who waits on it.

        A timer resolves at its time; a deadline is another thing: one that passed first
        times the timer out instead (see _settle_op), as it would any pending promise.
        """
        now = time.time() if now is None else now
        with self._locked():
            ops = [self._settle_op(pid, State.RESOLVED, None, now) for pid in self.state.due_timers(now)]
            self._commit(ops)
            return [op[1] for op in ops]

    def heartbeat(self, owner: str, now: float | None = None, *, lease: float | None = None,
                  ids: Sequence[str] | None = None) -> int:
        """Extend the leases `owner` holds (only those of `ids`, if given); returns how many.

        A worker names the tasks it is running, so a claim it holds for a task that ended
        without giving it back is not kept alive: it lapses and is released.
        """
        now = time.time() if now is None else now
        expires = now + (self.lease if lease is None else lease)
        with self._locked():
            owned = self.state.owned.get(owner, set())
            if ids is None:
                held = len(owned)
                op: list[Any] = [HEARTBEAT, owner, expires]
            else:
                renewed = sorted(owned.intersection(ids))
                held = len(renewed)
                op = [HEARTBEAT, owner, expires, renewed]
            if held:
                self._commit([op])
            return held

    def _fenced(self, promise_id: str, counter: int) -> None:
        task = self.state.tasks.get(promise_id)
        if task is None:
            raise StaleClaim(promise_id, counter, "the promise is settled or has no task")
        if task.state is not TaskState.CLAIMED or task.counter != counter:
            raise StaleClaim(promise_id, counter, f"the task is {task.state.value} at counter {task.counter}")

    def complete(self, promise_id: str, counter: int, state: State, value: Any,
                 now: float | None = None, *, creates: Sequence[NewPromise] = ()) -> Promise:
        """Settle a claimed promise and release its task in one frame, if the claim is current.

        Past its deadline the promise times out instead, and `creates` (children of a
        run that has ended) are dropped.
        """
        require_final([state], "complete")
        now = time.time() if now is None else now
        with self._locked():
            self._fenced(promise_id, counter)
            late = overdue(self.state.promises[promise_id], now)
            ops = [] if late else self._create_ops(creates, now)
            ops.append(self._settle_op(promise_id, state, value, now))
            self._commit(ops)
            return self.state.promises[promise_id]

    def complete_many(self, completions: Sequence[Completion],
                      now: float | None = None) -> list[Promise | StaleClaim]:
        """Group commit: settle many claimed promises in one frame, one fsync.

        Each is fenced on its own; a stale one is returned as its StaleClaim and
        the others are still written.
        """
        require_final((done.state for done in completions), "complete")
        now = time.time() if now is None else now
        with self._locked():
            ops, outcomes = self._completion_ops(completions, now)
            self._commit(ops)
            return outcomes()

    def complete_and_claim(self, completions: Sequence[Completion], owner: str, limit: int,
                           now: float | None = None, *, lease: float | None = None
                           ) -> tuple[list[Promise | StaleClaim], list[Claim]]:
        """complete_many, then claim up to `limit` tasks for `owner`, in one frame, one fsync.

        What a worker does as leaves finish: the slots they free are refilled in the same
        write. The claims are picked before the settles apply, so a workflow they wake is
        claimed by the next call, not this one.
        """
        require_final((done.state for done in completions), "complete")
        now = time.time() if now is None else now
        with self._locked():
            ops, outcomes = self._completion_ops(completions, now)
            more, claimed = self._claim_ops(owner, now, limit, lease, frozenset(op[1] for op in ops))
            self._commit(ops + more)
            return outcomes(), claimed()

    def _completion_ops(self, completions: Sequence[Completion], now: float
                        ) -> tuple[list[list[Any]], Callable[[], list[Promise | StaleClaim]]]:
        """The settles of the current completions, and what gives every outcome once applied."""
        stale: list[StaleClaim | None] = []
        ops = []
        for done in completions:
            try:
                self._fenced(done.id, done.counter)
            except StaleClaim as exc:
                stale.append(exc)
                continue
            stale.append(None)
            ops.append(self._settle_op(done.id, done.state, done.value, now))

        def outcomes() -> list[Promise | StaleClaim]:
            promises = self.state.promises
            return [out or promises[done.id] for out, done in zip(stale, completions, strict=True)]

        return ops, outcomes

    def suspend(self, promise_id: str, counter: int, awaiting: Sequence[str],
                now: float | None = None, *, creates: Sequence[NewPromise] = (),
                affinity: str | None = None, wake: Wake = Wake.FIRST) -> bool:
        """Release a workflow's claim until `wake` holds over `awaiting` (by default: one
        of them settles), creating its new children.

        Returns False, keeping the claim, when it holds already: the caller goes on at
        once instead of waiting for a wake-up that already happened.
        """
        if not awaiting:
            raise ValueError("suspend needs at least one promise to await")
        now = time.time() if now is None else now
        with self._locked():
            self._fenced(promise_id, counter)
            ops = self._create_ops(creates, now)
            created = {op[1][0] for op in ops}  # not the ids of `creates` that exist already
            held = self.state.promises
            found = {a: self._lookup(a) for a in dict.fromkeys(awaiting) if a not in created}
            unknown = [a for a, p in found.items() if p is None]
            if unknown:
                raise NotFound(unknown[0])  # waiting on it would wait forever
            unique = list(dict.fromkeys(awaiting))  # an id awaited twice settles once
            settled = [p.state for p in found.values() if p is not None and p.settled]
            remaining = len(unique) - len(settled)
            holds = any(wake.holds(s, remaining) for s in settled)
            if not holds:
                # The field `wake` is written only when it is not the old behaviour,
                # so a frame of a plain await is what older code wrote. An archived one
                # is left out: it has settled, and no other process holds it any more.
                ops.append([WAIT, promise_id, [a for a in awaiting if a in held or a in created], affinity]
                           + ([] if wake is Wake.FIRST else [wake.value]))
            self._commit(ops)
            return not holds

    def _create_ops(self, creates: Sequence[NewPromise], now: float) -> list[list[Any]]:
        """CREATE operations for the ids not stored yet (the first of duplicates wins)."""
        ops, seen = [], set()
        for new in creates:
            check_id(new.id)
            if new.parent is not None:
                check_id(new.parent)
            if new.id in self.state.promises or new.id in seen:
                continue
            if new.parent not in seen and self._archived(new):  # a parent new here has no archived child
                continue
            seen.add(new.id)
            if new.resolved:
                p = Promise(new.id, State.RESOLVED, new.func, list(new.args), new.parent, dict(new.tags),
                            new.timeout, now, now, new.value)
            else:
                p = Promise(new.id, State.PENDING, new.func, list(new.args), new.parent, dict(new.tags),
                            new.timeout, now)
            ops.append([CREATE, promise_to_list(p), new.runnable])
        return ops

    def retry(self, promise_id: str, counter: int, *, delay: float, error: Any,
              now: float | None = None) -> None:
        """Give a failed attempt back, to be claimed again after `delay` as the next attempt
        (or, past the promise's deadline, time it out: no attempt is left)."""
        now = time.time() if now is None else now
        with self._locked():
            self._fenced(promise_id, counter)
            self._commit([self._retry_op(promise_id, delay, error, now)])

    def _retry_op(self, pid: str, delay: float, error: Any, now: float, *, front: bool = False) -> list[Any]:
        if overdue(self.state.promises[pid], now):
            return self._timeout_op(pid)
        not_before = now + delay if delay > 0 else 0.0
        op = [RELEASE, pid, not_before, self.state.tasks[pid].attempt + 1, error, None, now]
        return [*op, True] if front else op

    def release(self, promise_id: str, counter: int, now: float | None = None) -> None:
        """Give a claim back untouched; the next claim's counter fences this holder off."""
        now = time.time() if now is None else now
        with self._locked():
            self._fenced(promise_id, counter)
            task = self.state.tasks[promise_id]
            self._commit([[RELEASE, promise_id, 0.0, task.attempt, task.last_error, None, now]])

    def park(self, promise_id: str, counter: int, error: Any) -> None:
        """End a claim by holding the task with `error` until unpark(): no worker claims it.

        For a workflow whose replay took another path: rejecting it would destroy a
        run that a fix to the code can finish; its settled children stay settled.
        """
        with self._locked():
            self._fenced(promise_id, counter)
            self._commit([[PARK, promise_id, error]])

    def unpark(self, promise_id: str | None = None, now: float | None = None) -> list[str]:
        """Make a parked task (every one, when None) ready again; returns the ids unparked."""
        now = time.time() if now is None else now
        with self._locked():
            parked = self.state.parked if promise_id is None else self.state.parked & {promise_id}
            ids = sorted(parked)
            self._commit([[UNPARK, pid, now] for pid in ids])
            return ids

    def parked(self) -> list[Task]:
        """The parked tasks, each with the error that parked it as its last error."""
        with self._locked():
            return [self.state.tasks[pid].frozen(pid) for pid in sorted(self.state.parked)]

    def release_owner(self, owner: str | None, now: float | None = None, *, how: str | None = None,
                      decide: Decide = retry_at_once, counted: bool = True) -> list[str]:
        """Give back every claim of `owner` (of everyone when None): its holder is dead.

        Each death is an attempt (see _death_op); `how` says how it died, for the error.
        `counted=False` gives the claims back untouched: for holders that were stopped,
        not killed by what they ran (the supervisor killed them itself).
        """
        now = time.time() if now is None else now
        with self._locked():
            owners = [owner] if owner is not None else list(self.state.owned | self.state.affine)
            held = sorted(pid for who in owners for pid in self.state.owned.get(who, ()))
            if held or any(self.state.affine.get(who) for who in owners):
                ops = [self._death_op(pid, how, decide, now) if counted else self._given_back_op(pid, now)
                       for pid in held]
                self._commit([*ops, [RELEASE_OWNER, owner, now]])  # the last clears affinity
            return held

    def _given_back_op(self, pid: str, now: float) -> list[Any]:
        task = self.state.tasks[pid]
        return [RELEASE, pid, 0.0, task.attempt, task.last_error, None, now, True]

    def _death_op(self, pid: str, how: str | None, decide: Decide, now: float) -> list[Any]:
        """The attempt its dead holder was running has ended: the next one starts at the
        front of the queue after `decide`'s delay, or, when `decide` says so, the promise is
        rejected with the death's error without running again."""
        task = self.state.tasks[pid]
        error = died_error(task.owner, task.attempt, how)
        delay = decide(self.state.promises[pid], task.frozen(pid), error)
        if delay is None:
            return self._settle_op(pid, State.REJECTED, error, now)
        return self._retry_op(pid, delay, error, now, front=True)

    def expire(self, now: float | None = None, *, decide: Decide = retry_at_once) -> list[str]:
        """The backstop: a lease past its expiry is its holder's death (an attempt, as in
        release_owner), and overdue promises time out at their deadline. Returns each id once."""
        now = time.time() if now is None else now
        with self._locked():
            ops = [self._death_op(pid, "its lease expired", decide, now)
                   for pid in self.state.expired_leases(now)]
            done = {op[1] for op in ops if op[0] == SETTLE}
            ops += [self._timeout_op(pid) for pid in self.state.timed_out(now) if pid not in done]
            self._commit(ops)
            return list(dict.fromkeys(op[1] for op in ops))

    # -- retention --------------------------------------------------------------------

    def gc(self, settled_before: float, now: float | None = None) -> list[str]:
        """Remove every whole run that settled before `settled_before`; returns their roots.

        Every whole settled run is archived first, then removed from the history database
        in one transaction. A run with a promise still pending anywhere in it is not whole:
        kept, as is an archived run that a live promise was created under since.
        """
        self.archive_settled()
        with self._compaction(wait=True):
            with self._locked():
                old = self.archive.settled_before(settled_before)
                held = self.state.promises
                under = [p.parent for p in held.values() if p.parent is not None and p.parent not in held]
                keep = self.archive.roots_of(list(dict.fromkeys(under)))
            gone = [root for root in old if root not in keep]
            if gone:  # outside the store lock: removing a long history may take seconds
                with self._mutex:
                    self.archive.remove(gone)
            return gone

    # -- inspection -----------------------------------------------------------------

    def claims(self) -> list[Task]:
        with self._locked():
            return [self.state.tasks[pid].frozen(pid)
                    for pids in self.state.owned.values() for pid in sorted(pids)]

    def stats(self, now: float | None = None) -> Stats:
        now = time.time() if now is None else now
        with self._locked():
            self.state.promote(now)
            by_state: dict[str, int] = {s.value: 0 for s in State}
            for name, n in (self.archive.counts() if self.state.archive_high else {}).items():
                by_state[name] += n
            for p in self.state.promises.values():
                by_state[self.state.seen(p, now).state.value] += 1
            tasks = self.state.tasks.values()
            return Stats(by_state, len(self.state.ready),
                         sum(t.state is TaskState.CLAIMED for t in tasks),
                         sum(t.state is TaskState.WAITING for t in tasks),
                         # Not len(self.state.delayed), a lazy heap that keeps
                         # entries of tasks settled or released since.
                         sum(t.state is TaskState.READY and t.not_before > now for t in tasks),
                         len(self.state.parked))


def _page(pool: list[Promise], cursor: int, limit: int, match: Callable[[Promise], bool]) -> Page:
    """The first `limit` matches of pool[cursor:], and the place of the next one (None: no more)."""
    matches = [p for p in pool[cursor:] if match(p)]
    if len(matches) <= limit:
        return Page(matches, None)
    return Page(matches[:limit], pool.index(matches[limit], cursor))
