"""A Hypothesis state machine drives the real store against a small in-memory model.

Two handles on one directory play two processes: every rule goes through one of
them, so each step also checks that a handle catches up with the other's writes.
`reopen` closes a handle and opens the directory again from disk. After every step
both handles must agree with the model on every promise and every task.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import runner.store.replica as replica
from runner.store import (
    TIMER,
    TIMER_DUE,
    Completion,
    NewPromise,
    NotFound,
    Promise,
    PromiseStore,
    StaleClaim,
    State,
    TaskState,
    Wake,
    open_store,
)
from runner.store.deaths import died_error
from runner.store.directory import AFFINITY_GRACE
from runner.store.state import timeout_error
from tests.helpers import drop_pg_schema, new_pg_schema, pg_unreachable

IDS = ["a", "b", "c", "a.0", "a.1", "b.0", "a.0.0", "a.0.1"]
OWNERS = ["w1", "w2"]
FINAL = [s for s in State if s.settled]
FINAL_BY_WORKER = [State.RESOLVED, State.REJECTED]  # what a worker completes with

handles = st.integers(0, 1)
ids = st.sampled_from(IDS)
owners = st.sampled_from(OWNERS)
deltas = st.sampled_from([0, 0, 0, 0, 0, -1, 1])  # mostly the current counter, sometimes a stale one
picks = st.integers(0, 9)  # below 8: act on a claimed task (when there is one), else on `pid`
small_values = st.none() | st.integers(-3, 3) | st.text(max_size=3) | st.lists(st.integers(0, 3), max_size=2)
completions = st.lists(st.tuples(ids, picks, deltas, st.sampled_from(FINAL_BY_WORKER), small_values),
                       min_size=1, max_size=4)
leases = st.sampled_from([1.0, 2.5, 10.0])
steps = st.sampled_from([0.0, 0.25, 1.0, 3.0])
deadlines = st.none() | st.sampled_from([0.0, 0.5, 2.0, 20.0])  # from now; 0.0: due at once
outcomes = st.sampled_from([0.0, 0.0, 2.0, None])  # what a death's `decide` answers: None rejects


def parent_of(pid: str) -> str | None:
    return pid.rsplit(".", 1)[0] if "." in pid else None


@dataclass
class MTask:
    state: TaskState = TaskState.READY
    counter: int = 0
    attempt: int = 1
    owner: str | None = None
    expires_at: float | None = None
    not_before: float = 0.0
    awaiting: tuple[str, ...] = ()
    affinity: str | None = None
    last_error: Any = None
    ready_since: float = 0.0
    wake: Wake = Wake.FIRST


class StoreModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = self.make_store()
        self.handles: list[PromiseStore] = [open_store(self.root), open_store(self.root)]
        self.now = 100.0
        self.promises: dict[str, Promise] = {}  # in creation order
        self.tasks: dict[str, MTask] = {}

    def make_store(self) -> str:
        self.tmp = tempfile.mkdtemp(prefix="store-model-")
        return f"{self.tmp}/store"

    def drop_store(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def teardown(self) -> None:
        for h in self.handles:
            h.close()
        self.drop_store()

    # -- the model's own transitions -----------------------------------------------

    def _create(self, pid: str, func: str, args: list[Any], timeout: float | None, runnable: bool,
                tags: dict[str, Any] | None = None) -> None:
        if pid in self.promises:
            return
        self.promises[pid] = Promise(pid, State.PENDING, func, args, parent_of(pid), tags or {}, timeout,
                                     self.now)
        if runnable:
            self.tasks[pid] = MTask(ready_since=self.now)

    def _settled(self, p: Promise, state: State, value: Any, at: float) -> Promise:
        task = self.tasks.get(p.id)
        attempt = task.attempt if task is not None and task.counter > 0 else 0  # the attempt that ran
        return replace(p, state=state, value=value, settled_at=at, attempt=attempt)

    def _overdue(self, pid: str) -> bool:
        p = self.promises[pid]
        return not p.settled and p.timeout is not None and self.now >= p.timeout

    def _seen(self, p: Promise) -> Promise:
        """What a read at `now` shows: an overdue promise timed out at its deadline, swept or not."""
        if self._overdue(p.id):
            assert p.timeout is not None
            return self._settled(p, State.REJECTED_TIMEDOUT, timeout_error(p.id), p.timeout)
        return p

    def _settle(self, pid: str, state: State, value: Any) -> None:
        """Settle as a write at `now` does: past the deadline it times out, at the deadline."""
        p = self.promises[pid]
        if p.settled:
            return
        at = self.now
        if self._overdue(pid):
            event("a late write timed out")
            assert p.timeout is not None
            state, value, at = State.REJECTED_TIMEDOUT, timeout_error(pid), p.timeout
        self.promises[pid] = self._settled(p, state, value, at)
        self.tasks.pop(pid, None)
        for t in self.tasks.values():
            if t.state is TaskState.WAITING and pid in t.awaiting:
                remaining = len({a for a in t.awaiting if not self.promises[a].settled})
                if not t.wake.holds(state, remaining):
                    event(f"a settle left a {t.wake.value} waiter waiting")
                    continue
                event("a settle woke a waiting task")  # woken once: awaiting is cleared
                t.state, t.awaiting, t.not_before, t.ready_since = TaskState.READY, (), 0.0, at
                t.wake = Wake.FIRST

    def _time_out_due(self) -> list[str]:
        due = [pid for pid in self.promises if self._overdue(pid)]
        for pid in due:
            self._settle(pid, State.REJECTED_TIMEDOUT, None)
        return due

    def _died(self, pid: str, how: str | None, outcome: float | None) -> None:
        """A dead holder's attempt ends: the next one after `outcome` seconds, or rejected."""
        t = self.tasks[pid]
        error = died_error(t.owner, t.attempt, how)
        if outcome is None or self._overdue(pid):
            event(f"a death: {'rejected' if outcome is None else 'overdue'}")
            self._settle(pid, State.REJECTED, error)
            return
        self._to_ready(pid, not_before=self.now + outcome if outcome > 0 else 0.0, attempt=t.attempt + 1,
                       error=error, keep_error=False)

    def _descendants(self, pid: str) -> list[str]:
        out, stack = [], [pid]
        while stack:
            top = stack.pop()
            kids = [c for c, p in self.promises.items() if p.parent == top]
            out += kids
            stack += kids
        return out

    def _to_ready(self, pid: str, *, not_before: float = 0.0, attempt: int | None = None,
                  error: Any = None, keep_error: bool = True) -> None:
        t = self.tasks[pid]
        t.state, t.owner, t.expires_at, t.affinity, t.awaiting = TaskState.READY, None, None, None, ()
        t.wake = Wake.FIRST
        t.not_before, t.ready_since = not_before, self.now
        if attempt is not None:
            t.attempt = attempt
        if not keep_error:
            t.last_error = error

    def _stale(self, pid: str, counter: int) -> bool:
        t = self.tasks.get(pid)
        stale = t is None or t.state is not TaskState.CLAIMED or t.counter != counter
        event("stale claim" if stale else "current claim")
        return stale

    def _target(self, pid: str, pick: int) -> str:
        """Mostly a task that is claimed now: a random id would almost always be stale."""
        claimed = sorted(p for p, t in self.tasks.items() if t.state is TaskState.CLAIMED)
        return claimed[pick % len(claimed)] if claimed and pick < 8 else pid

    def _counter(self, pid: str, delta: int) -> int:
        t = self.tasks.get(pid)
        return (t.counter if t is not None else 1) + delta

    def _claimable(self, owner: str) -> list[str]:
        return [pid for pid, t in self.tasks.items()
                if t.state is TaskState.READY and t.not_before <= self.now
                and (t.affinity in (None, owner) or t.ready_since + AFFINITY_GRACE <= self.now)]

    def _new(self, pid: str) -> NewPromise:
        return NewPromise(pid, "k", [], parent_of(pid))

    # -- rules -----------------------------------------------------------------------

    @initialize(roots=st.lists(ids, min_size=1, max_size=4, unique=True), owner=owners, deadline=deadlines)
    def start(self, roots: list[str], owner: str, deadline: float | None) -> None:
        """Begin with runnable work, some of it claimed: most rules need a claim to act on."""
        timeout = None if deadline is None else self.now + deadline
        self.handles[0].create([replace(self._new(pid), timeout=timeout) for pid in roots], now=self.now)
        for pid in roots:
            self._create(pid, "k", [], timeout, True)
        self.claim(1, owner, 2, 10.0)

    @rule(h=handles, batch=st.lists(st.tuples(ids, st.sampled_from(["f", "g"]), st.integers(0, 3),
                                              st.booleans(), deadlines),
                                    min_size=1, max_size=3))
    def create(self, h: int, batch: list[tuple[str, str, int, bool, float | None]]) -> None:
        news = [NewPromise(pid, func, [arg], parent_of(pid), {}, None if t is None else self.now + t,
                           runnable) for pid, func, arg, runnable, t in batch]
        got = self.handles[h].create(news, now=self.now)
        for n in news:
            self._create(n.id, n.func, n.args, n.timeout, n.runnable)
        assert got == [self.promises[n.id] for n in news]

    @rule(h=handles, pid=ids, pick=picks, state=st.sampled_from(FINAL), value=small_values)
    def settle(self, h: int, pid: str, pick: int, state: State, value: Any) -> None:
        awaited = sorted({a for t in self.tasks.values() for a in t.awaiting
                          if a in self.promises and not self.promises[a].settled})
        if awaited and pick < 5:  # often something a workflow waits on
            pid = awaited[pick % len(awaited)]
        if pid not in self.promises:
            with pytest.raises(NotFound):
                self.handles[h].settle(pid, state, value, now=self.now)
            return
        was_pending = not self.promises[pid].settled
        got = self.handles[h].settle(pid, state, value, now=self.now)
        if was_pending:
            pending = [d for d in self._descendants(pid) if not self.promises[d].settled]
            self._settle(pid, state, value)
            if state is State.REJECTED_CANCELED:
                cause = {"type": "Canceled", "message": f"canceled with {pid}"}
                for d in pending:
                    self._settle(d, state, cause)
        assert got == self.promises[pid]

    @rule(h=handles, owner=owners, limit=st.integers(1, 3), lease=leases)
    def claim(self, h: int, owner: str, limit: int, lease: float) -> None:
        store = self.handles[h]
        claims = store.claim(owner, now=self.now, limit=limit, lease=lease)
        self._claimed(owner, limit, lease, claims, self._claimable(owner))

    def _claimed(self, owner: str, limit: int, lease: float, claims: list[Any], claimable: list[str]) -> None:
        """Check and apply a claim of what was `claimable` (as it stood before the claim's frame)."""
        # A claim times out everything overdue in its frame and never hands it out; what
        # those timeouts wake is not claimable before the next claim.
        claimable = [pid for pid in claimable if not self._overdue(pid)]
        if self._time_out_due():
            event("a claim timed out overdue promises")
        got = [c.id for c in claims]
        assert len(got) == len(set(got)) == min(limit, len(claimable)), (got, claimable)
        assert set(got) <= set(claimable), (got, claimable)
        mine = [pid for pid in claimable if self.tasks[pid].affinity == owner]
        assert sum(pid in mine for pid in got) == min(limit, len(mine))  # its own workflows first
        if any(self.tasks[pid].affinity not in (None, owner) for pid in claimable):
            event("claimed past another worker's affinity grace")
        if mine:
            event("claimed its own woken workflow")
        for c in claims:
            t = self.tasks[c.id]
            t.state, t.owner, t.expires_at = TaskState.CLAIMED, owner, self.now + lease
            t.counter, t.affinity, t.not_before = t.counter + 1, None, 0.0
            assert (c.counter, c.attempt, c.owner) == (t.counter, t.attempt, owner)
            assert c.expires_at == t.expires_at
            assert c.promise == self.promises[c.id]

    @rule(h=handles, owner=owners, lease=leases)
    def heartbeat(self, h: int, owner: str, lease: float) -> None:
        held = [t for t in self.tasks.values() if t.state is TaskState.CLAIMED and t.owner == owner]
        assert self.handles[h].heartbeat(owner, now=self.now, lease=lease) == len(held)
        for t in held:
            t.expires_at = self.now + lease

    @rule(h=handles, pid=ids, pick=picks, delta=deltas,
          state=st.sampled_from([State.RESOLVED, State.REJECTED]), value=small_values,
          creates=st.lists(ids, max_size=2))
    def complete(self, h: int, pid: str, pick: int, delta: int, state: State, value: Any,
                 creates: list[str]) -> None:
        pid = self._target(pid, pick)
        counter = self._counter(pid, delta)
        news = [self._new(c) for c in creates]
        if self._stale(pid, counter):
            with pytest.raises(StaleClaim):
                self.handles[h].complete(pid, counter, state, value, now=self.now, creates=news)
            return
        got = self.handles[h].complete(pid, counter, state, value, now=self.now, creates=news)
        if not self._overdue(pid):  # a run that ended at its deadline creates no children
            for n in news:
                self._create(n.id, n.func, n.args, None, True)
        self._settle(pid, state, value)
        assert got == self.promises[pid]

    @rule(h=handles, batch=completions)
    def complete_many(self, h: int, batch: list[tuple[str, int, int, State, Any]]) -> None:
        """A group commit: each completion is fenced on its own, the stale ones are returned."""
        items = self._completions(batch)
        stale = [self._stale(c.id, c.counter) for c in items]
        got = self.handles[h].complete_many(items, now=self.now)
        self._completed(items, stale, got)

    @rule(h=handles, batch=completions, owner=owners, limit=st.integers(0, 3), lease=leases)
    def complete_and_claim(self, h: int, batch: list[tuple[str, int, int, State, Any]], owner: str,
                           limit: int, lease: float) -> None:
        """A worker's turn in one frame: the claims are of what was claimable before the settles."""
        items = self._completions(batch)
        stale = [self._stale(c.id, c.counter) for c in items]
        claimable = self._claimable(owner)
        got, claims = self.handles[h].complete_and_claim(items, owner, limit, now=self.now, lease=lease)
        self._completed(items, stale, got)
        self._claimed(owner, limit, lease, claims, claimable)

    def _completions(self, batch: list[tuple[str, int, int, State, Any]]) -> list[Completion]:
        items, seen = [], set()
        for pid, pick, delta, state, value in batch:
            pid = self._target(pid, pick)
            if pid not in seen:  # one completion per promise, as a worker sends them
                seen.add(pid)
                items.append(Completion(pid, self._counter(pid, delta), state, value))
        return items

    def _completed(self, items: list[Completion], stale: list[bool], got: list[Any]) -> None:
        for item, was_stale, out in zip(items, stale, got, strict=True):
            if was_stale:
                assert isinstance(out, StaleClaim) and out.promise_id == item.id
            else:
                self._settle(item.id, item.state, item.value)
                assert out == self.promises[item.id]

    @rule(h=handles, pid=ids, pick=picks, delta=deltas)
    def release(self, h: int, pid: str, pick: int, delta: int) -> None:
        pid = self._target(pid, pick)
        counter = self._counter(pid, delta)
        if self._stale(pid, counter):
            with pytest.raises(StaleClaim):
                self.handles[h].release(pid, counter, now=self.now)
            return
        self.handles[h].release(pid, counter, now=self.now)
        self._to_ready(pid)

    @rule(h=handles, pid=ids, pick=picks, delta=deltas, delay=st.sampled_from([0.0, 0.5, 2.0]),
          error=small_values)
    def retry(self, h: int, pid: str, pick: int, delta: int, delay: float, error: Any) -> None:
        pid = self._target(pid, pick)
        counter = self._counter(pid, delta)
        if self._stale(pid, counter):
            with pytest.raises(StaleClaim):
                self.handles[h].retry(pid, counter, delay=delay, error=error, now=self.now)
            return
        self.handles[h].retry(pid, counter, delay=delay, error=error, now=self.now)
        if self._overdue(pid):
            self._settle(pid, State.REJECTED_TIMEDOUT, None)
            return
        t = self.tasks[pid]
        self._to_ready(pid, not_before=self.now + delay if delay > 0 else 0.0, attempt=t.attempt + 1,
                       error=error, keep_error=False)

    @rule(h=handles, owner=st.none() | owners, outcome=outcomes, counted=st.sampled_from([True, True, False]))
    def release_owner(self, h: int, owner: str | None, outcome: float | None, counted: bool) -> None:
        held = sorted(pid for pid, t in self.tasks.items()
                      if t.state is TaskState.CLAIMED and (owner is None or t.owner == owner))
        got = self.handles[h].release_owner(owner, now=self.now, how="killed by SIGKILL",
                                            decide=lambda *_: outcome, counted=counted)
        assert sorted(got) == held
        for pid in held:
            if counted:
                self._died(pid, "killed by SIGKILL", outcome)
            else:
                self._to_ready(pid)
        for t in self.tasks.values():  # workflows the dead owner had in memory go to anyone
            if t.affinity is not None and owner in (None, t.affinity):  # waiting or woken
                t.affinity = None

    @rule(h=handles, step=steps, outcome=outcomes)
    def expire(self, h: int, step: float, outcome: float | None) -> None:
        self.now += step
        got = self.handles[h].expire(now=self.now, decide=lambda *_: outcome)
        expired = [pid for pid, t in self.tasks.items()
                   if t.state is TaskState.CLAIMED and t.expires_at is not None and t.expires_at <= self.now]
        for pid in expired:
            self._died(pid, "its lease expired", outcome)
        timed_out = self._time_out_due()
        assert len(got) == len(set(got)) and set(got) == set(expired + timed_out), (got, expired, timed_out)
        event(f"expire: leases {bool(expired)}, timeouts {bool(timed_out)}")

    @rule(step=steps)
    def tick(self, step: float) -> None:
        self.now += step

    @rule(h=handles, pid=ids, due=st.sampled_from([0.0, 0.5, 2.0]), deadline=deadlines)
    def create_timer(self, h: int, pid: str, due: float, deadline: float | None) -> None:
        tags = {TIMER_DUE: self.now + due}
        timeout = None if deadline is None else self.now + deadline
        timer = NewPromise(pid, TIMER, [], parent_of(pid), tags, timeout, runnable=False)
        self.handles[h].create([timer], now=self.now)
        self._create(pid, TIMER, [], timeout, False, tags)

    @rule(h=handles, step=steps)
    def fire_timers(self, h: int, step: float) -> None:
        """Due timers resolve at `now`; one past its deadline times out at the deadline instead."""
        self.now += step
        due = [pid for pid, p in self.promises.items()
               if p.func == TIMER and not p.settled and p.tags[TIMER_DUE] <= self.now]
        got = self.handles[h].fire_timers(now=self.now)
        assert sorted(got) == sorted(due)
        for pid in due:
            self._settle(pid, State.RESOLVED, None)
        event(f"timers fired: {bool(due)}")

    @rule(h=handles, pid=ids, pick=picks, delta=deltas, awaiting=st.lists(ids, max_size=3),
          only_pending=st.sampled_from([True, True, True, False]), creates=st.lists(ids, max_size=2),
          affinity=st.none() | owners, wake=st.sampled_from(list(Wake)))
    def suspend(self, h: int, pid: str, pick: int, delta: int, awaiting: list[str], only_pending: bool,
                creates: list[str], affinity: str | None, wake: Wake) -> None:
        pid = self._target(pid, pick)
        news = [self._new(c) for c in creates]
        if only_pending:  # mostly await what can still settle and wake us
            awaiting = [a for a in awaiting
                        if a in creates or (a in self.promises and not self.promises[a].settled)]
            if not awaiting:  # a new child nothing runs: only a settle (or its timeout) wakes us
                awaiting = [f"{pid}.w"]
                news.append(NewPromise(f"{pid}.w", "ext", [], pid, {}, self.now + 5.0, False))
        counter = self._counter(pid, delta)
        if not awaiting:
            with pytest.raises(ValueError):
                self.handles[h].suspend(pid, counter, awaiting, now=self.now, creates=news, affinity=affinity)
            return
        if self._stale(pid, counter):
            with pytest.raises(StaleClaim):
                self.handles[h].suspend(pid, counter, awaiting, now=self.now, creates=news, affinity=affinity)
            return
        known = set(self.promises) | {n.id for n in news}
        if any(a not in known for a in awaiting):  # waiting on it would wait forever: refused
            with pytest.raises(NotFound):
                self.handles[h].suspend(pid, counter, awaiting, now=self.now, creates=news, affinity=affinity)
            return
        waits = self.handles[h].suspend(pid, counter, awaiting, now=self.now, creates=news, affinity=affinity,
                                        wake=wake)
        for n in news:
            self._create(n.id, n.func, n.args, n.timeout, n.runnable)
        unique = set(awaiting)
        settled = [self.promises[a].state for a in unique if self.promises[a].settled]
        holds = any(wake.holds(s, len(unique) - len(settled)) for s in settled)
        assert waits is not holds
        event(f"suspend waits: {waits}")
        if waits:
            t = self.tasks[pid]
            t.state, t.owner, t.expires_at = TaskState.WAITING, None, None
            t.awaiting, t.affinity, t.wake = tuple(awaiting), affinity, wake

    @rule(h=handles)
    def reopen(self, h: int) -> None:
        self.handles[h].close()
        self.handles[h] = open_store(self.root)

    # -- agreement -----------------------------------------------------------------------

    @invariant()
    def agrees_with_the_model(self) -> None:
        for store in self.handles:
            seen = [self._seen(p) for p in self.promises.values()]
            assert store.search(limit=1000, now=self.now).items == seen
            for pid in dict.fromkeys([*IDS, *self.promises]):
                want_p = self.promises.get(pid)
                assert store.get(pid, now=self.now) == (None if want_p is None else self._seen(want_p))
                got, want = store.task(pid), self.tasks.get(pid)
                if want is None:
                    assert got is None, pid
                    continue
                assert got is not None, pid
                assert (got.state, got.counter, got.attempt, got.owner, got.expires_at, got.awaiting,
                        got.affinity, got.last_error, got.wake) == (
                    want.state, want.counter, want.attempt, want.owner, want.expires_at, want.awaiting,
                    want.affinity, want.last_error, want.wake), pid
            claimed = {pid for pid, t in self.tasks.items() if t.state is TaskState.CLAIMED}
            assert {t.id for t in store.claims()} == claimed
            stats = store.stats(now=self.now)
            by_state = Counter(p.state.value for p in seen)
            assert stats.by_state == {s.value: by_state[s.value] for s in State}
            ready = [t for t in self.tasks.values() if t.state is TaskState.READY]
            assert (stats.claimed, stats.waiting, stats.ready, stats.delayed) == (
                len(claimed), sum(t.state is TaskState.WAITING for t in self.tasks.values()),
                sum(t.not_before <= self.now for t in ready), sum(t.not_before > self.now for t in ready))


class CompactingStoreModel(StoreModel):
    """The same machine with tiny log segments: snapshots, dropped segments and handles
    overtaken by two compactions happen every few steps, and `reopen` loads a snapshot."""

    def __init__(self) -> None:
        self.saved_segment_bytes = replica.SEGMENT_BYTES
        replica.SEGMENT_BYTES = 150
        super().__init__()

    def teardown(self) -> None:
        replica.SEGMENT_BYTES = self.saved_segment_bytes
        super().teardown()

    @invariant()
    def compacts(self) -> None:
        if len(self.promises) > 3:
            event("compacted" if os.path.exists(f"{self.root}/snapshot") else "not compacted yet")


StoreModel.TestCase.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
TestStoreModel = StoreModel.TestCase
CompactingStoreModel.TestCase.settings = settings(max_examples=25, stateful_step_count=30, deadline=None)
TestCompactingStoreModel = CompactingStoreModel.TestCase


class PgStoreModel(StoreModel):
    """The same machine on PostgreSQL: two handles are two connections, each example a
    fresh schema; `reopen` connects again."""

    def make_store(self) -> str:
        self.url = new_pg_schema()
        return self.url

    def drop_store(self) -> None:
        drop_pg_schema(self.url)


PgStoreModel.TestCase.settings = settings(max_examples=30, stateful_step_count=30, deadline=None)
TestPgStoreModel = pytest.mark.skipif(pg_unreachable() is not None, reason=str(pg_unreachable()))(
    PgStoreModel.TestCase)
