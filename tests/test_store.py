"""Unit tests of the promise store's public API, one behaviour each.

Time is always passed explicitly (`now=`), so nothing here sleeps.
"""

from __future__ import annotations

import itertools
import math
import os
import select
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import runner.store.directory as directory
import runner.store.replica as replica
from runner.store import (
    MAX_ID_BYTES,
    WORK,
    Completion,
    DirStore,
    InvalidId,
    NewPromise,
    NotFound,
    NotSerializable,
    StaleClaim,
    State,
    TaskState,
    codec,
    open_store,
)
from runner.store.directory import AFFINITY_GRACE

# -- helpers -----------------------------------------------------------------------


@pytest.fixture
def s(store_location: str) -> Iterator[DirStore]:
    """A store on each backend (a test that also asks for store_dir: the directory store only)."""
    handle = open_store(store_location)
    yield handle
    handle.close()


def new(pid: str, func: str = "f", **kw: Any) -> NewPromise:
    return NewPromise(pid, func, **kw)


def log_bytes(root: Path) -> bytes:
    """Everything in the log, in order: equal before and after means nothing was written."""
    return b"".join((root / "log" / name).read_bytes() for name in sorted(os.listdir(root / "log")))


def frame_count(root: Path) -> int:
    return sum(1 for _ in codec.frames(log_bytes(root)))


def same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (True is not 1, -0.0 is not 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def claim_one(s: DirStore, owner: str, now: float, **kw: Any) -> Any:
    claims = s.claim(owner, now=now, **kw)
    assert len(claims) == 1, claims
    return claims[0]


# -- create ------------------------------------------------------------------------


def test_create_returns_a_pending_record(s: DirStore) -> None:
    [p] = s.create([new("a", "send", args=[1, "x"], tags={"k": "v"}, timeout=50.0)], now=10.0)
    assert (p.id, p.state, p.func, p.args, p.tags, p.timeout) == ("a", State.PENDING, "send", [1, "x"],
                                                                  {"k": "v"}, 50.0)
    assert p.created_at == 10.0 and p.settled_at is None and p.value is None and p.parent is None
    assert s.get("a", now=10.0) == p
    task = s.task("a")
    assert task is not None and task.state is TaskState.READY and task.counter == 0 and task.attempt == 1


def test_create_is_idempotent_and_never_replaces(s: DirStore, store_dir: Path) -> None:
    [first] = s.create([new("a", "f", args=[1], tags={"t": 1})], now=1.0)
    before = log_bytes(store_dir)
    [again] = s.create([new("a", "g", args=[2], tags={"t": 2}, parent="p", timeout=9.0)], now=2.0)
    assert again == first
    assert log_bytes(store_dir) == before  # a create that changes nothing writes nothing
    s.settle("a", State.RESOLVED, "done", now=3.0)
    [settled] = s.create([new("a", "h")], now=4.0)
    assert settled.state is State.RESOLVED and settled.func == "f" and settled.value == "done"
    assert s.task("a") is None  # recreating a settled promise does not make it runnable again


def test_create_batch_is_one_frame_in_order_with_duplicates(s: DirStore, store_dir: Path) -> None:
    s.create([new("old", "x")], now=1.0)
    frames = frame_count(store_dir)
    out = s.create([new("b"), new("old", "y"), new("c", parent="b"), new("b", "z")], now=2.0)
    assert [p.id for p in out] == ["b", "old", "c", "b"]
    assert [p.func for p in out] == ["f", "x", "f", "f"]  # the first "b" of the batch wins
    assert frame_count(store_dir) == frames + 1
    assert [p.id for p in s.children("b")] == ["c"]


def test_create_not_runnable_has_no_task(s: DirStore) -> None:
    s.create([new("ext", runnable=False)], now=1.0)
    assert s.task("ext") is None
    assert s.claim("w1", now=2.0) == []
    assert s.settle("ext", State.RESOLVED, 5, now=3.0).value == 5


# -- get, children, search ---------------------------------------------------------------


def test_get_unknown_is_none_and_settle_unknown_is_not_found(s: DirStore) -> None:
    assert s.get("nope") is None and s.task("nope") is None and s.children("nope") == []
    with pytest.raises(NotFound):
        s.settle("nope", State.RESOLVED, 1, now=1.0)


def test_children_in_creation_order(s: DirStore) -> None:
    s.create([new("p"), new("p.1", parent="p"), new("q.0", parent="q")], now=1.0)
    s.create([new("p.0", parent="p"), new("p.0.0", parent="p.0")], now=2.0)
    assert [c.id for c in s.children("p")] == ["p.1", "p.0"]
    assert [c.id for c in s.children("p.0")] == ["p.0.0"]
    assert [c.id for c in s.children("q")] == ["q.0"]  # a parent need not exist


def test_search_filters(s: DirStore) -> None:
    s.create([new("run-1"), new("run-1.0", parent="run-1"), new("run-1.1", parent="run-1"),
              new("run-2"), new("other")], now=1.0)
    s.settle("run-1.0", State.RESOLVED, 1, now=2.0)
    s.settle("other", State.REJECTED, {"e": 1}, now=2.0)

    def ids(**kw: Any) -> list[str]:
        page = s.search(**kw)
        assert page.cursor is None
        return [p.id for p in page.items]

    assert ids() == ["run-1", "run-1.0", "run-1.1", "run-2", "other"]
    assert ids(state=State.PENDING) == ["run-1", "run-1.1", "run-2"]
    assert ids(state=State.REJECTED) == ["other"]
    assert ids(parent="run-1") == ["run-1.0", "run-1.1"]
    assert ids(parent="run-1", state=State.PENDING) == ["run-1.1"]
    assert ids(prefix="run-1") == ["run-1", "run-1.0", "run-1.1"]
    assert ids(prefix="run-1.", state=State.RESOLVED) == ["run-1.0"]
    assert ids(prefix="zzz") == []


@pytest.mark.parametrize("limit", [1, 3, 7, 25, 100])
def test_search_pages_through_everything_once(s: DirStore, limit: int) -> None:
    s.create([new(f"p{i:02d}", parent="root" if i % 2 else None) for i in range(25)], now=1.0)
    for i in range(0, 25, 3):
        s.settle(f"p{i:02d}", State.RESOLVED, i, now=2.0)

    def all_pages(**kw: Any) -> list[str]:
        seen: list[str] = []
        cursor: int | None = 0
        while cursor is not None:
            page = s.search(limit=limit, cursor=cursor, **kw)
            assert len(page.items) <= limit
            assert page.items or page.cursor is None
            seen += [p.id for p in page.items]
            cursor = page.cursor
        return seen

    everything = [f"p{i:02d}" for i in range(25)]
    assert all_pages() == everything
    assert all_pages(state=State.RESOLVED) == [f"p{i:02d}" for i in range(0, 25, 3)]
    assert all_pages(state=State.PENDING) == [f"p{i:02d}" for i in range(25) if i % 3]
    assert all_pages(parent="root") == [f"p{i:02d}" for i in range(1, 25, 2)]
    assert all_pages(parent="root", state=State.PENDING) == [f"p{i:02d}" for i in range(1, 25, 2) if i % 3]
    assert all_pages(prefix="p1") == [f"p{i}" for i in range(10, 20)]


# -- settle --------------------------------------------------------------------------------


@pytest.mark.parametrize("state", [State.RESOLVED, State.REJECTED, State.REJECTED_CANCELED,
                                   State.REJECTED_TIMEDOUT])
def test_settle_once_then_unchanged(s: DirStore, store_dir: Path, state: State) -> None:
    s.create([new("a")], now=1.0)
    p = s.settle("a", state, {"v": 1}, now=5.0)
    assert (p.state, p.value, p.settled_at) == (state, {"v": 1}, 5.0)
    assert s.task("a") is None
    before = log_bytes(store_dir)
    for other in State:
        if other.settled:
            assert s.settle("a", other, "something else", now=9.0) == p
    assert log_bytes(store_dir) == before
    assert s.get("a") == p


def test_settle_needs_a_final_state(s: DirStore) -> None:
    s.create([new("a")], now=1.0)
    with pytest.raises(ValueError):
        s.settle("a", State.PENDING, None, now=2.0)


def test_cancel_cascades_to_pending_descendants_only(s: DirStore) -> None:
    s.create([new("r"), new("r.0", parent="r"), new("r.1", parent="r"), new("r.0.0", parent="r.0"),
              new("r.0.1", parent="r.0", runnable=False), new("r.0.0.0", parent="r.0.0"),
              new("x"), new("x.0", parent="x")], now=1.0)
    s.settle("r.1", State.RESOLVED, "kept", now=2.0)
    s.settle("r.0.0", State.REJECTED, "failed", now=2.0)  # settled: its own child stays pending
    c = claim_one(s, "w1", now=2.5)
    assert c.id == "r"
    p = s.settle("r", State.REJECTED_CANCELED, "stop", now=3.0)
    assert p.state is State.REJECTED_CANCELED and p.value == "stop"
    assert s.get("r.0").state is State.REJECTED_CANCELED
    assert s.get("r.0.1").state is State.REJECTED_CANCELED
    assert s.get("r.0").value["type"] == "Canceled"
    assert s.get("r.0.0.0").state is State.REJECTED_CANCELED  # below a settled one, still pending
    assert (s.get("r.1").state, s.get("r.1").value) == (State.RESOLVED, "kept")
    assert (s.get("r.0.0").state, s.get("r.0.0").value) == (State.REJECTED, "failed")
    assert s.get("x").state is State.PENDING and s.get("x.0").state is State.PENDING
    assert all(s.task(i) is None for i in ("r", "r.0", "r.0.0.0"))
    with pytest.raises(StaleClaim):  # the worker that held "r" is fenced off
        s.complete("r", c.counter, State.RESOLVED, 1, now=4.0)
    assert {c.id for c in s.claim("w1", now=5.0, limit=10)} == {"x", "x.0"}


# -- claim, complete, heartbeat, release ---------------------------------------------------


def test_claim_gives_a_lease_and_a_fresh_counter(s: DirStore) -> None:
    s.create([new("a"), new("b")], now=1.0)
    c = claim_one(s, "w1", now=2.0, lease=10.0)
    assert (c.id, c.counter, c.attempt, c.owner, c.expires_at) == ("a", 1, 1, "w1", 12.0)
    assert c.promise == s.get("a")
    task = s.task("a")
    assert task is not None and (task.state, task.owner, task.counter, task.expires_at) == (
        TaskState.CLAIMED, "w1", 1, 12.0)
    d = claim_one(s, "w2", now=2.0)  # default lease
    assert (d.id, d.counter, d.expires_at) == ("b", 1, 2.0 + s.lease)
    assert s.claim("w3", now=2.0) == []
    assert {t.id for t in s.claims()} == {"a", "b"}
    s.release("a", c.counter, now=3.0)
    again = claim_one(s, "w2", now=4.0)
    assert (again.id, again.counter) == ("a", 2)


def test_claim_limit_oldest_first(s: DirStore) -> None:
    s.create([new(f"t{i}") for i in range(5)], now=1.0)
    assert [c.id for c in s.claim("w1", now=2.0, limit=3)] == ["t0", "t1", "t2"]
    assert [c.id for c in s.claim("w2", now=2.0, limit=3)] == ["t3", "t4"]
    assert s.claim("w1", now=2.0) == []


def test_complete_settles_and_releases(s: DirStore) -> None:
    s.create([new("a")], now=1.0)
    c = claim_one(s, "w1", now=2.0)
    p = s.complete("a", c.counter, State.RESOLVED, {"ok": True}, now=3.0,
                   creates=[new("a.0", parent="a", runnable=False)])
    assert (p.state, p.value, p.settled_at) == (State.RESOLVED, {"ok": True}, 3.0)
    assert s.task("a") is None and s.claims() == []
    assert s.get("a.0") is not None and s.get("a.0").parent == "a"
    with pytest.raises(StaleClaim):  # completing twice is refused
        s.complete("a", c.counter, State.RESOLVED, "again", now=4.0)
    assert s.get("a").value == {"ok": True}


def test_complete_with_a_stale_counter_changes_nothing(s: DirStore, store_dir: Path) -> None:
    s.create([new("a")], now=1.0)
    old = claim_one(s, "w1", now=2.0)
    s.release("a", old.counter, now=3.0)
    cur = claim_one(s, "w2", now=4.0)
    assert cur.counter == old.counter + 1
    before, task_before = log_bytes(store_dir), s.task("a")
    for counter in (old.counter, cur.counter + 1, 0, -1):
        with pytest.raises(StaleClaim) as info:
            s.complete("a", counter, State.RESOLVED, "zombie", now=5.0,
                       creates=[new("zombie-child", parent="a")])
        assert info.value.promise_id == "a" and info.value.counter == counter
    assert log_bytes(store_dir) == before
    assert s.task("a") == task_before and s.get("a").state is State.PENDING
    assert s.get("zombie-child") is None
    assert s.complete("a", cur.counter, State.RESOLVED, "real", now=6.0).value == "real"


def test_complete_many_is_one_frame_and_fences_each_on_its_own(s: DirStore, store_dir: Path) -> None:
    s.create([new("a"), new("b"), new("c")], now=1.0)
    claims = {c.id: c for c in s.claim("w1", now=2.0, limit=3)}
    s.release("b", claims["b"].counter, now=2.5)  # b's holder is fenced off
    frames = frame_count(store_dir)
    out = s.complete_many([Completion("a", claims["a"].counter, State.RESOLVED, 1),
                           Completion("b", claims["b"].counter, State.RESOLVED, 2),
                           Completion("c", claims["c"].counter, State.REJECTED, {"type": "E"})], now=3.0)
    assert frame_count(store_dir) == frames + 1
    assert isinstance(out[1], StaleClaim) and out[1].promise_id == "b"
    assert [s.get(i).state for i in "abc"] == [State.RESOLVED, State.PENDING, State.REJECTED]
    assert s.get("a").value == 1 and s.task("b").state is TaskState.READY


def test_complete_and_claim_settles_and_claims(s: DirStore) -> None:
    """Fenced as complete_many, claiming as claim; a parent the settles wake is claimed by this
    call or by the next (the directory store picks its claims before the settles apply)."""
    s.create([new("wf"), new("a"), new("b"), new("c")], now=1.0)
    wf = claim_one(s, "w1", now=1.5)
    assert s.suspend("wf", wf.counter, ["a"], now=1.6)
    claims = {c.id: c for c in s.claim("w1", now=2.0, limit=2)}
    assert set(claims) == {"a", "b"}
    s.release("b", claims["b"].counter, now=2.5)  # b's holder is fenced off
    out, got = s.complete_and_claim([Completion("a", claims["a"].counter, State.RESOLVED, 1),
                                     Completion("b", claims["b"].counter, State.RESOLVED, 2)],
                                    "w1", 5, now=3.0)
    assert out[0] == s.get("a") and isinstance(out[1], StaleClaim) and out[1].promise_id == "b"
    assert {"b", "c"} <= {c.id for c in got}
    assert all(c.owner == "w1" and c.counter == s.task(c.id).counter for c in got)  # type: ignore[union-attr]
    later = s.claim("w1", now=3.5)
    assert sorted(c.id for c in [*got, *later]) == ["b", "c", "wf"]


def test_complete_and_claim_never_claims_what_a_stale_completion_names_past_its_deadline(s: DirStore) -> None:
    s.create([new("a", timeout=5.0)], now=1.0)
    a = claim_one(s, "w1", now=2.0)
    s.release("a", a.counter, now=3.0)  # ready again; its old holder's completion is stale
    out, got = s.complete_and_claim([Completion("a", a.counter, State.RESOLVED, 1)], "w1", 1, now=6.0)
    assert isinstance(out[0], StaleClaim) and got == []
    assert s.get("a").state is State.REJECTED_TIMEDOUT  # type: ignore[union-attr]


def test_complete_and_claim_is_one_frame(s: DirStore, store_dir: Path) -> None:
    s.create([new("a"), new("b")], now=1.0)
    a = claim_one(s, "w1", now=2.0)
    frames = frame_count(store_dir)
    out, got = s.complete_and_claim([Completion("a", a.counter, State.RESOLVED, 1)], "w1", 1, now=3.0)
    assert frame_count(store_dir) == frames + 1
    assert out[0] == s.get("a") and [c.id for c in got] == ["b"]


def test_complete_on_a_ready_or_unknown_task_is_stale(s: DirStore) -> None:
    s.create([new("a")], now=1.0)
    with pytest.raises(StaleClaim):
        s.complete("a", 0, State.RESOLVED, 1, now=2.0)
    with pytest.raises(StaleClaim):
        s.complete("nope", 1, State.RESOLVED, 1, now=2.0)


def test_heartbeat_extends_every_lease_of_its_owner(s: DirStore, store_dir: Path) -> None:
    s.create([new("a"), new("b"), new("c")], now=0.0)
    s.claim("w1", now=0.0, limit=2, lease=10.0)
    claim_one(s, "w2", now=0.0, lease=10.0)
    assert s.heartbeat("w1", now=8.0, lease=10.0) == 2
    assert s.task("a").expires_at == 18.0 and s.task("b").expires_at == 18.0
    assert s.task("c").expires_at == 10.0
    assert s.expire(now=15.0) == ["c"]  # w2 did not heartbeat
    assert s.expire(now=17.9) == []
    assert sorted(s.expire(now=18.0)) == ["a", "b"]
    before = log_bytes(store_dir)
    assert s.heartbeat("w1", now=19.0) == 0 and s.heartbeat("nobody", now=19.0) == 0
    assert log_bytes(store_dir) == before


def test_a_heartbeat_may_shorten_a_lease(s: DirStore) -> None:
    s.create([new("a")], now=0.0)
    claim_one(s, "w1", now=0.0, lease=100.0)
    assert s.heartbeat("w1", now=1.0, lease=2.0) == 1
    assert s.task("a").expires_at == 3.0
    assert s.expire(now=3.0) == ["a"]  # not only at 100


def test_a_task_claimed_twice_expires_once(s: DirStore) -> None:
    s.create([new("a")], now=0.0)
    c = claim_one(s, "w1", now=0.0, lease=5.0)
    s.release("a", c.counter, now=1.0)
    claim_one(s, "w2", now=1.0, lease=10.0)
    assert s.expire(now=6.0) == []  # the first lease's deadline: no longer the task's
    assert s.expire(now=11.0) == ["a"]
    assert s.task("a").state is TaskState.READY and s.expire(now=50.0) == []


def test_release_fences_the_old_holder(s: DirStore) -> None:
    s.create([new("a")], now=1.0)
    c = claim_one(s, "w1", now=2.0)
    s.release("a", c.counter, now=3.0)
    task = s.task("a")
    assert task is not None and (task.state, task.owner, task.expires_at) == (TaskState.READY, None, None)
    for call in (lambda: s.release("a", c.counter, now=4.0),
                 lambda: s.complete("a", c.counter, State.RESOLVED, 1, now=4.0),
                 lambda: s.retry("a", c.counter, delay=0, error=None, now=4.0),
                 lambda: s.suspend("a", c.counter, ["x"], now=4.0)):
        with pytest.raises(StaleClaim):
            call()
    d = claim_one(s, "w2", now=5.0)
    with pytest.raises(StaleClaim):
        s.complete("a", c.counter, State.RESOLVED, 1, now=6.0)
    assert s.complete("a", d.counter, State.RESOLVED, 2, now=6.0).value == 2


def test_release_owner_gives_back_only_that_owners_claims(s: DirStore, store_dir: Path) -> None:
    s.create([new(f"t{i}") for i in range(4)], now=1.0)
    w1 = s.claim("w1", now=2.0, limit=2)
    [w2] = s.claim("w2", now=2.0)
    assert sorted(s.release_owner("w1", now=3.0)) == sorted(c.id for c in w1)
    assert [t.id for t in s.claims()] == [w2.id]
    before = log_bytes(store_dir)
    assert s.release_owner("w1", now=3.5) == []
    assert s.release_owner("ghost", now=3.5) == []
    assert log_bytes(store_dir) == before
    again = s.claim("w3", now=4.0, limit=5)
    assert {c.id for c in again} == {c.id for c in w1} | {"t3"}
    for c in w1:
        with pytest.raises(StaleClaim):
            s.complete(c.id, c.counter, State.RESOLVED, "late", now=5.0)
    assert s.task(w2.id).owner == "w2"


def test_release_owner_none_releases_everyone(s: DirStore) -> None:
    s.create([new(f"t{i}") for i in range(3)], now=1.0)
    for owner in ("w1", "w2", "w3"):
        claim_one(s, owner, now=2.0)
    assert sorted(s.release_owner(None, now=3.0)) == ["t0", "t1", "t2"]
    assert s.claims() == []
    assert len(s.claim("w4", now=4.0, limit=10)) == 3


# -- expire, retry ---------------------------------------------------------------------


def test_expire_releases_leases_past_their_deadline(s: DirStore) -> None:
    s.create([new("a"), new("b")], now=0.0)
    a = claim_one(s, "w1", now=0.0, lease=5.0)
    claim_one(s, "w1", now=0.0, lease=50.0)
    assert s.expire(now=4.9) == []
    assert s.expire(now=5.0) == ["a"]
    assert s.task("a").state is TaskState.READY and s.task("b").state is TaskState.CLAIMED
    with pytest.raises(StaleClaim):
        s.complete("a", a.counter, State.RESOLVED, 1, now=6.0)
    assert claim_one(s, "w2", now=6.0).counter == a.counter + 1


def test_expire_times_out_pending_promises(s: DirStore) -> None:
    s.create([new("a", timeout=100.0), new("b", timeout=100.0), new("c", timeout=200.0),
              new("d", timeout=100.0, runnable=False)], now=0.0)
    s.settle("b", State.RESOLVED, "in time", now=50.0)
    c = claim_one(s, "w1", now=60.0, lease=1000.0)  # "a" is oldest
    assert c.id == "a"
    assert s.expire(now=99.0) == []
    assert sorted(s.expire(now=101.0)) == ["a", "d"]
    for pid in ("a", "d"):
        p = s.get(pid, now=101.0)
        assert p.state is State.REJECTED_TIMEDOUT and p.settled_at == 100.0  # at the deadline, not at 101
        assert p.value["type"] == "TimeoutError"
        assert s.task(pid) is None
    assert s.get("b").state is State.RESOLVED and s.get("c", now=101.0).state is State.PENDING
    with pytest.raises(StaleClaim):
        s.complete("a", c.counter, State.RESOLVED, "too late", now=102.0)
    assert s.expire(now=150.0) == []


def test_retry_delays_the_next_attempt(s: DirStore) -> None:
    s.create([new("a")], now=0.0)
    c = claim_one(s, "w1", now=10.0)
    err = {"type": "ValueError", "message": "boom"}
    s.retry("a", c.counter, delay=5.0, error=err, now=10.0)
    task = s.task("a")
    assert task is not None and (task.state, task.attempt, task.last_error, task.owner) == (
        TaskState.READY, 2, err, None)
    assert s.claim("w1", now=14.99) == []
    assert s.stats(now=14.0).delayed == 1
    with pytest.raises(StaleClaim):
        s.complete("a", c.counter, State.RESOLVED, 1, now=12.0)
    d = claim_one(s, "w2", now=15.0)
    assert (d.counter, d.attempt) == (c.counter + 1, 2)
    s.retry("a", d.counter, delay=0, error="again", now=16.0)
    e = claim_one(s, "w2", now=16.0)  # no delay: claimable at once
    assert (e.attempt, s.task("a").last_error) == (3, "again")


# -- suspend, callbacks, affinity --------------------------------------------------------


def test_suspend_returns_false_when_something_awaited_is_settled(s: DirStore) -> None:
    s.create([new("p"), new("p.0", parent="p", runnable=False), new("p.1", parent="p", runnable=False)],
             now=0.0)
    s.settle("p.0", State.RESOLVED, 1, now=1.0)
    c = claim_one(s, "w1", now=2.0)
    assert s.suspend("p", c.counter, ["p.1", "p.0"], now=3.0) is False
    task = s.task("p")
    assert task is not None and (task.state, task.counter, task.owner) == (TaskState.CLAIMED, c.counter, "w1")
    assert s.complete("p", c.counter, State.RESOLVED, "done", now=4.0).state is State.RESOLVED


def test_suspend_waits_and_one_settle_wakes_exactly_once(s: DirStore) -> None:
    s.create([new("p")], now=0.0)
    c = claim_one(s, "w1", now=1.0)
    kids = [new(f"p.{i}", parent="p", runnable=False) for i in range(3)]
    assert s.suspend("p", c.counter, ["p.0", "p.1", "p.2"], now=2.0, creates=kids) is True
    assert [k.id for k in s.children("p")] == ["p.0", "p.1", "p.2"]
    task = s.task("p")
    assert task is not None and (task.state, task.owner, task.awaiting) == (
        TaskState.WAITING, None, ("p.0", "p.1", "p.2"))
    assert s.claim("w1", now=3.0) == [] and s.stats(now=3.0).waiting == 1
    with pytest.raises(StaleClaim):  # a waiting workflow is held by no one
        s.complete("p", c.counter, State.RESOLVED, 1, now=3.0)
    s.settle("p.1", State.RESOLVED, "one", now=4.0)
    assert s.task("p").state is TaskState.READY and s.task("p").awaiting == ()
    s.settle("p.0", State.RESOLVED, "zero", now=4.5)  # a second settle wakes no one twice
    d = claim_one(s, "w2", now=5.0)
    assert d.counter == c.counter + 1
    s.settle("p.2", State.RESOLVED, "two", now=6.0)  # settled while p is claimed: p stays claimed
    assert s.task("p").state is TaskState.CLAIMED and s.task("p").counter == d.counter
    assert s.claim("w3", now=7.0) == []


def test_a_runnable_child_settled_by_complete_wakes_its_parent(s: DirStore) -> None:
    s.create([new("p")], now=0.0)
    c = claim_one(s, "w1", now=1.0)
    assert s.suspend("p", c.counter, ["p.0"], now=2.0, creates=[new("p.0", parent="p")])
    child = claim_one(s, "w2", now=3.0)
    assert child.id == "p.0"
    s.complete("p.0", child.counter, State.RESOLVED, 42, now=4.0)
    assert claim_one(s, "w2", now=5.0).id == "p"


def test_a_timed_out_child_wakes_its_parent(s: DirStore) -> None:
    s.create([new("p")], now=0.0)
    c = claim_one(s, "w1", now=1.0)
    assert s.suspend("p", c.counter, ["p.0"], now=2.0,
                     creates=[new("p.0", parent="p", runnable=False, timeout=10.0)])
    assert s.expire(now=11.0) == ["p.0"]
    assert claim_one(s, "w2", now=12.0).id == "p"


def test_affinity_prefers_the_suspending_worker_for_a_grace(s: DirStore) -> None:
    s.create([new("older")], now=0.0)
    s.create([new("p")], now=0.5)
    older = claim_one(s, "w9", now=0.5)
    c = claim_one(s, "w1", now=1.0)
    assert c.id == "p"
    kid = new("p.0", parent="p", runnable=False)
    assert s.suspend("p", c.counter, ["p.0"], now=2.0, creates=[kid], affinity="w1")
    s.release("older", older.counter, now=3.0)
    s.settle("p.0", State.RESOLVED, 1, now=10.0)
    assert s.task("p").affinity == "w1"
    assert [x.id for x in s.claim("w2", now=10.0, limit=5)] == ["older"]  # not p, during the grace
    assert s.claim("w2", now=10.0 + AFFINITY_GRACE * 0.5) == []
    assert [x.id for x in s.claim("w1", now=10.0)] == ["p"]


def test_affinity_lapses_after_the_grace(s: DirStore) -> None:
    s.create([new("p")], now=0.0)
    c = claim_one(s, "w1", now=1.0)
    assert s.suspend("p", c.counter, ["p.0"], now=2.0, creates=[new("p.0", parent="p", runnable=False)],
                     affinity="w1")
    s.settle("p.0", State.RESOLVED, 1, now=10.0)
    assert s.claim("w2", now=10.0 + AFFINITY_GRACE - 0.01) == []
    assert claim_one(s, "w2", now=10.0 + AFFINITY_GRACE).id == "p"


def test_release_owner_drops_affinity_at_once(s: DirStore) -> None:
    s.create([new("p")], now=0.0)
    c = claim_one(s, "w1", now=1.0)
    assert s.suspend("p", c.counter, ["p.0"], now=2.0, creates=[new("p.0", parent="p", runnable=False)],
                     affinity="w1")
    s.settle("p.0", State.RESOLVED, 1, now=10.0)
    assert s.claim("w2", now=10.0) == []
    s.release_owner("w1", now=10.0)  # w1 died: nobody will resume p from memory
    assert claim_one(s, "w2", now=10.0).id == "p"


# -- values -------------------------------------------------------------------------------

SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(2**300), max_value=2**300)
           | st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, -(2**64)])
           | st.floats() | st.text() | st.binary())
VALUES = st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=4)
                      | st.dictionaries(st.text(max_size=6), kids, max_size=4), max_leaves=16)


def test_values_round_trip_exactly(tmp_path: Path) -> None:
    root = tmp_path / "s"
    s = open_store(str(root))
    ids = itertools.count()

    @settings(max_examples=60, deadline=None)
    @given(value=VALUES)
    def check(value: Any) -> None:
        pid = f"v{next(ids)}"
        s.create([new(pid, args=[value, value], tags={"t": value})], now=1.0)
        c = claim_one(s, "w", now=2.0)
        s.complete(pid, c.counter, State.RESOLVED, value, now=3.0)
        other = open_store(str(root))  # read back from disk, as another process would
        try:
            for p in (s.get(pid), other.get(pid)):
                assert p is not None
                assert same(p.value, value) and same(p.args, [value, value]) and same(p.tags, {"t": value})
        finally:
            other.close()

    try:
        check()
    finally:
        s.close()


@pytest.mark.parametrize("value", [{1: "int key"}, {b"k": "bytes key"}, {None: 0}, [[], {}, ""],
                                   "\U0001f600 \x00 nul", 2**1000, -(2**1000), 1e308, -0.0])
def test_odd_but_storable_values(s: DirStore, store_dir: Path, value: Any) -> None:
    s.create([new("a")], now=1.0)
    s.settle("a", State.RESOLVED, value, now=2.0)
    other = open_store(str(store_dir))
    assert same(other.get("a").value, value)
    other.close()


class Opaque:
    pass


NOT_SERIALIZABLE = [{1, 2}, Opaque(), [1, {"x": Opaque}], {"a": frozenset()}, 1j, "\ud800",
                    {(1, 2): "tuple key"}, [{("nested", "tuple"): 1}]]


@pytest.mark.parametrize("value", NOT_SERIALIZABLE, ids=repr)
def test_non_serialisable_values_are_refused_and_write_nothing(s: DirStore, store_dir: Path,
                                                               value: Any) -> None:
    s.create([new("a"), new("b")], now=1.0)
    c = claim_one(s, "w1", now=2.0)
    before = log_bytes(store_dir)
    calls = [
        lambda: s.create([new("x", args=[value])], now=3.0),
        lambda: s.create([new("y", tags={"t": value})], now=3.0),
        lambda: s.settle("b", State.RESOLVED, value, now=3.0),
        lambda: s.complete("a", c.counter, State.RESOLVED, value, now=3.0),
        lambda: s.complete("a", c.counter, State.RESOLVED, 1, now=3.0, creates=[new("z", args=[value])]),
        lambda: s.retry("a", c.counter, delay=0, error=value, now=3.0),
        lambda: s.suspend("a", c.counter, ["b"], now=3.0, creates=[new("z", args=[value])]),
    ]
    for call in calls:
        with pytest.raises(NotSerializable):
            call()
    assert log_bytes(store_dir) == before
    assert s.get("x") is None and s.get("y") is None and s.get("z") is None
    assert s.get("b").state is State.PENDING
    assert s.task("a").state is TaskState.CLAIMED and s.task("a").counter == c.counter
    other = open_store(str(store_dir))  # and the store still opens
    assert other.get("a") == s.get("a")
    other.close()


# -- ids ----------------------------------------------------------------------------------

HOSTILE_IDS = ["../x", "../../etc/passwd", "a/b", "/abs", "\x00", "a\x00b", "A", "a", ".", "..", "~",
               "lock", "FORMAT", "snapshot", "log", "log/00000001.seg", " ", "\n", "\\", "*",
               "\U0001f525\U0001f600", "x" * MAX_ID_BYTES, "\u00e9" * (MAX_ID_BYTES // 2),
               "\U0001f600" * (MAX_ID_BYTES // 4)]


def test_hostile_ids_are_stored_exactly_and_inside_the_store(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    root = tmp_path / "deep" / "store"
    s = open_store(str(root))
    created = s.create([new(pid, args=[pid], parent=pid) for pid in HOSTILE_IDS], now=1.0)
    assert [p.id for p in created] == HOSTILE_IDS
    for pid in HOSTILE_IDS:
        s.settle(pid, State.RESOLVED, pid, now=2.0)
    s.close()
    other = open_store(str(root))
    for pid in HOSTILE_IDS:
        p = other.get(pid)
        assert p is not None and p.id == pid and p.value == pid and p.args == [pid]
        assert [c.id for c in other.children(pid)] == [pid]
    assert len(other.search(limit=1000).items) == len(HOSTILE_IDS)
    assert other.get("A").value == "A" and other.get("a").value == "a"
    other.close()
    # Nothing anywhere but the store's own files.
    tree = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert [t for t in tree if not t.startswith("deep/store/")] == ["cwd", "deep", "deep/store"]
    inside = {t.removeprefix("deep/store/") for t in tree if t.startswith("deep/store/")}
    assert inside == {"FORMAT", "lock", "log", "log/00000001.seg", "wake", "wake/settled", "wake/created"}


BAD_IDS = ["", "x" * (MAX_ID_BYTES + 1), "\u00e9" * (MAX_ID_BYTES // 2 + 1), "\ud800", "a\udfffb",
           None, 5, b"bytes", ["a"]]


@pytest.mark.parametrize("bad", BAD_IDS, ids=lambda b: repr(b)[:20])
def test_invalid_ids_are_refused_and_write_nothing(s: DirStore, store_dir: Path, bad: Any) -> None:
    s.create([new("ok")], now=1.0)
    before = log_bytes(store_dir)
    with pytest.raises(InvalidId):
        s.create([new(bad)], now=2.0)
    if bad is not None:  # None is "no parent"
        with pytest.raises(InvalidId):
            s.create([new("fine"), new("child", parent=bad)], now=2.0)
    with pytest.raises(InvalidId):
        directory.check_id(bad)
    assert log_bytes(store_dir) == before
    assert s.get("fine") is None


def test_invalid_ids_in_creates_are_refused(s: DirStore, store_dir: Path) -> None:
    s.create([new("p")], now=1.0)
    c = claim_one(s, "w1", now=2.0)
    before = log_bytes(store_dir)
    with pytest.raises(InvalidId):
        s.suspend("p", c.counter, ["p.0"], now=3.0, creates=[new("x" * (MAX_ID_BYTES + 1))])
    with pytest.raises(InvalidId):
        s.complete("p", c.counter, State.RESOLVED, 1, now=3.0, creates=[new("")])
    with pytest.raises(InvalidId):
        s.complete("p", c.counter, State.RESOLVED, 1, now=3.0, creates=[new("p.0", parent="\ud800")])
    assert log_bytes(store_dir) == before


# -- several handles, files, watch ---------------------------------------------------------


def test_a_second_handle_sees_the_first_ones_writes(s: DirStore, store_dir: Path) -> None:
    other = open_store(str(store_dir))
    try:
        s.create([new("a"), new("b")], now=1.0)
        assert other.get("a") == s.get("a")
        c = claim_one(other, "w2", now=2.0)
        assert s.task(c.id).owner == "w2"
        with pytest.raises(StaleClaim):  # s cannot claim what other holds
            s.complete(c.id, c.counter + 1, State.RESOLVED, 1, now=3.0)
        assert claim_one(s, "w1", now=2.0).id != c.id
        other.complete(c.id, c.counter, State.RESOLVED, "from other", now=3.0)
        assert s.get(c.id).value == "from other"
        s.close()
        s.close()  # closing twice is harmless
        third = open_store(str(store_dir))  # reopened from disk: identical
        assert third.search(limit=10) == other.search(limit=10)
        assert third.claims() == other.claims()
        third.close()
    finally:
        other.close()


def test_modes_are_0700_and_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        root = tmp_path / "s"
        s = open_store(str(root))
        s.create([new("a")], now=1.0)
        s.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    for path in root.rglob("*"):
        want = 0o700 if path.is_dir() else 0o600
        assert stat.S_IMODE(path.stat().st_mode) == want, path


def test_watch_turns_readable_when_another_handle_writes(s: DirStore, store_dir: Path) -> None:
    w = s.watch(WORK)
    other = open_store(str(store_dir))
    try:
        w.drain()
        assert w.wait(0) is False
        other.create([new("a")], now=1.0)
        readable, _, _ = select.select([w.fileno()], [], [], 10.0)
        assert readable
        assert w.wait(10.0) is True  # drains
        assert w.wait(0) is False
        s.refresh()
        assert s.get("a") is not None
    finally:
        w.close()
        other.close()


def test_stats_counts(s: DirStore) -> None:
    s.create([new("a"), new("b"), new("c"), new("d", runnable=False)], now=0.0)
    ca = claim_one(s, "w1", now=1.0)
    cb = claim_one(s, "w1", now=1.0)
    s.retry(cb.id, cb.counter, delay=10.0, error=None, now=1.0)
    s.settle("d", State.RESOLVED, 1, now=1.0)
    st_ = s.stats(now=2.0)
    assert st_.by_state["pending"] == 3 and st_.by_state["resolved"] == 1
    assert (st_.ready, st_.claimed, st_.waiting, st_.delayed) == (1, 1, 0, 1)
    s.settle(cb.id, State.RESOLVED, 1, now=3.0)  # a settled promise is no longer delayed
    s.complete(ca.id, ca.counter, State.RESOLVED, 1, now=3.0)
    st_ = s.stats(now=4.0)
    assert (st_.ready, st_.claimed, st_.waiting, st_.delayed) == (1, 0, 0, 0)


# -- regressions --------------------------------------------------------------------------


def test_an_idle_reader_catches_up_across_several_compactions(store_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A handle that sleeps while the log is compacted twice must not stay on a deleted segment."""
    monkeypatch.setattr(replica, "SEGMENT_BYTES", 4096)
    writer, reader = open_store(str(store_dir)), open_store(str(store_dir))
    try:
        writer.create([new("first")], now=0.0)
        assert reader.get("first") is not None
        i = 0
        while writer._log.segment < 4:
            writer.create([new(f"p{i}", args=["x" * 200])], now=1.0)
            i += 1
        assert not (store_dir / "log" / "00000001.seg").exists()
        assert len(reader.search(limit=10_000).items) == i + 1
        c = claim_one(reader, "r", now=2.0)  # and it claims what is really free
        assert c.id == "first" and c.counter == 1
        assert writer.task("first").owner == "r"
    finally:
        writer.close()
        reader.close()


def test_a_read_syncs_what_another_writer_may_have_left_unsynced(
        s: DirStore, store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = DirStore(store_dir)
    other.create([new("a")], now=1.0)  # stands for a writer killed before its sync
    other.close()
    segment = (store_dir / "log" / "00000001.seg").stat().st_ino
    synced: list[int] = []
    monkeypatch.setattr(os, "fdatasync", lambda fd: synced.append(fd))
    assert s.get("a") is not None  # read, and synced before it was answered
    assert len(synced) == 1 and os.fstat(synced[0]).st_ino == segment
