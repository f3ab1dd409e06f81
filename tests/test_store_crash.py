"""Crash tests: a child process is SIGKILLed at a failpoint inside a store change.

Each child is a small python script run against the store with RUNNER_STORE_CRASH_AT
set (see store/faults.py). Afterwards the parent checks that the store opens, every
record the change touches reads as wholly old or wholly new (never a half batch), a
torn tail is dropped, what was stored before is intact, a process that had the store
open all along agrees with a fresh open, and the change can be redone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import runner.store.replica
from runner.store import DirStore, NewPromise, StaleClaim, State, TaskState
from runner.store.state import promise_to_list
from tests.helpers import Spawn

NOW = 1_000_000.0
LEASE = 30.0

# The child: open the store, make one change, print "done" (never reached when the
# failpoint fires). "fill" creates promises one by one and prints each acknowledged id.
CHILD = r"""
import json, sys
spec = json.loads(sys.argv[1])
import runner.store.replica
if spec.get("segment_bytes"):
    runner.store.replica.SEGMENT_BYTES = spec["segment_bytes"]
from runner.store import DirStore, NewPromise, State
s = DirStore(spec["store"], lease=30.0)
op, now = spec["op"], spec["now"]
if op == "create":
    s.create([NewPromise(i, "leaf", [n, "x" * 40], tags={"n": n}) for n, i in enumerate(spec["ids"])], now)
elif op == "settle":
    s.settle(spec["id"], State(spec["state"]), spec["value"], now)
elif op == "claim":
    s.claim(spec["owner"], now, limit=spec["limit"])
elif op == "complete":
    kids = [NewPromise(i, "leaf", [i], parent=spec["id"]) for i in spec["creates"]]
    s.complete(spec["id"], spec["counter"], State.RESOLVED, spec["value"], now, creates=kids)
elif op == "fill":
    for i in spec["ids"]:
        s.create([NewPromise(i, "leaf", ["y" * 100])], now)
        print(i, flush=True)
elif op == "hold":
    with s._log.locked():
        print("holding", flush=True)
        import time
        time.sleep(3600)
print("done", flush=True)
"""


def run_child(processes: Spawn, spec: dict[str, Any], crash_at: str | None) -> tuple[int, str]:
    env = {"RUNNER_STORE_CRASH_AT": crash_at}
    proc = processes([sys.executable, "-c", CHILD, json.dumps(spec)], env=env,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=60)
    if crash_at is not None:
        assert proc.returncode == -signal.SIGKILL, f"child was not killed at {crash_at}: {out}{err}"
    else:
        assert proc.returncode == 0, err
    return proc.returncode, out


def dump(s: DirStore) -> tuple[dict[str, Any], dict[str, Any]]:
    """Everything a store holds, as plain data, to compare two views of one store: every
    promise as a listing reads it (the live ones and the archived history), every task."""
    return ({p.id: promise_to_list(p) for p in s.search(limit=10**9, now=NOW).items},
            {pid: t.to_list() for pid, t in s.state.tasks.items()})


def segment_sizes(root: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted((root / "log").iterdir())}


def seed(s: DirStore) -> None:
    """Records of every kind that must come through any crash untouched."""
    s.create([NewPromise(f"pre.{i}", "leaf", [i, {"k": [1, 2.5, None, b"\x00"]}], runnable=i >= 18)
              for i in range(20)], NOW)
    s.settle("pre.0", State.RESOLVED, {"v": 2**80}, NOW)
    s.settle("pre.1", State.REJECTED, {"type": "E", "message": "m"}, NOW)
    [c] = s.claim("w-pre", NOW, lease=1e6)
    s.complete(c.id, c.counter, State.RESOLVED, "done", NOW)
    s.claim("w-pre", NOW, lease=1e6)  # stays claimed


@dataclass
class Scenario:
    setup: Callable[[DirStore], dict[str, Any]]  # returns the child's spec (without store/now)
    # reads the change as old (False) or new (True); fails on anything in between
    read: Callable[[DirStore, dict[str, Any]], bool]
    redo: Callable[[DirStore, dict[str, Any]], None]


# -- a batch of 50 creates ---------------------------------------------------------

BATCH = [f"batch.{i}" for i in range(50)]


def _create_setup(s: DirStore) -> dict[str, Any]:
    return {"op": "create", "ids": BATCH}


def _create_read(s: DirStore, spec: dict[str, Any]) -> bool:
    present = [i for i in BATCH if s.get(i) is not None]
    assert len(present) in (0, len(BATCH)), f"half a batch: {len(present)} of {len(BATCH)}"
    for n, i in enumerate(present):
        p = s.get(i)
        assert p is not None and p.state is State.PENDING and p.args == [n, "x" * 40] and p.tags == {"n": n}
        assert s.task(i) is not None and s.task(i).state is TaskState.READY  # type: ignore[union-attr]
    return bool(present)


def _create_redo(s: DirStore, spec: dict[str, Any]) -> None:
    made = s.create([NewPromise(i, "leaf", [n, "x" * 40], tags={"n": n}) for n, i in enumerate(BATCH)], NOW)
    assert [p.id for p in made] == BATCH


# -- a settle (resolve), and a cancel that settles a whole tree in one frame --------------


def _settle_setup(s: DirStore) -> dict[str, Any]:
    s.create([NewPromise("target", "leaf")], NOW)
    return {"op": "settle", "id": "target", "state": "resolved", "value": {"r": [1, "two", 3.0]}}


def _settle_read(s: DirStore, spec: dict[str, Any]) -> bool:
    p = s.get("target")
    assert p is not None
    if p.state is State.PENDING:
        assert p.value is None and p.settled_at is None
        return False
    assert p.state is State.RESOLVED and p.value == spec["value"] and p.settled_at == NOW
    assert s.task("target") is None
    return True


def _settle_redo(s: DirStore, spec: dict[str, Any]) -> None:
    p = s.settle("target", State.RESOLVED, spec["value"], NOW)
    assert p.state is State.RESOLVED and p.value == spec["value"]


TREE = ["tree"] + [f"tree.{i}" for i in range(10)] + [f"tree.{i}.{j}" for i in range(10) for j in range(3)]


def _cancel_setup(s: DirStore) -> dict[str, Any]:
    s.create([NewPromise(pid, "wf", parent=pid.rpartition(".")[0] or None) for pid in TREE], NOW)
    return {"op": "settle", "id": "tree", "state": "rejected_canceled", "value": {"type": "Canceled"}}


def _cancel_read(s: DirStore, spec: dict[str, Any]) -> bool:
    states = {s.get(pid).state for pid in TREE}  # type: ignore[union-attr]
    assert len(states) == 1, f"half a cancelled tree: {states}"
    return states == {State.REJECTED_CANCELED}


def _cancel_redo(s: DirStore, spec: dict[str, Any]) -> None:
    s.settle("tree", State.REJECTED_CANCELED, spec["value"], NOW)
    assert {s.get(pid).state for pid in TREE} == {State.REJECTED_CANCELED}  # type: ignore[union-attr]


# -- a claim of three tasks ----------------------------------------------------------------

JOBS = [f"job.{i}" for i in range(5)]


def _claim_setup(s: DirStore) -> dict[str, Any]:
    s.create([NewPromise(j, "leaf") for j in JOBS], NOW)
    return {"op": "claim", "owner": "w-child", "limit": 3}


def _claim_read(s: DirStore, spec: dict[str, Any]) -> bool:
    tasks = {j: s.task(j) for j in JOBS}
    held = [j for j, t in tasks.items() if t is not None and t.state is TaskState.CLAIMED]
    assert held in ([], JOBS[:3]), f"a partial claim: {held}"
    for j in held:
        t = tasks[j]
        assert t is not None and t.owner == "w-child" and t.counter == 1 and t.expires_at == NOW + LEASE
    return bool(held)


def _claim_redo(s: DirStore, spec: dict[str, Any]) -> None:
    held = _claim_read(s, spec)
    s.release_owner("w-child", NOW)  # what the supervisor does when it sees the death
    again = {c.id: c.counter for c in s.claim("w-next", NOW, limit=10)}
    assert sorted(again) == JOBS
    assert {again[j] for j in JOBS[:3]} == {2 if held else 1}  # the dead claimer is fenced off


# -- a complete that also creates 20 children (several operations in one frame) -------------

KIDS = [f"wf.{i}" for i in range(20)]


def _complete_setup(s: DirStore) -> dict[str, Any]:
    s.create([NewPromise("wf", "wf")], NOW)
    [c] = [c for c in s.claim("w-old", NOW, limit=10) if c.id == "wf"]
    return {"op": "complete", "id": "wf", "counter": c.counter, "value": {"sum": 190}, "creates": KIDS}


def _complete_read(s: DirStore, spec: dict[str, Any]) -> bool:
    p, t = s.get("wf"), s.task("wf")
    kids = [k for k in KIDS if s.get(k) is not None]
    assert p is not None
    if p.state is State.PENDING:
        assert kids == [], "children written without the completion they came with"
        assert t is not None and t.state is TaskState.CLAIMED and t.counter == spec["counter"]
        return False
    assert kids == KIDS, f"{len(kids)} of {len(KIDS)} children"
    assert p.state is State.RESOLVED and p.value == spec["value"] and t is None
    return True


def _complete_redo(s: DirStore, spec: dict[str, Any]) -> None:
    kids = [NewPromise(k, "leaf", [k], parent="wf") for k in KIDS]
    if s.get("wf").state is State.PENDING:  # type: ignore[union-attr]
        s.complete("wf", spec["counter"], State.RESOLVED, spec["value"], NOW, creates=kids)
    else:  # done already: a redo by the same worker is fenced, and changes nothing
        with pytest.raises(StaleClaim):
            s.complete("wf", spec["counter"], State.RESOLVED, "other", NOW, creates=kids)
    assert _complete_read(s, spec)


SCENARIOS = {
    "create-batch": Scenario(_create_setup, _create_read, _create_redo),
    "settle": Scenario(_settle_setup, _settle_read, _settle_redo),
    "cancel-tree": Scenario(_cancel_setup, _cancel_read, _cancel_redo),
    "claim": Scenario(_claim_setup, _claim_read, _claim_redo),
    "complete": Scenario(_complete_setup, _complete_read, _complete_redo),
}

# Where the child dies, and whether its change must then read as new. A SIGKILL after the
# whole write() keeps the frame: the page cache outlives the process (only a power cut
# could lose it, and then it was never acknowledged).
POINTS = {
    "locked.hold": False,
    "append.mid": False,
    "append.before_sync": True,
    "append.after_sync": True,
}


@pytest.mark.parametrize("point", list(POINTS))
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_crash_inside_a_change(store_dir: Path, processes: Spawn, name: str, point: str) -> None:
    scenario = SCENARIOS[name]
    with closing(DirStore(store_dir, lease=LEASE)) as s:
        seed(s)
        spec = scenario.setup(s) | {"store": str(store_dir), "now": NOW}
        before = dump(s)
        assert scenario.read(s, spec) is False
    sizes = segment_sizes(store_dir)
    watcher = DirStore(store_dir, lease=LEASE)  # open all along, its cursor at the old end

    run_child(processes, spec, point)

    torn = segment_sizes(store_dir)
    if point == "append.mid":
        assert sum(torn.values()) > sum(sizes.values()), "the child wrote no torn tail"
    # The first process to take the lock is one that had the store open before the crash.
    watcher.refresh()
    assert segment_sizes(store_dir) == (sizes if not POINTS[point] else torn), "torn tail not dropped"
    with closing(DirStore(store_dir, lease=LEASE)) as fresh:
        assert dump(fresh) == dump(watcher), "a fresh open and a long-open process disagree"
        assert scenario.read(fresh, spec) is POINTS[point]
        after = dump(fresh)
        if not POINTS[point]:
            assert after == before, "a change that was never written left a trace"
        for pid, record in before[0].items():  # untouched records are intact
            if pid.startswith("pre."):
                assert after[0][pid] == record
                assert after[1].get(pid) == before[1].get(pid)
        scenario.redo(fresh, spec)
        redone = dump(fresh)
    watcher.refresh()
    assert dump(watcher) == redone
    watcher.close()
    with closing(DirStore(store_dir, lease=LEASE)) as again:
        assert dump(again) == redone


# -- crashes during compaction ---------------------------------------------------------------

FILL = [f"fill.{i:05d}" for i in range(3000)]


@pytest.mark.parametrize("point", [
    "compact.after_rotate", "compact.after_rotate:3",
    "archive.after_add", "archive.after_frame", "compact.after_temp", "compact.after_temp:3",
    "compact.after_snapshot", "compact.after_snapshot:3",
    "append.mid:250", "append.before_sync:250",
])
def test_crash_during_compaction(store_dir: Path, processes: Spawn, monkeypatch: pytest.MonkeyPatch,
                                 point: str) -> None:
    monkeypatch.setattr(runner.store.replica, "SEGMENT_BYTES", 4096)  # compact every ~25 creates
    with closing(DirStore(store_dir, lease=LEASE)) as s:
        seed(s)
        before = dump(s)
    spec = {"op": "fill", "ids": FILL, "store": str(store_dir), "now": NOW, "segment_bytes": 4096}

    _, out = run_child(processes, spec, point)

    acked = out.split()
    assert acked and acked == FILL[: len(acked)]
    with closing(DirStore(store_dir, lease=LEASE)) as s:
        got = [f for f in FILL if s.get(f) is not None]
        # Everything acknowledged is there; the one in flight is all there or absent.
        assert got in (acked, FILL[: len(acked) + 1]), f"acked {len(acked)}, found {len(got)}"
        # A crash during compaction comes after the append that triggered it was durable.
        in_flight_kept = not point.startswith("append.mid")
        assert got == FILL[: len(acked) + int(in_flight_kept)]
        for pid, record in before[0].items():
            assert dump(s)[0][pid] == record
        # Every segment the snapshot covers is gone, and none is missing after it.
        segments = sorted(int(p.name[:8]) for p in (store_dir / "log").iterdir())
        assert segments == list(range(segments[0], segments[0] + len(segments)))
        if (store_dir / "snapshot").exists():  # a crash in the first compaction may leave none
            start = s._read_snapshot(store_dir / "snapshot")[0]
            assert segments[0] == start, "segments the snapshot covers were left behind"
        assert not [n for n in os.listdir(store_dir) if n.endswith(".tmp")]
        # Redo the rest: compaction goes on from where the crash left it.
        for f in FILL[len(got): len(got) + 200]:
            s.create([NewPromise(f, "leaf", ["y" * 100])], NOW)
        final = dump(s)
    with closing(DirStore(store_dir, lease=LEASE)) as again:
        assert dump(again) == final
        assert len([f for f in FILL if again.get(f) is not None]) == len(got) + 200


def test_lagging_process_survives_two_compactions(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process idle while others compact twice must not append to a removed segment.

    Its segment is unlinked and the next one too; appending through its old descriptor
    would be acknowledged and then lost, and compacting from its stale state would
    drop everything the others wrote.
    """
    monkeypatch.setattr(runner.store.replica, "SEGMENT_BYTES", 2000)
    idle, busy = DirStore(store_dir), DirStore(store_dir)
    idle.create([NewPromise("first", "leaf")], NOW)
    for i in range(100):
        busy.create([NewPromise(f"b{i}", "leaf", ["x" * 50])], NOW)
    assert len(list((store_dir / "log").iterdir())) == 1  # segment 1 and several after it are gone
    idle.create([NewPromise("late", "leaf")], NOW)
    assert len(idle.state.promises) == 102
    busy.refresh()
    with closing(DirStore(store_dir)) as fresh:
        assert fresh.get("late") is not None
        assert dump(fresh) == dump(idle) == dump(busy)
    idle.close()
    busy.close()


# -- the lock of a killed process ------------------------------------------------------------


def test_killed_at_locked_hold_frees_the_lock(store_dir: Path, processes: Spawn) -> None:
    with closing(DirStore(store_dir)) as s:
        s.create([NewPromise("a", "leaf")], NOW)
    run_child(processes, {"op": "settle", "id": "a", "state": "resolved", "value": 1,
                          "store": str(store_dir), "now": NOW}, "locked.hold")
    started = time.monotonic()
    with closing(DirStore(store_dir)) as s:
        s.settle("a", State.RESOLVED, 2, NOW)
        assert s.get("a").value == 2  # type: ignore[union-attr]
    assert time.monotonic() - started < 1.0  # no lease to wait out: the kernel dropped the flock


def test_waiter_gets_the_lock_as_soon_as_its_holder_is_killed(store_dir: Path, processes: Spawn) -> None:
    waiter = DirStore(store_dir)
    waiter.create([NewPromise("a", "leaf")], NOW)
    holder = processes([sys.executable, "-c", CHILD, json.dumps(
        {"op": "hold", "store": str(store_dir), "now": NOW})], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
    assert not _lock_free(store_dir)
    done = threading.Event()
    acquired_at: list[float] = []

    def settle() -> None:
        waiter.settle("a", State.RESOLVED, "after", NOW)
        acquired_at.append(time.monotonic())
        done.set()

    thread = threading.Thread(target=settle, daemon=True)
    thread.start()
    assert not done.wait(0.3), "the waiter got a lock the holder still has"
    killed_at = time.monotonic()
    os.kill(holder.pid, signal.SIGKILL)
    assert done.wait(5), "a lock held by a killed process wedged the store"
    thread.join()
    assert acquired_at[0] - killed_at < 1.0  # at once: the kernel wakes a blocked flock as the holder dies
    holder.wait()
    with closing(DirStore(store_dir)) as s:
        assert s.get("a").value == "after"  # type: ignore[union-attr]
    waiter.close()


def _lock_free(root: Path) -> bool:
    from filelock import lock_descriptor, unlock_descriptor

    fd = os.open(root / "lock", os.O_RDWR)
    try:
        if lock_descriptor(fd, blocking=False):
            unlock_descriptor(fd)
            return True
        return False
    finally:
        os.close(fd)
