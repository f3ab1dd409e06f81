"""Shared supervision's decisions, against an in-memory shared store with a hand-moved clock.

Who is declared dead, whose claims go back, that a retired id stays retired: the
rules, without processes. tests/test_pg_supervisors.py proves them on PostgreSQL with
real supervisors, SIGKILL and a cut network link.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from runner.owners import owner_id, owner_pid, owner_supervisor
from runner.shared import BEATS_PER_LAPSE, SharedSupervision
from runner.store import DirStore, StoreUnavailable, Task, TaskState
from tests.helpers import run_cli, wait_until

LAPSE = 4.0


def psutil_gone_pid() -> int:
    """The pid of a process that ran and was reaped (too recent to be anyone's yet)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


class FakeShared:
    """The SharedSupervisors calls over dicts; time is `now`, moved by the test."""

    shared = True

    def __init__(self) -> None:
        self.now = 0.0
        self.beats: dict[str, float] = {}
        self.owned: dict[str, str] = {}  # promise id -> owner
        self.released: list[tuple[str, str | None]] = []  # (owner, how)
        self.infos: dict[str, dict[str, Any]] = {}  # what each supervisor last published
        self.lost: set[str] = set()  # ids whose connection is gone
        self.down = False
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def _up(self) -> None:
        if self.down:
            raise StoreUnavailable("connection refused")

    def join_supervisor(self, sid: str) -> None:
        self._up()
        self.beats[sid] = self.now

    def beat_supervisor(self, sid: str) -> bool:
        self._up()
        if sid not in self.beats:
            return False
        self.beats[sid] = self.now
        return True

    def supervisor_beats(self) -> dict[str, float]:
        self._up()
        return {sid: self.now - beat for sid, beat in self.beats.items()}

    def lost_supervisors(self) -> list[dict[str, Any]]:
        self._up()
        return [self.infos[sid] for sid in sorted(self.lost) if sid in self.beats]

    def retire_supervisor(self, sid: str) -> dict[str, Any] | None:
        self._up()
        return self.infos.get(sid, {"id": sid}) if self.beats.pop(sid, None) is not None else None

    def claims(self) -> list[Task]:
        self._up()
        return [Task(pid, TaskState.CLAIMED, 1, 1, owner, self.now + 30, 0.0, (), None, None, self.now)
                for pid, owner in self.owned.items()]

    def release_owner(self, owner: str | None, *, how: str | None = None, **_: Any) -> list[str]:
        self._up()
        held = sorted(pid for pid, who in self.owned.items() if who == owner)
        for pid in held:
            del self.owned[pid]
        self.released.append((str(owner), how))
        return held


class Handle:
    """One supervisor's connection to the FakeShared: it holds the sweep lock or not."""

    def __init__(self, store: FakeShared, sweeper: bool) -> None:
        self._store = store
        self._sweeper = sweeper

    def lock_sweeper(self, lapse: float) -> bool:
        self._store._up()
        return self._sweeper

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def supervision(store: FakeShared, *, sweeper: bool = False) -> SharedSupervision:
    handle = Handle(store, sweeper)
    shared = SharedSupervision(handle, LAPSE, lambda *_: 0.0, clock=lambda: store.now)  # type: ignore[arg-type]
    shared.join()
    return shared


def advance(store: FakeShared, seconds: float, *beating: SharedSupervision) -> None:
    """Move the clock in small steps, each supervisor in `beating` beating (as its thread
    would, every quarter of the lapse) and ticking as it goes."""
    end = store.now + seconds
    while store.now < end:
        store.now = min(end, store.now + 0.25)
        for shared in beating:
            if store.now % (LAPSE / BEATS_PER_LAPSE) < 0.25:
                shared.beat(shared.store)
            assert shared.tick()


def test_owner_ids_carry_the_supervisor_id() -> None:
    me = os.getpid()
    owner = owner_id(me, "abc123")
    assert owner.startswith(owner_id(me) + "+") and owner_supervisor(owner) == "abc123"
    assert owner_pid(owner) == me
    assert owner_supervisor(owner_id(me)) is None and owner_supervisor(None) is None


def test_a_lapsed_supervisors_claims_go_back_once_and_the_live_ones_keep_theirs() -> None:
    store = FakeShared()
    sweeper, quiet, busy = supervision(store, sweeper=True), supervision(store), supervision(store)
    store.owned = {"r.0": quiet.owner(os.getpid()), "r.1": busy.owner(os.getpid()),
                   "r.2": sweeper.owner(os.getpid())}
    advance(store, LAPSE - 0.5, sweeper, busy)  # `quiet` stops beating: not lapsed yet
    assert quiet.sid in store.beats and len(store.owned) == 3

    advance(store, 1.0, sweeper, busy)
    assert quiet.sid not in store.beats  # retired
    assert sorted(store.owned) == ["r.1", "r.2"]
    assert store.released == [(quiet.owner(os.getpid()), f"its supervisor {quiet.sid} was declared dead")]
    advance(store, 2.0, sweeper, busy)
    assert len(store.released) == 1  # once


def test_a_dead_supervisors_workers_are_given_back_even_holding_no_claim() -> None:
    store = FakeShared()
    sweeper, quiet = supervision(store, sweeper=True), supervision(store)
    idle = quiet.owner(os.getpid())  # it may keep a waiting workflow in memory (affinity)
    store.infos[quiet.sid] = {"id": quiet.sid, "owners": {str(os.getpid()): idle}}
    advance(store, LAPSE + 0.5, sweeper)
    assert [owner for owner, _ in store.released] == [idle]


def test_one_seen_dead_on_this_host_is_retired_at_once_one_cut_off_waits_out_its_lapse() -> None:
    store = FakeShared()
    sweeper = supervision(store, sweeper=True)
    gone_pid = psutil_gone_pid()
    here = socket.gethostname()
    peers = [("dead", gone_pid, here), ("alive", os.getpid(), here), ("elsewhere", gone_pid, "other")]
    for sid, pid, host in peers:
        store.beats[sid] = store.now
        store.infos[sid] = {"id": sid, "pid": pid, "host": host, "started": time.time()}
        store.lost.add(sid)
    advance(store, 0.5, sweeper)
    assert set(store.beats) == {sweeper.sid, "alive", "elsewhere"}  # seen dead, not guessed
    advance(store, LAPSE, sweeper)
    assert set(store.beats) == {sweeper.sid}  # the others waited out their lapse


def test_only_the_sweeper_declares_the_dead() -> None:
    store = FakeShared()
    other, quiet = supervision(store), supervision(store)
    store.owned = {"r.0": quiet.owner(1)}
    advance(store, LAPSE * 2, other)
    assert not other.sweeping and quiet.sid in store.beats and store.owned


def test_a_retired_supervisor_finds_out_at_its_next_beat_and_rejoins_under_a_new_id() -> None:
    store = FakeShared()
    sweeper, cut = supervision(store, sweeper=True), supervision(store)
    old = cut.sid
    advance(store, LAPSE + 0.5, sweeper)  # `cut` cannot beat
    assert old not in store.beats
    store.now += LAPSE / BEATS_PER_LAPSE
    cut.beat(cut.store)
    assert cut.tick() is False  # its beat does not bring it back
    assert old not in store.beats
    assert cut.rejoin() == old and cut.sid != old and cut.sid in store.beats


def test_claims_of_a_retired_supervisors_workers_taken_after_the_retirement_go_back() -> None:
    store = FakeShared()
    sweeper = supervision(store, sweeper=True)
    advance(store, 1.0, sweeper)
    store.owned["r.5"] = "4242@1.00+deadbeef0000"  # no such live supervisor
    store.owned["r.6"] = "4243@1.00"  # nor any at all
    store.owned["r.7"] = sweeper.owner(os.getpid())
    advance(store, 1.25, sweeper)
    assert sorted(store.owned) == ["r.7"]


@pytest.mark.parametrize("sweeper", [True, False])
def test_a_store_out_of_reach_is_waited_out(sweeper: bool) -> None:
    store = FakeShared()
    shared = supervision(store, sweeper=sweeper)
    advance(store, 1.0, shared)
    store.down = True
    store.now += LAPSE
    shared.beat(shared.store)  # fails, and is said so
    assert shared.tick() is True and not shared.sweeping
    store.down = False
    store.now += 1.0
    assert shared.tick() is True and shared.sweeping is sweeper


def test_the_directory_store_has_one_supervisor_who_sweeps_alone(tmp_path: Path) -> None:
    store = DirStore(tmp_path / "store")
    try:
        assert store.shared is False and store.supervisors() == []
        assert store.lock_supervisor()
        store.publish_supervisor({"pid": os.getpid()})
        store.join_supervisor("abc")
        assert store.beat_supervisor("abc") and store.lock_sweeper(1.0)
        assert store.supervisor_beats() == {} and store.retire_supervisor("abc") is None
        assert store.supervisors() == [{"pid": os.getpid()}]
    finally:
        store.unlock_supervisor()
        store.close()


def test_beats_go_on_on_their_own_thread_while_the_loop_is_busy() -> None:
    store = FakeShared()
    shared = SharedSupervision(Handle(store, False), 1.0, lambda *_: 0.0)  # type: ignore[arg-type]
    shared.join()
    beaten: list[float] = []

    class Beats(Handle):
        def beat_supervisor(self, sid: str) -> bool:
            beaten.append(time.monotonic())
            return self._store.beat_supervisor(sid)

    shared.start_beating(lambda: Beats(store, False))  # type: ignore[arg-type, return-value]
    try:
        wait_until(lambda: len(beaten) >= 3, timeout=5)  # nobody ticks: the loop is "busy"
    finally:
        shared.stop_beating()
    assert store.closed  # the thread's own handle
    assert all(b - a > 0.1 for a, b in itertools.pairwise(beaten))  # paced (a quarter lapse), not spinning
    store.beats.clear()  # retired meanwhile
    shared.beat(Beats(store, False))  # type: ignore[arg-type]
    assert shared.tick() is False


def test_the_next_tick_is_due_at_the_next_look_and_for_the_sweeper_at_the_next_orphan_scan() -> None:
    store = FakeShared()
    shared, sweeper = supervision(store), supervision(store, sweeper=True)
    for one in (shared, sweeper):
        assert one.due() <= store.now  # at once, before the first tick
        assert one.tick()
        assert store.now < one.due() <= store.now + 1.0


@pytest.mark.parametrize(("lapse", "said"), [("0.5s", "shorter than the least allowed, 1s"),
                                             ("soon", "is not a duration")])
def test_a_lapse_too_short_or_not_a_duration_is_refused_in_one_line(tmp_path: Path, lapse: str,
                                                                      said: str) -> None:
    done = run_cli("start", "--store", str(tmp_path / "store"), "--lapse", lapse)
    assert done.returncode == 2 and said in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "store").exists()
