"""Several supervisors on one PostgreSQL store.

The store's side first (store/pg/supervisors.py): beats on the server's clock, a retired
id that stays retired, one sweeper at a time whose lock goes with its connection (or
its lapse), and presence that ends with the connection while the row waits out its
lapse. One handle reaches the database through a TCP proxy the test cuts or blackholes
(tests/netproxy.py).

Then real `runner start` processes: a SIGKILLed supervisor's branches run elsewhere
within the lapse plus a second, and one cut off by a partition finishes nothing that
was taken from it once the link comes back. Branches leave a trace line per start and
end with their pid (tests/apps/partition.py), so the test knows who ran what, and when.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from runner.owners import owner_supervisor
from runner.store import WORK, NewPromise, PromiseStore, StaleClaim, State, StoreError, TaskState, open_store
from tests.apps.partition import read_trace
from tests.helpers import (
    Spawn,
    drop_pg_schema,
    new_pg_schema,
    pg_unreachable,
    run_cli,
    runner_cmd,
    wait_until,
)
from tests.netproxy import LinkProxy

pytestmark = pytest.mark.skipif(pg_unreachable() is not None, reason=str(pg_unreachable()))

PG_HOST = ("127.0.0.1", 5432)
LAPSE = 3.0
APP = "tests.apps.partition"


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

    assert b.retire_supervisor("a") == {"id": "a"}  # its last description
    assert b.retire_supervisor("a") is None  # only one retire gives its claims back
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
        assert [info["id"] for info in other.lost_supervisors()] == ["cut"]  # gone, or only cut off:
        assert "cut" in other.supervisor_beats()  # declared dead only once its lapse has passed
        with pytest.raises(StoreError):
            cut.beat_supervisor("cut")

        proxy.heal()
        # Back within its lapse: it carries on.
        assert wait_until(lambda: answer(lambda: cut.beat_supervisor("cut")), timeout=10)
        assert cut.lock_sweeper(60) is False  # the other sweeps now
        assert {info["id"] for info in other.supervisors()} == {"cut", "other"}  # present again
        assert other.lost_supervisors() == []


def test_a_dead_supervisors_worker_cannot_renew_or_finish_a_claim_taken_from_it(
        url: str, handles: list[PromiseStore]) -> None:
    store = open_store(url)
    handles.append(store)
    store.create([NewPromise("r", "f")])
    old, new = "41@1.00+retired", "42@2.00+alive"
    [stale] = store.claim(old)
    store.release_owner(old, how="its supervisor retired was declared dead")
    [taken] = store.claim(new)
    task = store.task("r")
    assert task is not None and task.owner == new
    assert store.heartbeat(old, ids=["r"]) == 0  # its beat does not bring the claim back
    after = store.task("r")
    assert after is not None and (after.owner, after.expires_at, after.counter) == \
        (new, task.expires_at, taken.counter)
    with pytest.raises(StaleClaim):
        store.complete("r", stale.counter, State.RESOLVED, "late")
    assert store.complete("r", taken.counter, State.RESOLVED, "ok").value == "ok"


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
        assert other.retire_supervisor("held") is not None
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


# -- real supervisors ----------------------------------------------------------------------


@dataclass
class Cluster:
    """Supervisors on one store URL (or a proxy's URL to it), and the store as the test sees it."""

    url: str
    root: Path
    spawn: Spawn
    store: PromiseStore
    procs: dict[str, subprocess.Popen[str]] = field(default_factory=dict)

    @property
    def trace(self) -> str:
        return str(self.root / "trace.jsonl")

    def start(self, name: str, *extra: str, url: str | None = None) -> dict[str, Any]:
        """`runner start` with 2 workers of 2 branches each (unless `extra` says otherwise);
        returns what it published once both workers are up."""
        with (self.root / f"{name}.stderr").open("w") as log:
            self.procs[name] = self.spawn(
                runner_cmd("start", "--store", url or self.url, "--workers", "2", "--concurrency", "2",
                           "--lapse", f"{LAPSE}s", "--log-level", "info", *extra),
                env={"RUNNER_APP": APP}, cwd=self.root, stderr=log, text=True)
        return wait_until(lambda: len(self.info(name).get("workers") or ()) == 2 and self.info(name),
                          timeout=30, message=lambda: f"supervisor {name} not up: {self.log(name)}")

    def info(self, name: str) -> dict[str, Any]:
        proc = self.procs[name]
        assert proc.poll() is None, f"supervisor {name} exited {proc.returncode}: {self.log(name)}"
        return next((i for i in self.store.supervisors() if i.get("pid") == proc.pid), {})

    def log(self, name: str) -> str:
        return (self.root / f"{name}.stderr").read_text()

    def logs(self) -> str:
        return "\n".join(f"--- {name} ---\n{self.log(name)[-3000:]}" for name in self.procs)

    def invoke(self, root: str, n: int, seconds: float) -> None:
        done = run_cli("invoke", "spread", "--no-wait", "--id", root, "--arg", json.dumps(self.trace),
                       "--arg", str(n), "--arg", str(seconds), "--store", self.url,
                       env={"RUNNER_APP": APP}, cwd=self.root)
        assert done.returncode == 0, done.stderr

    def running(self, sid: str, pids: set[int], at_least: int) -> set[str]:
        """The naps workers of supervisor `sid` hold and have started (in one of `pids`),
        once there are `at_least` of them; else the empty set."""
        held = {t.id for t in self.store.claims() if owner_supervisor(t.owner) == sid and "." in t.id}
        begun = {t["id"] for t in read_trace(self.trace) if t["event"] == "start" and t["pid"] in pids} \
            if os.path.exists(self.trace) else set()
        return held & begun if len(held & begun) >= at_least else set()

    def claimed_elsewhere(self, ids: set[str], sid: str) -> dict[str, float]:
        """When each of `ids` was claimed by a worker of another supervisor than `sid`."""
        return {t.id: t.claimed_at for t in self.store.claims()
                if t.id in ids and owner_supervisor(t.owner) not in (None, sid) and t.claimed_at is not None}

    def result(self, root: str, timeout: float) -> list[dict[str, Any]]:
        promise = wait_until(lambda: (p := self.store.get(root)) is not None and p.settled and p,
                             timeout=timeout, message=lambda: f"{root} not settled: {self.logs()}")
        assert promise.state is State.RESOLVED, promise.value
        return list(promise.value)


@pytest.fixture
def cluster(url: str, tmp_path: Path, processes: Spawn) -> Iterator[Cluster]:
    store = open_store(url)
    try:
        yield Cluster(url, tmp_path, processes, store)
    finally:
        store.close()


def busy(c: Cluster, name: str, root: str, n: int, seconds: float, *extra: str,
         url: str | None = None) -> tuple[str, set[int], set[str]]:
    """Supervisor `name` runs naps of a fresh run of n; then "b" starts, with room to spare
    for what it will take over. Returns name's id, its workers, and the naps it runs."""
    info = c.start(name, *extra, url=url)
    c.invoke(root, n, seconds)
    workers = set(info["workers"])
    running = wait_until(lambda: c.running(info["id"], workers, at_least=2), timeout=20,
                         message=lambda: f"{name}'s workers run no naps: {c.logs()}")
    c.start("b", "--concurrency", "8")
    naps = [f"{root}.{i}" for i in range(n)]
    ready = TaskState.READY
    wait_until(lambda: not [t for t in map(c.store.task, naps) if t is not None and t.state is ready],
               timeout=20, message="naps left unclaimed")
    return info["id"], workers, running


@pytest.mark.parametrize("lost", [False, True], ids=["seen", "host-lost"])
def test_a_killed_supervisors_branches_run_elsewhere_within_the_lapse_and_a_second(
        cluster: Cluster, lost: bool) -> None:
    """Seen: its sessions end with it, and its process is gone from this host: taken over at
    once. Host lost: its link blackholed first, so the server keeps its sessions, as for a
    host that vanished: taken over once its beat lapses."""
    c, n = cluster, 8
    with LinkProxy(PG_HOST) as proxy:
        sid, _, running = busy(c, "a", "kill", n, 3.0, url=proxy.url(c.url))
        status = json.loads(run_cli("status", "--json", "--store", c.url, cwd=c.root).stdout)
        # Both supervisors, every worker alive, every claim someone's.
        assert {p["id"] for p in status["supervisors"]} == {sid, c.info("b")["id"]}, status["supervisors"]
        assert status["unowned_claims"] == [] and all(w["alive"] for w in status["workers"]), status
        beat_at = time.time() - c.store.supervisor_beats()[sid]  # when a last beat (at the latest)
        if lost:
            proxy.blackhole()
        killed_at = time.time()
        os.killpg(c.procs["a"].pid, signal.SIGKILL)
        c.procs["a"].wait()
        again: dict[str, float] = {}
        wait_until(lambda: again.update(c.claimed_elsewhere(running, sid)) or running <= again.keys(),
                   timeout=LAPSE + 20, interval=0.02, message=lambda: f"not taken: {running - again.keys()}")
    after = max(again.values()) - killed_at
    assert after <= LAPSE + 1.0, again
    if lost:
        assert max(again.values()) >= beat_at + LAPSE - 0.05  # not before its lapse
    assert [item["index"] for item in c.result("kill", timeout=30)] == list(range(n))


@pytest.mark.parametrize("how", ["cut", "blackhole"])
def test_a_partitioned_supervisor_finishes_nothing_that_was_taken_from_it(cluster: Cluster, how: str) -> None:
    c, n = cluster, 8
    with LinkProxy(PG_HOST) as proxy:
        # No lease of a lapses before the link heals: only being declared dead takes its claims.
        info = c.start("a", "--lease", "60s", url=proxy.url(c.url))
        c.start("b")
        sid, old_workers = info["id"], set(info["workers"])
        c.invoke("part", n, 2.5)  # 4 naps each; a's end while it is cut off, their results held back
        running = wait_until(lambda: c.running(sid, old_workers, at_least=2), timeout=20,
                             message=lambda: f"a's workers run no naps: {c.logs()}")
        beat_at = time.time() - c.store.supervisor_beats()[sid]  # when a last beat (at the latest)
        getattr(proxy, how)()
        cut_at = time.time()
        wait_until(lambda: sid not in c.store.supervisor_beats(), timeout=LAPSE + 10,
                   message=lambda: f"a was never declared dead: {c.logs()}")
        dead_at = time.time()
        again: dict[str, float] = {}
        wait_until(lambda: again.update(c.claimed_elsewhere(running, sid)) or running <= again.keys(),
                   timeout=10, interval=0.02, message=lambda: f"not taken over: {running - again.keys()}")
        taken_at = max(again.values())
        proxy.heal()
        healed_at = time.time()
        # It learns it was declared dead, kills its workers and joins again under a new id.
        def anew() -> dict[str, Any]:
            info = c.info("a")
            fresh = info.get("id") not in (None, sid) and len(info["workers"]) == 2
            return info if fresh and not set(info["workers"]) & old_workers else {}

        rejoined = wait_until(anew, timeout=20, message=lambda: f"a never rejoined: {c.logs()}")
        value = c.result("part", timeout=60)

    assert [item["index"] for item in value] == list(range(n))
    naps = {p.id: p for p in c.store.children("part")}
    for nap_id in running:  # taken from a: its result is b's re-run, never a's late finish
        assert naps[nap_id].value["pid"] not in old_workers, (nap_id, naps[nap_id].value)
    for nap in naps.values():  # nothing a's old workers finished after the cut was written
        if nap.value["pid"] in old_workers:
            assert nap.settled_at is not None and nap.settled_at < cut_at, nap
    assert dead_at >= beat_at + LAPSE - 0.05  # not before its lapse
    late = [t for t in read_trace(c.trace) if t["event"] == "end" and t["pid"] in old_workers
            and t["time"] > cut_at]
    # Blackholed, a's workers live on and finish their naps; their completions wait in the
    # link, land once it heals, and are refused (checked above: none of their results stands).
    assert how == "cut" or late
    timeline = {"how": how, "cut": 0.0, "declared dead": dead_at - cut_at, "taken over": taken_at - cut_at,
                "healed": healed_at - cut_at, "rejoined as": rejoined["id"],
                "naps a's old workers finished after the cut": len(late),
                "late completions refused": c.log("a").count("dropped stale work"),
                "run settled": max(p.settled_at or 0.0 for p in naps.values()) - cut_at}
    print("partition timeline (s from the cut):",
          json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in timeline.items()}))


def test_chaos_kills_one_of_two_supervisors_and_the_other_takes_over(url: str, tmp_path: Path) -> None:
    done = run_cli("chaos", "--store", url, "--target", "one-of-two", "--kill-after", "1s", "--json",
                   env={"RUNNER_APP": "examples.notify"}, cwd=tmp_path, timeout=120)
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["ok"], report["violations"]
    assert report["kill"]["group"] and report["plan"]["target"] == "one-of-two"
    assert any(b["at_kill"] == "in flight" and b["verdict"] == "ok, ran again" for b in report["branches"])
    assert any(note.startswith("the other supervisor took over") for note in report["notes"]), report["notes"]
