"""Two rules of the store at every state change: deadlines hold, and a death is an attempt.

Time is passed explicitly (`now=`), so nothing here sleeps.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.store import Completion, DirStore, Promise, StaleClaim, State, Task, TaskState, codec, open_store
from runner.store.deaths import died_error
from runner.store.state import RELEASE, RELEASE_OWNER, StoreState, TaskRecord
from tests.test_store import claim_one, frame_count, log_bytes, new


@pytest.fixture
def s(store_location: str) -> Iterator[DirStore]:
    """A store on each backend (a test that also asks for store_dir: the directory store only)."""
    handle = open_store(store_location)
    yield handle
    handle.close()


def timed_out_at(p: Promise | None, deadline: float) -> bool:
    """Timed out as the sweep writes it: at the deadline, with the timeout error."""
    return p is not None and (p.state, p.value, p.settled_at) == (
        State.REJECTED_TIMEDOUT, {"type": "TimeoutError", "message": f"promise {p.id} timed out"}, deadline)


# -- deadlines ----------------------------------------------------------------------------


@pytest.mark.parametrize("late", [0.0, 5.0])  # at the deadline, and past it
def test_a_settle_at_or_past_the_deadline_times_out_at_the_deadline(s: DirStore, late: float) -> None:
    s.create([new("a", timeout=100.0, runnable=False)], now=0.0)
    p = s.settle("a", State.RESOLVED, "late value", now=100.0 + late)
    assert timed_out_at(p, 100.0)
    assert s.get("a", now=200.0) == p


def test_a_settle_before_the_deadline_keeps_its_value(s: DirStore) -> None:
    s.create([new("a", timeout=100.0, runnable=False)], now=0.0)
    p = s.settle("a", State.RESOLVED, "in time", now=99.9)
    assert (p.state, p.value, p.settled_at) == (State.RESOLVED, "in time", 99.9)


def test_a_late_cancel_times_out_and_still_cancels_what_is_below(s: DirStore) -> None:
    s.create([new("a", timeout=100.0), new("a.0", parent="a", timeout=100.0), new("a.1", parent="a")],
             now=0.0)
    s.settle("a", State.REJECTED_CANCELED, None, now=150.0)
    assert timed_out_at(s.get("a", now=150.0), 100.0)
    assert timed_out_at(s.get("a.0", now=150.0), 100.0)  # its own deadline passed too
    assert s.get("a.1", now=150.0).state is State.REJECTED_CANCELED


@pytest.mark.parametrize("late", [0.0, 5.0])
def test_a_completion_at_or_past_the_deadline_times_out_and_creates_nothing(s: DirStore, late: float) -> None:
    s.create([new("a", timeout=100.0)], now=0.0)
    c = claim_one(s, "w1", now=50.0)
    p = s.complete("a", c.counter, State.RESOLVED, "late", now=100.0 + late,
                   creates=[new("a.0", parent="a")])
    assert timed_out_at(p, 100.0) and p.attempt == 1
    assert s.task("a") is None and s.get("a.0") is None
    with pytest.raises(StaleClaim):  # the fence still comes first
        s.complete("a", c.counter, State.RESOLVED, "again", now=101.0)


def test_complete_many_times_out_only_the_late_ones(s: DirStore, store_dir: Path) -> None:
    s.create([new("a", timeout=100.0), new("b", timeout=200.0)], now=0.0)
    claims = {c.id: c for c in s.claim("w1", now=50.0, limit=2)}
    frames = frame_count(store_dir)
    out = s.complete_many([Completion("a", claims["a"].counter, State.RESOLVED, 1),
                           Completion("b", claims["b"].counter, State.RESOLVED, 2)], now=150.0)
    assert frame_count(store_dir) == frames + 1
    assert isinstance(out[0], Promise) and timed_out_at(out[0], 100.0)
    assert isinstance(out[1], Promise) and (out[1].state, out[1].value) == (State.RESOLVED, 2)


def test_a_claim_never_hands_out_an_overdue_task_and_times_it_out_in_its_frame(
        s: DirStore, store_dir: Path) -> None:
    s.create([new("a", timeout=100.0), new("b"), new("w", timeout=100.0, runnable=False)], now=0.0)
    frames = frame_count(store_dir)
    [c] = s.claim("w1", now=100.0, limit=5)
    assert c.id == "b" and frame_count(store_dir) == frames + 1
    for pid in ("a", "w"):  # a waiting promise past its deadline is timed out too
        p = s.get(pid, now=100.0)
        assert p is not None and p.state is State.REJECTED_TIMEDOUT and p.settled_at == 100.0
    assert s.task("a") is None


def test_a_retry_past_the_deadline_times_out(s: DirStore) -> None:
    s.create([new("a", timeout=100.0)], now=0.0)
    c = claim_one(s, "w1", now=50.0)
    s.retry("a", c.counter, delay=0.0, error={"type": "E", "message": ""}, now=120.0)
    assert timed_out_at(s.get("a", now=120.0), 100.0) and s.task("a") is None


def test_a_read_shows_an_overdue_promise_timed_out_before_any_write(s: DirStore, store_dir: Path) -> None:
    s.create([new("a", timeout=100.0), new("a.0", parent="a", timeout=100.0)], now=0.0)
    claim_one(s, "w1", now=10.0)
    before = log_bytes(store_dir)
    assert s.get("a", now=99.9).state is State.PENDING
    shown = s.get("a", now=100.0)
    assert timed_out_at(shown, 100.0) and shown.attempt == 1
    assert s.get("a", now=100.0) == shown
    assert s.children("a", now=100.0)[0].state is State.REJECTED_TIMEDOUT
    assert [p.id for p in s.search(state=State.REJECTED_TIMEDOUT, now=100.0).items] == ["a", "a.0"]
    assert s.stats(now=100.0).by_state["rejected_timedout"] == 2
    assert log_bytes(store_dir) == before, "a read writes nothing"
    assert s.expire(now=130.0) == ["a", "a.0"]
    assert s.get("a", now=130.0) == shown, "the sweep stores what the read showed"


def test_the_sweep_settles_at_the_deadline_not_when_it_runs(s: DirStore) -> None:
    s.create([new("a", timeout=100.0)], now=0.0)
    assert s.expire(now=250.0) == ["a"]
    assert timed_out_at(s.get("a", now=250.0), 100.0)


# -- a death is an attempt --------------------------------------------------------------


def test_a_death_moves_the_attempt_on_with_a_worker_died_error(s: DirStore) -> None:
    s.create([new("a")], now=0.0)
    claim_one(s, "w1", now=1.0)
    asked: list[tuple[Promise, Task, dict[str, Any]]] = []

    def decide(promise: Promise, task: Task, error: dict[str, Any]) -> float | None:
        asked.append((promise, task, error))
        return 0.0

    assert s.release_owner("w1", now=2.0, how="killed by SIGKILL", decide=decide) == ["a"]
    [(promise, task, error)] = asked
    assert promise.id == "a" and (task.attempt, task.owner) == (1, "w1")
    assert error == {"type": "WorkerDied", "message": "worker w1 died running attempt 1 (killed by SIGKILL)"}
    after = s.task("a")
    assert after is not None and (after.state, after.attempt, after.last_error, after.not_before) == (
        TaskState.READY, 2, error, 0.0)
    assert claim_one(s, "w2", now=2.0).attempt == 2


def test_a_death_waits_the_delay_decide_gives(s: DirStore) -> None:
    s.create([new("a")], now=0.0)
    claim_one(s, "w1", now=1.0)
    s.release_owner("w1", now=2.0, decide=lambda *_: 3.0)
    assert s.claim("w2", now=4.9) == []
    assert claim_one(s, "w2", now=5.0).attempt == 2


def test_a_death_past_the_policy_rejects_in_the_same_frame(s: DirStore, store_dir: Path) -> None:
    s.create([new("a")], now=0.0)
    claim_one(s, "w1", now=1.0)
    frames = frame_count(store_dir)
    s.release_owner("w1", now=2.0, how="exit code 3", decide=lambda *_: None)
    assert frame_count(store_dir) == frames + 1
    p = s.get("a", now=2.0)
    assert (p.state, p.value, p.attempt, p.settled_at) == (
        State.REJECTED, died_error("w1", 1, "exit code 3"), 1, 2.0)
    assert s.task("a") is None and s.claim("w2", now=3.0) == []


def test_a_stopped_holder_gives_its_claims_back_untouched(s: DirStore) -> None:
    s.create([new("a")], now=0.0)
    claim_one(s, "w1", now=1.0)
    s.release_owner("w1", now=2.0, decide=lambda *_: None, counted=False)
    task = s.task("a")
    assert task is not None and (task.state, task.attempt, task.last_error) == (TaskState.READY, 1, None)


def test_every_claim_taken_back_by_a_new_supervisor_is_a_death(s: DirStore) -> None:
    s.create([new("a"), new("b")], now=0.0)
    claim_one(s, "w1", now=1.0)
    claim_one(s, "w2", now=1.0)
    assert s.release_owner(None, now=2.0, how="taken back") == ["a", "b"]
    assert [s.task(pid).last_error["message"] for pid in ("a", "b")] == [
        "worker w1 died running attempt 1 (taken back)", "worker w2 died running attempt 1 (taken back)"]


def test_a_lapsed_lease_is_a_death_too(s: DirStore) -> None:
    s.create([new("a"), new("b")], now=0.0)
    claim_one(s, "w1", now=0.0, lease=5.0)
    claim_one(s, "w1", now=0.0, lease=5.0)
    outcomes = {"a": 0.0, "b": None}
    assert s.expire(now=5.0, decide=lambda p, *_: outcomes[p.id]) == ["a", "b"]
    task = s.task("a")
    assert task is not None and (task.attempt, task.last_error["message"]) == (
        2, "worker w1 died running attempt 1 (its lease expired)")
    assert s.get("b", now=5.0).state is State.REJECTED


def test_a_lapsed_lease_past_the_deadline_times_out_once(s: DirStore) -> None:
    s.create([new("a", timeout=4.0)], now=0.0)
    claim_one(s, "w1", now=0.0, lease=5.0)
    assert s.expire(now=5.0) == ["a"]
    assert timed_out_at(s.get("a", now=5.0), 4.0)


def test_a_branch_given_back_after_a_death_goes_to_the_front_of_the_queue(s: DirStore) -> None:
    s.create([new(f"t{i}") for i in range(5)], now=0.0)
    claim_one(s, "w1", now=1.0)  # t0
    s.release_owner("w1", now=2.0)
    assert [c.id for c in s.claim("w2", now=2.0, limit=2)] == ["t0", "t1"]


def test_a_re_run_after_a_backoff_goes_to_the_front_too(store_dir: Path, s: DirStore) -> None:
    s.create([new(f"t{i}") for i in range(5)], now=0.0)
    claim_one(s, "w1", now=1.0)
    s.release_owner("w1", now=2.0, decide=lambda *_: 1.0)
    assert claim_one(s, "w2", now=2.5).id == "t1"
    other = open_store(str(store_dir))  # reads the flag from the log, as another process would
    try:
        assert claim_one(other, "w3", now=3.0).id == "t0"
    finally:
        other.close()


def test_an_error_after_a_death_queues_at_the_back_again(s: DirStore) -> None:
    s.create([new(f"t{i}") for i in range(3)], now=0.0)
    claim_one(s, "w1", now=1.0)
    s.release_owner("w1", now=2.0)
    c = claim_one(s, "w2", now=2.0)
    s.retry(c.id, c.counter, delay=0.0, error=None, now=3.0)
    assert [c.id for c in s.claim("w2", now=3.0, limit=3)] == ["t1", "t2", "t0"]


# -- logs and snapshots written before these rules ------------------------------------------


def test_old_release_ops_and_task_records_still_read() -> None:
    state = StoreState()
    state.apply(["c", ["a", "pending", "f", [], None, {}, None, 0.0, None, None, 0], True])
    state.apply(["c", ["b", "pending", "f", [], None, {}, None, 0.0, None, None, 0], True])
    state.apply(["k", "a", "w1", 1, 30.0, 0.0])
    state.apply([RELEASE, "a", 0.0, 1, None, None, 1.0])  # seven fields: to the back, as before
    assert list(state.ready) == ["b", "a"]
    state.apply(["k", "b", "w1", 1, 30.0, 2.0])
    state.apply([RELEASE_OWNER, "w1", 3.0])
    assert list(state.ready) == ["a", "b"] and state.tasks["b"].attempt == 1
    old = TaskRecord.from_list(state.tasks["a"].to_list()[:11])
    assert old.front is False
    assert codec.unpack(codec.pack(StoreState.from_snapshot(state.to_snapshot()).to_snapshot())) == \
        state.to_snapshot()
