"""Timers and wake-up conditions in the store, with `now` passed in: nothing here sleeps.

A timer is a promise no function runs, due at its TIMER_DUE tag, that fire_timers
resolves; a deadline is the other thing, and rejects. A workflow waiting on several
promises is woken once, when its condition (Wake) holds, however many settle.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import runner.store.replica as replica
from runner.store import TIMER, TIMER_DUE, DirStore, NewPromise, State, TaskState, Wake, open_store
from runner.store.state import CREATE, WAIT, StoreState
from runner.store.validate import Invalid, operation


def timer(pid: str, due: float, parent: str | None = "wf", timeout: float | None = None) -> NewPromise:
    return NewPromise(pid, TIMER, [], parent, {TIMER_DUE: due}, timeout, runnable=False)


@pytest.fixture
def s(store_location: str) -> Iterator[DirStore]:
    """A store on each backend (a test that also asks for store_dir: the directory store only)."""
    store = open_store(store_location)
    yield store
    store.close()


def waiting(s: DirStore, awaiting: list[NewPromise], wake: Wake = Wake.FIRST) -> bool:
    """A workflow `wf`, claimed, then suspended on `awaiting` (created in the same frame)."""
    s.create([NewPromise("wf", "flow")], now=1.0)
    [claim] = s.claim("w1", now=1.0)
    return s.suspend("wf", claim.counter, [n.id for n in awaiting], now=1.0, creates=awaiting, wake=wake)


def test_a_timer_resolves_when_due_and_wakes_its_sleeper(s: DirStore) -> None:
    assert waiting(s, [timer("wf.0", 10.0)])
    assert s.next_timer() == 10.0
    assert s.fire_timers(now=9.999) == []
    assert s.fire_timers(now=10.004) == ["wf.0"]
    fired = s.get("wf.0", now=11.0)
    assert fired is not None and (fired.state, fired.settled_at) == (State.RESOLVED, 10.004)
    task = s.task("wf")
    assert task is not None and task.state is TaskState.READY
    assert s.next_timer() is None
    assert s.fire_timers(now=20.0) == []  # fires once


def test_a_deadline_before_the_due_time_rejects_the_timer_instead(s: DirStore) -> None:
    s.create([timer("t", 10.0, parent=None, timeout=5.0)], now=1.0)
    assert s.fire_timers(now=10.0) == ["t"]
    p = s.get("t", now=10.0)
    assert p is not None and (p.state, p.settled_at) == (State.REJECTED_TIMEDOUT, 5.0)


def test_a_timer_due_while_nobody_ran_fires_at_the_next_open(tmp_path: Path) -> None:
    first = open_store(str(tmp_path / "store"))
    first.create([timer("t", 10.0, parent=None), timer("u", 30.0, parent=None)], now=1.0)
    first.close()
    again = open_store(str(tmp_path / "store"))
    assert again.next_timer() == 10.0
    assert again.fire_timers(now=20.0) == ["t"]
    assert again.next_timer() == 30.0
    again.close()


def test_timers_survive_a_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replica, "SEGMENT_BYTES", 100)
    store = open_store(str(tmp_path / "store"))
    store.create([timer(f"t{i}", 10.0 + i, parent=None) for i in range(5)], now=1.0)
    store.create([NewPromise("x", "f")], now=1.0)  # a frame past the limit: compacted
    store.close()
    assert (tmp_path / "store" / "snapshot").exists()
    again = open_store(str(tmp_path / "store"))
    assert again.next_timer() == 10.0
    assert again.fire_timers(now=12.5) == ["t0", "t1", "t2"]
    again.close()


def test_a_timer_without_a_due_time_is_damage() -> None:
    fields = ["t", "pending", TIMER, [], None, {}, None, 1.0, None, None, 0]
    with pytest.raises(Invalid, match="a timer needs a number"):
        operation([CREATE, fields, False], StoreState())
    operation([CREATE, [*fields[:5], {TIMER_DUE: 5.0}, *fields[6:]], False], StoreState())


def children(n: int) -> list[NewPromise]:
    return [NewPromise(f"wf.{i}", "leaf", [], "wf") for i in range(n)]


def test_wake_all_wakes_once_when_every_child_resolved(s: DirStore) -> None:
    assert waiting(s, children(3), Wake.ALL)
    for i in range(2):
        s.settle(f"wf.{i}", State.RESOLVED, i, now=2.0)
        task = s.task("wf")
        assert task is not None and task.state is TaskState.WAITING and task.wake is Wake.ALL
    s.settle("wf.2", State.RESOLVED, 2, now=2.0)
    task = s.task("wf")
    assert task is not None and task.state is TaskState.READY and task.awaiting == ()


def test_wake_all_wakes_at_the_first_failure(s: DirStore) -> None:
    assert waiting(s, children(3), Wake.ALL)
    s.settle("wf.1", State.REJECTED, {"type": "ValueError", "message": "x"}, now=2.0)
    task = s.task("wf")
    assert task is not None and task.state is TaskState.READY


def test_wake_any_waits_past_failures_for_a_value(s: DirStore) -> None:
    assert waiting(s, children(3), Wake.ANY)
    s.settle("wf.0", State.REJECTED, {"type": "ValueError", "message": "x"}, now=2.0)
    task = s.task("wf")
    assert task is not None and task.state is TaskState.WAITING
    s.settle("wf.2", State.RESOLVED, 2, now=2.0)
    task = s.task("wf")
    assert task is not None and task.state is TaskState.READY


def test_wake_any_wakes_when_every_child_failed(s: DirStore) -> None:
    assert waiting(s, children(2), Wake.ANY)
    for i in range(2):
        s.settle(f"wf.{i}", State.REJECTED, {"type": "ValueError", "message": "x"}, now=2.0)
    task = s.task("wf")
    assert task is not None and task.state is TaskState.READY


def test_suspend_keeps_the_claim_when_the_condition_holds_already(s: DirStore) -> None:
    s.create([NewPromise("wf", "flow"), *children(2)], now=1.0)
    s.settle("wf.0", State.RESOLVED, 0, now=1.0)
    claim = next(c for c in s.claim("w1", now=1.0, limit=3) if c.id == "wf")
    assert s.suspend("wf", claim.counter, ["wf.0", "wf.1"], now=1.0, wake=Wake.ALL)  # one pending
    s.settle("wf.1", State.RESOLVED, 1, now=1.0)
    claim = next(c for c in s.claim("w1", now=1.0, limit=3) if c.id == "wf")
    assert not s.suspend("wf", claim.counter, ["wf.0", "wf.1"], now=1.0, wake=Wake.ALL)


def test_wake_all_over_an_id_awaited_twice_wakes_when_it_settles(s: DirStore) -> None:
    s.create([NewPromise("wf", "flow"), *children(1)], now=1.0)
    [claim] = [c for c in s.claim("w1", now=1.0, limit=2) if c.id == "wf"]
    assert s.suspend("wf", claim.counter, ["wf.0", "wf.0"], now=1.0, wake=Wake.ALL)
    s.settle("wf.0", State.RESOLVED, 0, now=2.0)
    task = s.task("wf")
    assert task is not None and task.state is TaskState.READY


def test_a_waiting_condition_survives_a_reopen(tmp_path: Path) -> None:
    first = open_store(str(tmp_path / "store"))
    assert waiting(first, children(2), Wake.ALL)
    first.settle("wf.0", State.RESOLVED, 0, now=2.0)
    first.close()
    again = open_store(str(tmp_path / "store"))
    again.settle("wf.1", State.RESOLVED, 1, now=2.0)
    task = again.task("wf")
    assert task is not None and task.state is TaskState.READY
    again.close()


def test_a_wait_written_by_older_code_wakes_on_the_first_settle() -> None:
    state = StoreState()
    for pid, parent in (("wf", None), ("wf.0", "wf"), ("wf.1", "wf")):
        state.apply([CREATE, [pid, "pending", "f", [], parent, {}, None, 1.0, None, None, 0], True])
    state.apply(["k", "wf", "w1", 1, 30.0, 1.0])
    operation([WAIT, "wf", ["wf.0", "wf.1"], None], state)  # valid without the wake field
    state.apply([WAIT, "wf", ["wf.0", "wf.1"], None])
    state.apply(["s", "wf.1", "resolved", 1, 2.0])
    assert state.tasks["wf"].state is TaskState.READY
