"""Several supervisors on one PostgreSQL store.

The store's side first (store/pg/supervisors.py): beats on the server's clock, a retired
id that stays retired, one sweeper at a time whose lock goes with its connection, and
presence that ends with the connection while the row waits out its lapse. One handle
reaches the database through a TCP proxy the test cuts (tests/netproxy.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from runner.store import WORK, NewPromise, PromiseStore, StoreError, open_store
from tests.helpers import drop_pg_schema, new_pg_schema, pg_unreachable, wait_until
from tests.netproxy import LinkProxy

pytestmark = pytest.mark.skipif(pg_unreachable() is not None, reason=str(pg_unreachable()))

PG_HOST = ("127.0.0.1", 5432)


@pytest.fixture
def url() -> Iterator[str]:
    made = new_pg_schema()
    yield made
    drop_pg_schema(made)


@pytest.fixture
def handles(url: str) -> Iterator[list[PromiseStore]]:
    """Store handles the test opens; each closed at the end."""
    opened: list[PromiseStore] = []
    yield opened
    for store in opened:
        store.close()


def supervising(handles: list[PromiseStore], url: str, sid: str) -> PromiseStore:
    store = open_store(url)
    handles.append(store)
    assert store.shared and store.lock_supervisor()
    store.join_supervisor(sid)
    store.publish_supervisor({"id": sid})
    return store


def answer(call: Callable[[], bool]) -> bool:
    """The call's answer; False while the store cannot be reached (the first call after a
    lost connection fails, and the next one connects again)."""
    try:
        return call()
    except StoreError:
        return False


def test_beats_are_aged_on_the_servers_clock_and_a_retired_id_stays_retired(
        url: str, handles: list[PromiseStore]) -> None:
    a, b = supervising(handles, url, "a"), supervising(handles, url, "b")
    ages = b.supervisor_beats()
    assert ages.keys() == {"a", "b"} and all(0 <= age < 5 for age in ages.values())
    time.sleep(0.3)
    assert a.beat_supervisor("a")
    ages = b.supervisor_beats()
    assert ages["a"] < ages["b"] and ages["b"] >= 0.3

    assert b.retire_supervisor("a") is True
    assert b.retire_supervisor("a") is False  # only one retire gives its claims back
    assert a.beat_supervisor("a") is False  # its beat does not bring it back
    a.publish_supervisor({"id": "a", "late": True})  # nor does its description
    assert b.supervisor_beats().keys() == {"b"}
    assert [info["id"] for info in b.supervisors()] == ["b"]

    a.join_supervisor("a2")  # rejoining under a new id
    assert b.supervisor_beats().keys() == {"a2", "b"}


def test_one_sweeper_at_a_time_and_the_lock_goes_with_its_holders_connection(
        url: str, handles: list[PromiseStore]) -> None:
    a, b = supervising(handles, url, "a"), supervising(handles, url, "b")
    assert a.lock_sweeper(60) is True
    assert b.lock_sweeper(60) is False and a.lock_sweeper(60) is True  # held while a lives
    a.unlock_supervisor()  # a clean exit: retired, its locks dropped
    assert wait_until(lambda: b.lock_sweeper(60), timeout=5)
    assert b.supervisor_beats().keys() == {"b"}


def test_a_cut_link_ends_presence_and_the_sweep_lock_but_the_row_waits_out_its_lapse(
        url: str, handles: list[PromiseStore]) -> None:
    with LinkProxy(PG_HOST) as proxy:
        cut = supervising(handles, proxy.url(url), "cut")
        other = supervising(handles, url, "other")
        assert cut.lock_sweeper(60) is True and other.lock_sweeper(60) is False
        assert {info["id"] for info in other.supervisors()} == {"cut", "other"}

        proxy.cut()
        # The server ended the cut one's session, and its lock with it.
        assert wait_until(lambda: other.lock_sweeper(60), timeout=10)
        assert [info["id"] for info in other.supervisors()] == ["other"]
        assert "cut" in other.supervisor_beats()  # declared dead only once its lapse has passed
        with pytest.raises(StoreError):
            cut.beat_supervisor("cut")

        proxy.heal()
        # Back within its lapse: it carries on.
        assert wait_until(lambda: answer(lambda: cut.beat_supervisor("cut")), timeout=10)
        assert cut.lock_sweeper(60) is False  # the other sweeps now
        assert {info["id"] for info in other.supervisors()} == {"cut", "other"}  # present again


def test_a_blackholed_sweeper_loses_the_lock_once_its_beat_lapses(
        url: str, handles: list[PromiseStore]) -> None:
    lapse = 1.0
    with LinkProxy(PG_HOST) as proxy:
        held = supervising(handles, proxy.url(url), "held")
        other = supervising(handles, url, "other")
        assert held.lock_sweeper(lapse) is True
        proxy.blackhole()  # its connection stays open: the server keeps its session, and the lock
        blackholed_at = time.monotonic()
        assert other.lock_sweeper(lapse) is False
        assert wait_until(lambda: other.lock_sweeper(lapse), timeout=10)
        assert time.monotonic() - blackholed_at >= lapse - 0.5  # not before its beat lapsed
        assert other.retire_supervisor("held")
        proxy.heal()
        assert wait_until(lambda: answer(lambda: held.beat_supervisor("held") is False), timeout=10)
        assert held.lock_sweeper(lapse) is False


def test_a_watch_wakes_when_its_link_is_cut_and_listens_again_once_it_heals(
        url: str, handles: list[PromiseStore]) -> None:
    writer = open_store(url)
    handles.append(writer)
    with LinkProxy(PG_HOST) as proxy:
        watched = open_store(proxy.url(url))
        handles.append(watched)
        watch = watched.watch(WORK)
        try:
            proxy.cut()
            assert watch.wait(5) is True  # woken: what it missed must be read again
            assert watch.wait(0.6) is False  # then quiet while cut, without spinning
            proxy.heal()
            # Listening again, it wakes once more (for what happened while it was away), then
            # for a change committed after.
            assert watch.wait(5) is True
            writer.create([NewPromise("after-the-heal", "f")])
            assert wait_until(lambda: watch.wait(0.2), timeout=5)
        finally:
            watch.close()
