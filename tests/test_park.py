"""Parked tasks in the store: held with their error, unclaimable, made ready again on request.

Time is passed explicitly (`now=`), so nothing here sleeps.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import runner.store.replica as replica
from runner.errors import NotParked
from runner.parked import parked_in_run, resume
from runner.store import Claim, DirStore, NewPromise, NotFound, StaleClaim, State, TaskState, open_store

ERROR = {"type": "NonDeterminism", "message": "non-determinism in wf at child 0"}


@pytest.fixture
def s(store_dir: Path) -> Iterator[DirStore]:
    handle = open_store(str(store_dir))
    yield handle
    handle.close()


def parked_workflow(s: DirStore, pid: str = "wf", now: float = 1.0) -> Claim:
    s.create([NewPromise(pid, "wf")], now=now)
    claim = s.claim("w1", now=now)[0]
    s.park(pid, claim.counter, ERROR)
    return claim


def test_parking_ends_the_claim_and_holds_the_task_out_of_every_queue(s: DirStore) -> None:
    parked_workflow(s)

    task = s.task("wf")
    assert task is not None and task.state is TaskState.PARKED
    assert task.owner is None and task.expires_at is None and task.last_error == ERROR
    assert s.get("wf").state is State.PENDING  # parked, not rejected
    assert s.claims() == [] and s.claim("w2", now=100.0) == []
    assert s.release_owner("w1", now=2.0) == [] and s.expire(now=1000.0) == []
    assert s.task("wf").state is TaskState.PARKED
    assert s.stats(now=2.0).parked == 1 and [t.id for t in s.parked()] == ["wf"]


def test_a_stale_claim_cannot_park(s: DirStore) -> None:
    s.create([NewPromise("wf", "wf")], now=1.0)
    old = s.claim("w1", now=1.0, lease=1.0)[0]
    s.expire(now=5.0)
    s.claim("w2", now=5.0)
    with pytest.raises(StaleClaim):
        s.park("wf", old.counter, ERROR)
    assert s.task("wf").state is TaskState.CLAIMED


def test_unpark_makes_it_claimable_again_as_the_same_attempt(s: DirStore) -> None:
    first = parked_workflow(s)

    assert s.unpark("wf", now=2.0) == ["wf"]
    assert s.unpark("wf", now=2.0) == []  # only a parked task is unparked
    again = s.claim("w2", now=3.0)[0]
    assert again.id == "wf" and again.attempt == first.attempt and again.counter == first.counter + 1
    assert s.stats(now=3.0).parked == 0 and s.parked() == []


def test_unpark_of_none_resumes_every_parked_task(s: DirStore) -> None:
    parked_workflow(s, "a")
    parked_workflow(s, "b")
    s.create([NewPromise("c", "wf")], now=1.0)

    assert s.unpark(None, now=2.0) == ["a", "b"]
    assert sorted(c.id for c in s.claim("w", now=3.0, limit=10)) == ["a", "b", "c"]


def test_settling_a_parked_promise_clears_it(s: DirStore) -> None:
    parked_workflow(s)
    s.settle("wf", State.REJECTED_CANCELED, {"type": "Canceled", "message": "by hand"}, now=2.0)
    assert s.parked() == [] and s.task("wf") is None


def test_a_parked_task_survives_reopening_and_a_snapshot(store_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    with_park = open_store(str(store_dir))
    parked_workflow(with_park)
    with_park.close()
    reopened = open_store(str(store_dir))  # read back from the log
    assert [t.id for t in reopened.parked()] == ["wf"]
    monkeypatch.setattr(replica, "SEGMENT_BYTES", 4096)
    i = 0
    while reopened._log.segment < 2:
        reopened.create([NewPromise(f"p{i}", "f", ["x" * 200])], now=1.0)
        i += 1
    reopened.close()
    assert (store_dir / "snapshot").exists()
    from_snapshot = open_store(str(store_dir))
    try:
        task = from_snapshot.task("wf")
        assert task is not None and task.state is TaskState.PARKED and task.last_error == ERROR
        assert from_snapshot.unpark(None, now=2.0) == ["wf"]
    finally:
        from_snapshot.close()


def test_resume_refuses_an_unknown_or_unparked_promise(s: DirStore) -> None:
    parked_workflow(s)
    s.create([NewPromise("ready", "wf")], now=1.0)
    with pytest.raises(NotFound):
        resume(s, "nope")
    with pytest.raises(NotParked, match=r"'ready' is not parked \(it is pending, ready\)"):
        resume(s, "ready")
    resume(s, "wf")
    assert s.task("wf").state is TaskState.READY


def test_a_run_is_parked_when_any_workflow_below_its_root_is(s: DirStore) -> None:
    s.create([NewPromise("run", "wf"), NewPromise("run.0", "wf", parent="run"),
              NewPromise("run.0.1", "wf", parent="run.0"), NewPromise("run.x", "wf")], now=1.0)
    assert parked_in_run(s, "run") is None
    claims = {c.id: c for c in s.claim("w", now=1.0, limit=10)}
    s.park("run.x", claims["run.x"].counter, ERROR)  # a root of its own, whose id starts alike
    assert parked_in_run(s, "run") is None
    s.park("run.0.1", claims["run.0.1"].counter, ERROR)

    found = parked_in_run(s, "run")
    assert found is not None and found.parked_id == "run.0.1"
    assert str(found).startswith("run run is parked at run.0.1: non-determinism in wf at child 0;")
    assert "'runner promises retry run.0.1'" in str(found)
