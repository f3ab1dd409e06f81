"""The store's state as a deterministic machine fed by the log's operations.

Every process applies the same operations in the same order and so holds the
same promises and tasks. Operations are plain lists (msgpack-friendly), named
by a one-letter code; each names its ids and counters explicitly, so applying
one never depends on the clock or on which process applies it. Only the queues
(ready, delayed, leases, timeouts) are local views, rebuilt from the tasks.

Operations keep their layouts: a field is only ever added at the end, optional,
so a log written by older code still reads.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from .types import TIMERS, WORK, Promise, State, Task, TaskState, Wake, settled_topic

# Enum lookups by value: State(x) costs ~2 us, a dict ~50 ns, and opening a store of
# 100,000 promises does it 200,000 times.
_STATES = {s.value: s for s in State}
_TASK_STATES = {s.value: s for s in TaskState}
_WAKES = {w.value: w for w in Wake}

# op codes
CREATE, SETTLE, CLAIM, HEARTBEAT, RELEASE, WAIT, RELEASE_OWNER = "c", "s", "k", "h", "r", "w", "o"
# Added later: a log without them reads as before.
PARK, UNPARK = "p", "u"
ARCHIVE = "a"  # [a, roots, high]: these whole runs are in the history database (archive.py) up to row high


class TaskRecord:
    """A task's mutable state inside the machine; callers only see frozen Task copies."""

    __slots__ = ("affinity", "attempt", "awaiting", "claimed_at", "counter", "expires_at", "front",
                 "last_error", "not_before", "owner", "ready_since", "remaining", "state", "wake")

    def __init__(self, state: TaskState = TaskState.READY, counter: int = 0, attempt: int = 1,
                 owner: str | None = None, expires_at: float | None = None, not_before: float = 0.0,
                 awaiting: tuple[str, ...] = (), affinity: str | None = None,
                 last_error: Any = None, ready_since: float = 0.0, claimed_at: float | None = None,
                 front: bool = False, wake: Wake = Wake.FIRST) -> None:
        self.state, self.counter, self.attempt = state, counter, attempt
        self.owner, self.expires_at, self.not_before = owner, expires_at, not_before
        self.awaiting, self.affinity, self.last_error = awaiting, affinity, last_error
        self.ready_since, self.claimed_at = ready_since, claimed_at
        # Given back after its holder died: it queues at the front, so a killed branch
        # runs again at once even behind a backlog (until it is claimed again).
        self.front = front
        # A waiting task wakes when `wake` holds over `awaiting`; `remaining` counts those
        # still pending (derived, never stored: every process counts the same settles).
        self.wake, self.remaining = wake, 0

    def to_list(self) -> list[Any]:
        return [self.state.value, self.counter, self.attempt, self.owner, self.expires_at,
                self.not_before, list(self.awaiting), self.affinity, self.last_error, self.ready_since,
                self.claimed_at, self.front, self.wake.value]

    @classmethod
    def from_list(cls, f: list[Any]) -> TaskRecord:
        """A task as a snapshot holds it; older snapshots lack `front` (11 fields) or `wake` (12)."""
        return cls(_TASK_STATES[f[0]], f[1], f[2], f[3], f[4], f[5], tuple(f[6]), f[7], f[8], f[9], f[10],
                   len(f) > 11 and f[11], _WAKES[f[12]] if len(f) > 12 else Wake.FIRST)

    def frozen(self, promise_id: str) -> Task:
        return Task(promise_id, self.state, self.counter, self.attempt, self.owner, self.expires_at,
                    self.not_before, self.awaiting, self.affinity, self.last_error, self.claimed_at,
                    self.wake)


def promise_to_list(p: Promise) -> list[Any]:
    return [p.id, p.state.value, p.func, p.args, p.parent, p.tags, p.timeout, p.created_at,
            p.settled_at, p.value, p.attempt]


def promise_from_list(f: list[Any]) -> Promise:
    return Promise(f[0], _STATES[f[1]], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10])


def timeout_error(pid: str) -> dict[str, str]:
    """The error of a promise that passed its deadline, whoever noticed it (a sweep, a late write, a read)."""
    return {"type": "TimeoutError", "message": f"promise {pid} timed out"}


def overdue(p: Promise, now: float) -> bool:
    """Pending at or past its deadline: every state change from now on is a timeout."""
    return p.timeout is not None and now >= p.timeout and not p.settled


class StoreState:
    def __init__(self) -> None:
        self.promises: dict[str, Promise] = {}
        self.children: dict[str, list[str]] = {}
        self.tasks: dict[str, TaskRecord] = {}
        # Claimable now, oldest first. An OrderedDict, not a dict: claims take from the front,
        # and a dict's iterator walks over every slot deleted there until the next resize,
        # so draining a big fan-out would cost O(claimed so far) per claim.
        self.ready: OrderedDict[str, None] = OrderedDict()
        self.delayed: list[tuple[float, str]] = []  # (not_before, id); checked when popped
        self.callbacks: dict[str, set[str]] = {}  # awaited id -> ids waiting on it
        self.owned: dict[str, set[str]] = {}  # owner -> ids it holds claims on
        # owner -> ids of workflows it has in memory, waiting or ready (it resumes the ready first).
        # Waiting ones are indexed too, so a dead owner's release clears them: else a
        # workflow woken after its worker died would wait out the grace for a dead worker.
        self.affine: dict[str, set[str]] = {}
        # owner -> the ready ones among them: what a claim by that owner takes first, found
        # without looking at the thousands it may have waiting.
        self.ready_affine: dict[str, set[str]] = {}
        self.leases: list[tuple[float, str]] = []  # (expires_at, id); checked when popped
        self.timeouts: list[tuple[float, str]] = []  # (timeout, id); checked when popped
        self.timers: list[tuple[float, str]] = []  # (due, id) of pending timers; checked when popped
        self.parked: set[str] = set()  # ids of parked tasks, so finding them never scans every task
        # The history database's last row as of the ARCHIVE frames applied: it must hold at
        # least that many (0: nothing was ever archived, and it need not exist).
        self.archive_high = 0
        # Each promise's place in creation order (1, 2, ...): the history database keeps it
        # as its row number, so a listing of both stays in creation order.
        self.numbers: dict[str, int] = {}
        self.created = 0
        # While the writer applies its own frame: the watch topics (types.py) it produces,
        # for the wake-ups it sends once unlocked. None when replaying: nobody is woken twice.
        self.produced: set[str] | None = None

    def _produce(self, topic: str) -> None:
        if self.produced is not None:
            self.produced.add(topic)

    # -- applying operations ------------------------------------------------

    def apply(self, op: list[Any]) -> None:
        code = op[0]
        if code == CREATE:
            self._create(promise_from_list(op[1]), op[2])
        elif code == SETTLE:
            self._settle(op[1], _STATES[op[2]], op[3], op[4])
        elif code == CLAIM:
            self._claim(op[1], op[2], op[3], op[4], op[5])
        elif code == HEARTBEAT:
            # [h, owner, expires] renews every claim of owner (the logs of earlier versions);
            # [h, owner, expires, ids] only those of ids it still holds.
            owned = self.owned.get(op[1], set())
            for pid in owned if len(op) < 4 else owned.intersection(op[3]):
                task = self.tasks[pid]
                if task.expires_at is None or op[2] < task.expires_at:
                    # A heartbeat with a shorter lease moves the expiry
                    # earlier; without its own heap entry it would expire only at the old time.
                    heapq.heappush(self.leases, (op[2], pid))
                task.expires_at = op[2]
        elif code == RELEASE:
            # op[7], "to the front" (after a death), came later: older logs lack it.
            self._release(op[1], op[2], op[3], op[4], op[5], op[6], len(op) > 7 and op[7])
        elif code == WAIT:
            # op[4], when to wake, came later: older logs wake on the first settle.
            self._wait(op[1], tuple(op[2]), op[3], _WAKES[op[4]] if len(op) > 4 else Wake.FIRST)
        elif code == RELEASE_OWNER:
            self._release_owner(op[1], op[2])
        elif code == PARK:
            self._park(op[1], op[2])
        elif code == UNPARK:
            self._unpark(op[1], op[2])
        elif code == ARCHIVE:
            for root in op[1]:
                if self.complete(root):
                    self._drop_run(root)
            self.archive_high = max(self.archive_high, op[2])
        else:
            raise ValueError(f"unknown operation {code!r}")

    def _create(self, p: Promise, runnable: bool) -> None:
        if p.id in self.promises:
            return
        self.promises[p.id] = p
        self.created += 1
        self.numbers[p.id] = self.created
        if p.parent is not None:
            self.children.setdefault(p.parent, []).append(p.id)
        if p.settled:
            self._produce(settled_topic(p.id))
            return
        if p.timeout is not None:
            heapq.heappush(self.timeouts, (p.timeout, p.id))
        if p.due is not None:
            heapq.heappush(self.timers, (p.due, p.id))
            self._produce(TIMERS)
        if runnable:
            self._add_task(p.id, TaskRecord(ready_since=p.created_at))

    def _add_task(self, pid: str, task: TaskRecord) -> None:
        self.tasks[pid] = task
        if task.state is TaskState.READY:
            self._enqueue(pid, task)
        elif task.state is TaskState.CLAIMED:
            assert task.owner is not None and task.expires_at is not None
            self.owned.setdefault(task.owner, set()).add(pid)
            heapq.heappush(self.leases, (task.expires_at, pid))
        elif task.state is TaskState.PARKED:
            self.parked.add(pid)
        else:
            self._await(pid, task)
            if task.affinity is not None:
                self.affine.setdefault(task.affinity, set()).add(pid)

    def _await(self, pid: str, task: TaskRecord) -> None:
        """Index a waiting task under each promise it awaits that may still settle."""
        task.remaining = 0
        for awaited in dict.fromkeys(task.awaiting):  # an id awaited twice settles once
            if self.pending(awaited):
                task.remaining += 1
                self.callbacks.setdefault(awaited, set()).add(pid)

    def _enqueue(self, pid: str, task: TaskRecord) -> None:
        if task.not_before > 0:
            heapq.heappush(self.delayed, (task.not_before, pid))
            self._produce(TIMERS)
        else:
            self._make_ready(pid, task)
        if task.affinity is not None:
            self.affine.setdefault(task.affinity, set()).add(pid)

    def _unqueue(self, pid: str, task: TaskRecord) -> None:
        """Take a task out of every index; the caller gives it its new state."""
        self.ready.pop(pid, None)
        self.parked.discard(pid)
        if task.owner is not None:
            self.owned.get(task.owner, set()).discard(pid)
            task.owner = None
        if task.affinity is not None:
            self.affine.get(task.affinity, set()).discard(pid)
            self.ready_affine.get(task.affinity, set()).discard(pid)
            task.affinity = None
        for awaited in task.awaiting:
            self.callbacks.get(awaited, set()).discard(pid)
        task.awaiting, task.wake = (), Wake.FIRST

    def _make_ready(self, pid: str, task: TaskRecord) -> None:
        self.ready[pid] = None
        self._produce(WORK)
        if task.affinity is not None:
            self.ready_affine.setdefault(task.affinity, set()).add(pid)
        if task.front:
            self.ready.move_to_end(pid, last=False)

    def _settled(self, p: Promise, state: State, value: Any, at: float) -> Promise:
        """The record `p` becomes when settled; its attempt is the one that ran (0: none did)."""
        task = self.tasks.get(p.id)
        attempt = 0 if task is None or task.counter == 0 else task.attempt
        # Built field by field, not with dataclasses.replace (twice the cost): every process
        # applies every settle.
        return Promise(p.id, state, p.func, p.args, p.parent, p.tags, p.timeout, p.created_at, at, value,
                       attempt)

    def _settle(self, pid: str, state: State, value: Any, at: float) -> None:
        p = self.promises[pid]
        if p.settled:
            return
        self.promises[pid] = self._settled(p, state, value, at)
        self._produce(settled_topic(pid))
        task = self.tasks.pop(pid, None)
        if task is not None:
            self._unqueue(pid, task)
        for waiter in sorted(self.callbacks.pop(pid, ())):
            wtask = self.tasks.get(waiter)
            if wtask is not None and wtask.state is TaskState.WAITING:
                wtask.remaining -= 1
                if not wtask.wake.holds(state, wtask.remaining):
                    continue  # one wake-up when the condition holds, not one per child
                affinity = wtask.affinity
                self._unqueue(waiter, wtask)
                wtask.state, wtask.affinity, wtask.ready_since = TaskState.READY, affinity, at
                wtask.not_before = 0.0
                self._enqueue(waiter, wtask)

    def _claim(self, pid: str, owner: str, counter: int, expires_at: float, at: float) -> None:
        task = self.tasks[pid]
        self._unqueue(pid, task)
        task.state, task.owner, task.counter, task.expires_at = TaskState.CLAIMED, owner, counter, expires_at
        task.claimed_at, task.front = at, False
        self.owned.setdefault(owner, set()).add(pid)
        heapq.heappush(self.leases, (expires_at, pid))

    def _release(self, pid: str, not_before: float, attempt: int, error: Any,
                 affinity: str | None, at: float, front: bool = False) -> None:
        task = self.tasks[pid]
        self._unqueue(pid, task)
        task.state, task.not_before, task.attempt = TaskState.READY, not_before, attempt
        task.last_error, task.affinity, task.ready_since, task.expires_at = error, affinity, at, None
        task.front = front
        self._enqueue(pid, task)

    def _wait(self, pid: str, awaiting: tuple[str, ...], affinity: str | None, wake: Wake) -> None:
        task = self.tasks[pid]
        self._unqueue(pid, task)
        task.state, task.awaiting, task.affinity, task.wake = TaskState.WAITING, awaiting, affinity, wake
        task.expires_at = None
        self._await(pid, task)
        if affinity is not None:
            self.affine.setdefault(affinity, set()).add(pid)

    def _park(self, pid: str, error: Any) -> None:
        """Hold a task out of every queue with its error; its claim ends here."""
        task = self.tasks[pid]
        self._unqueue(pid, task)
        task.state, task.last_error, task.expires_at = TaskState.PARKED, error, None
        self.parked.add(pid)

    def _unpark(self, pid: str, at: float) -> None:
        """Back to the ready queue as the same attempt; its error stays as its last error."""
        task = self.tasks[pid]
        self._release(pid, 0.0, task.attempt, task.last_error, None, at)

    def _release_owner(self, owner: str | None, at: float) -> None:
        owners = [owner] if owner is not None else list(self.owned)
        for who in owners:
            for pid in sorted(self.owned.pop(who, ())):
                task = self.tasks[pid]
                self._release(pid, 0.0, task.attempt, task.last_error, None, at)
        for who in ([owner] if owner is not None else list(self.affine)):
            if self.ready_affine.pop(who, None):
                self._produce(WORK)  # left to a dead worker until now: anyone may claim them
            for pid in self.affine.pop(who, ()):
                self.tasks[pid].affinity = None

    def _drop_run(self, root: str) -> None:
        """Forget a whole settled run: it is in the history database now."""
        stack = [root]
        while stack:
            pid = stack.pop()
            del self.promises[pid]
            del self.numbers[pid]
            stack.extend(self.children.pop(pid, ()))

    # -- runs ------------------------------------------------------------------

    def run(self, root: str) -> list[tuple[int, Promise]] | None:
        """(number, promise) of the run at `root`, each parent before its children, if all have settled."""
        out, stack = [], [root]
        while stack:
            p = self.promises[stack.pop()]
            if not p.settled:
                return None
            out.append((self.numbers[p.id], p))
            stack.extend(reversed(self.children.get(p.id, ())))
        return out

    def complete(self, root: str) -> bool:
        p = self.promises.get(root)
        return p is not None and p.parent is None and self.run(root) is not None

    def complete_runs(self) -> list[tuple[str, list[tuple[int, Promise]]]]:
        """Every whole settled run held here: what the history database can take.

        A run is a root (no parent) and all below it. A promise created under a parent
        that is not held (archived, or never created) is never archived: so a child of a
        held parent is held too, and create() needs the database only for the others.
        """
        found = []
        for pid, p in self.promises.items():
            if p.settled and p.parent is None and (promises := self.run(pid)) is not None:
                found.append((pid, promises))
        return found

    # -- queries the writer uses to build operations ------------------------

    def promote(self, now: float) -> None:
        """Move delayed tasks whose time has come into the ready queue."""
        while self.delayed and self.delayed[0][0] <= now:
            not_before, pid = heapq.heappop(self.delayed)
            task = self.tasks.get(pid)
            if task is not None and task.state is TaskState.READY and task.not_before == not_before:
                task.not_before = 0.0
                self._make_ready(pid, task)

    def candidates(self, owner: str, now: float, grace: float) -> Iterator[str]:
        """Ready ids for `owner`: its own suspended workflows first, then in queue order
        (oldest first, but those given back after a death at the very front).

        A workflow woken for another worker that still has it in memory is left
        to that worker for `grace` seconds, then anyone may take it.
        """
        self.promote(now)
        yield from sorted(self.ready_affine.get(owner, ()))
        for pid in self.ready:
            task = self.tasks[pid]
            if task.affinity is None or (task.affinity != owner and task.ready_since + grace <= now):
                yield pid

    def claimable(self, owner: str, now: float, limit: int, grace: float) -> list[str]:
        """The first `limit` candidates."""
        return list(itertools.islice(self.candidates(owner, now, grace), max(0, limit)))

    def expired_leases(self, now: float) -> list[str]:
        expired = []
        seen: set[str] = set()
        while self.leases and self.leases[0][0] <= now:
            _, pid = heapq.heappop(self.leases)
            task = self.tasks.get(pid)
            if task is None or task.state is not TaskState.CLAIMED or task.expires_at is None:
                continue
            # A task claimed twice has two entries here; both come due
            # together and once listed the id twice (two RELEASE ops, a duplicate in
            # expire()'s result). One look per id and pass is enough.
            if pid in seen:
                continue
            seen.add(pid)
            if task.expires_at <= now:
                expired.append(pid)
            else:
                heapq.heappush(self.leases, (task.expires_at, pid))
        return expired

    def due_timers(self, now: float) -> list[str]:
        """Pending timers due at or before `now` (taken off the heap: fire them now)."""
        return self._pop_due(self.timers, now)

    def next_timer(self) -> float | None:
        """When the earliest pending timer is due; settled ones are dropped from the heap here."""
        while self.timers and not self.pending(self.timers[0][1]):
            heapq.heappop(self.timers)
        return self.timers[0][0] if self.timers else None

    def timed_out(self, now: float) -> list[str]:
        """Pending promises at or past their deadline (taken off the heap: time them out now)."""
        return self._pop_due(self.timeouts, now)

    def _pop_due(self, heap: list[tuple[float, str]], now: float) -> list[str]:
        """The pending ids of `heap` (time, id) whose time is at or before `now`, popped."""
        out = []
        while heap and heap[0][0] <= now:
            _, pid = heapq.heappop(heap)
            if self.pending(pid):
                out.append(pid)
        return out

    def pending(self, pid: str) -> bool:
        """Held here and pending (a heap's entry may name one settled, or archived, since)."""
        p = self.promises.get(pid)
        return p is not None and not p.settled

    def seen(self, p: Promise, now: float) -> Promise:
        """`p` as a reader sees it at `now`: timed out once past its deadline, swept or not.

        Built exactly as the sweep's write would be (settled at the deadline), so what a
        reader is told before the write and what is stored after it are the same.
        """
        if p.timeout is None or not overdue(p, now):
            return p
        return self._settled(p, State.REJECTED_TIMEDOUT, timeout_error(p.id), p.timeout)

    def descendants_pending(self, pid: str) -> list[str]:
        """Pending promises below `pid`, deepest first, found through the child index."""
        out: list[str] = []
        stack = list(self.children.get(pid, ()))
        while stack:
            child = stack.pop()
            stack.extend(self.children.get(child, ()))
            if not self.promises[child].settled:
                out.append(child)
        return out[::-1]

    # -- snapshots -----------------------------------------------------------

    def to_snapshot(self) -> list[Any]:
        return Frozen.of(self, 0, None).body(self)

    @classmethod
    def from_snapshot(cls, data: list[Any]) -> StoreState:
        state = cls()
        promises = state.promises
        for f in data[0]:
            p = promise_from_list(f)
            promises[p.id] = p
            if p.parent is not None:
                state.children.setdefault(p.parent, []).append(p.id)
            if p.timeout is not None and not p.settled:
                state.timeouts.append((p.timeout, p.id))
            if p.due is not None and not p.settled:
                state.timers.append((p.due, p.id))
        heapq.heapify(state.timeouts)
        heapq.heapify(state.timers)
        for pid, fields in data[1]:
            state._add_task(pid, TaskRecord.from_list(fields))
        if len(data) > 2:
            state.archive_high, state.created = data[2]["archive_high"], data[2]["created"]
            state.numbers = dict(zip(promises, data[2]["numbers"], strict=True))
        else:  # written before the history database: numbered in the order it holds them
            state.numbers = {pid: n for n, pid in enumerate(promises, 1)}
            state.created = len(promises)
        return state


class Frozen:
    """A copy of the state as a rotation left it, for a snapshot written without the lock.

    Taking it costs a dict copy (promises are frozen records, shared) and each task as a
    list; building the children index and finding the whole runs happen later, unlocked.
    """

    def __init__(self, segment: int, prev: list[int] | None, promises: dict[str, Promise],
                 numbers: dict[str, int], tasks: list[list[Any]], created: int, archive_high: int) -> None:
        self.segment, self.prev = segment, prev
        self.promises, self.numbers, self.tasks = promises, numbers, tasks
        self.created, self.archive_high = created, archive_high

    @classmethod
    def of(cls, state: StoreState, segment: int, prev: list[int] | None) -> Frozen:
        return cls(segment, prev, state.promises.copy(), state.numbers.copy(),
                   [[pid, t.to_list()] for pid, t in state.tasks.items()], state.created, state.archive_high)

    def state(self) -> StoreState:
        """The promises and their children index (what finding and dropping runs need)."""
        state = StoreState()
        state.promises, state.numbers = self.promises, self.numbers
        state.created, state.archive_high = self.created, self.archive_high
        for pid, p in self.promises.items():
            if p.parent is not None:
                state.children.setdefault(p.parent, []).append(pid)
        return state

    def body(self, state: StoreState) -> list[Any]:
        """The snapshot body of `state` (this copy, its archived runs dropped), as to_snapshot writes it."""
        # Every task is of a pending promise, and no archived run holds one: all are kept.
        return [[promise_to_list(p) for p in state.promises.values()], self.tasks,
                {"archive_high": state.archive_high, "created": state.created,
                 "numbers": list(state.numbers.values())}]
