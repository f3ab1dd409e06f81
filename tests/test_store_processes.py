"""Several real processes share one store: claims never overlap, every task completes once.

Workers are `python -c` children (the `processes` fixture reaps their groups). Each
records what it did with time.monotonic() stamps (one clock for every process on
Linux) and the parent checks the records against each other and against the store.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from runner.store import DirStore, NewPromise, StaleClaim, State, StoreError, TaskState, open_store
from tests.helpers import Spawn

# argv: store, owner, limit, release_every, out. Prints "ready", waits for one byte on
# stdin, then claims and completes until nothing is pending. Every release_every-th claim
# is released instead of completed (and its late completion must be refused).
WORKER = r"""
import json, os, sys, time
from runner.store import WORK, open_store, State, StaleClaim
root, owner, limit, release_every, out = sys.argv[1:6]
limit, release_every = int(limit), int(release_every)
s = open_store(root)
watch = s.watch(WORK)
print("ready", flush=True)
sys.stdin.read(1)
events, n = [], 0
deadline = time.monotonic() + 90
while True:
    if time.monotonic() > deadline:
        sys.exit(f"{owner}: work left after 90 s: {s.stats()}")
    watch.drain()
    claims = s.claim(owner, limit=limit)
    t_claimed = time.monotonic()
    if not claims:
        if s.stats().by_state["pending"] == 0:
            break
        watch.wait(0.5)  # someone else holds the rest; a release or a completion wakes us
        continue
    for c in claims:
        events.append({"op": "claim", "id": c.id, "counter": c.counter, "t": t_claimed, "pid": os.getpid()})
        n += 1
        t0 = time.monotonic()
        if release_every and n % release_every == 0:
            s.release(c.id, c.counter)
            try:
                s.complete(c.id, c.counter, State.RESOLVED, "zombie")
                zombie = "accepted"
            except StaleClaim:
                zombie = "refused"
            events.append({"op": "release", "id": c.id, "counter": c.counter, "t0": t0, "zombie": zombie})
        else:
            s.complete(c.id, c.counter, State.RESOLVED, {"by": owner, "counter": c.counter})
            events.append({"op": "complete", "id": c.id, "counter": c.counter, "t0": t0})
with open(out, "w") as f:
    json.dump(events, f)
"""

# argv: store, owner, limit. Claims, prints the claims as JSON, then blocks until killed.
HOLDER = r"""
import json, sys
from runner.store import open_store
root, owner, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = open_store(root)
claims = s.claim(owner, limit=limit, lease=3600.0)
print(json.dumps([[c.id, c.counter] for c in claims]), flush=True)
sys.stdin.read()
"""

N_PROMISES = 400
N_WORKERS = 4


def start_workers(processes: Spawn, root: Path, tmp_path: Path, *, limit: int,
                  release_every: int) -> list[tuple[subprocess.Popen[str], Path]]:
    workers = []
    for i in range(N_WORKERS):
        out = tmp_path / f"events-{i}.json"
        with open(tmp_path / f"stderr-{i}.txt", "w") as err:
            argv = [sys.executable, "-c", WORKER, str(root), f"w{i}", str(limit), str(release_every),
                    str(out)]
            proc = processes(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
        workers.append((proc, out))
    for proc, _ in workers:  # every one has opened the store: start them together
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    for proc, _ in workers:
        assert proc.stdin is not None
        proc.stdin.write("g")
        proc.stdin.close()
    return workers


def collect(workers: list[tuple[subprocess.Popen[str], Path]]) -> list[dict[str, Any]]:
    events = []
    for i, (proc, out) in enumerate(workers):
        try:
            code = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            code = None
        stderr = (out.parent / f"stderr-{i}.txt").read_text()
        assert code == 0, f"worker {i} exited with {code}: {stderr[-2000:]}"
        for e in json.loads(out.read_text()):
            e["worker"] = i
            events.append(e)
    return events


@pytest.mark.parametrize(("limit", "release_every"), [(1, 0), (5, 0), (3, 7)],
                         ids=["limit1", "limit5", "limit3-with-releases"])
def test_concurrent_claims_never_overlap_and_complete_once(processes: Spawn, store_dir: Path, tmp_path: Path,
                                                            limit: int, release_every: int) -> None:
    s = open_store(str(store_dir))
    ids = [f"job-{i:03d}" for i in range(N_PROMISES)]
    s.create([NewPromise(pid, "work", [i]) for i, pid in enumerate(ids)], now=None)
    events = collect(start_workers(processes, store_dir, tmp_path, limit=limit, release_every=release_every))
    s.refresh()

    claims = defaultdict(list)
    for e in events:
        if e["op"] == "claim":
            claims[e["id"]].append(e)
    ends = {(e["id"], e["counter"]): e for e in events if e["op"] in ("complete", "release")}
    completions = [e for e in events if e["op"] == "complete"]

    # Every promise resolved exactly once, by the holder of its last claim.
    assert sorted(e["id"] for e in completions) == ids
    for pid in ids:
        p = s.get(pid)
        assert p is not None and p.state is State.RESOLVED, pid
        last = max(c["counter"] for c in claims[pid])
        assert p.value["counter"] == last
        assert s.task(pid) is None
    # A counter is handed out once: each claim of an id carries the next counter.
    for pid, cs in claims.items():
        assert sorted(c["counter"] for c in cs) == list(range(1, len(cs) + 1)), (pid, cs)
        # ... and the claim before it had ended: its holder started releasing before
        # the next claim returned (the release is committed between those two instants).
        cs.sort(key=lambda c: c["counter"])
        for before, after in itertools.pairwise(cs):
            end = ends[(pid, before["counter"])]
            assert end["op"] == "release", (pid, before, after)
            assert end["t0"] < after["t"], (pid, before, end, after)
    # Each claim ended exactly once; a released holder could never complete afterwards.
    assert len(ends) == sum(len(cs) for cs in claims.values())
    assert all(e["zombie"] == "refused" for e in events if e["op"] == "release")
    if release_every:
        assert any(e["op"] == "release" for e in events)
    assert s.claims() == [] and s.stats().by_state["resolved"] == N_PROMISES
    # The work was really shared.
    assert len({e["worker"] for e in completions}) >= 2
    s.close()


def test_a_killed_holders_claims_go_back_with_release_owner(processes: Spawn, store_dir: Path) -> None:
    s = open_store(str(store_dir))
    s.create([NewPromise(f"t{i:02d}", "work") for i in range(20)], now=None)
    victim = processes([sys.executable, "-c", HOLDER, str(store_dir), "victim", "5"],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert victim.stdout is not None
    held = [tuple(x) for x in json.loads(victim.stdout.readline())]
    assert len(held) == 5
    os.killpg(victim.pid, signal.SIGKILL)
    assert victim.wait(timeout=30) == -signal.SIGKILL

    # The store is usable at once (the kernel dropped the dead process's flock).
    assert {t.id for t in s.claims()} == {pid for pid, _ in held}
    assert all(t.owner == "victim" for t in s.claims())
    assert s.claim("rescuer", limit=100, lease=3600.0) != []  # the 15 others
    assert s.claim("rescuer", limit=100) == []  # the dead holder's are still held
    assert sorted(s.release_owner("victim")) == sorted(pid for pid, _ in held)
    rescued = {c.id: c for c in s.claim("rescuer", limit=100)}
    assert set(rescued) == {pid for pid, _ in held}
    for pid, counter in held:
        assert rescued[pid].counter == counter + 1
        with pytest.raises(StaleClaim):  # the dead owner's late completion
            s.complete(pid, counter, State.RESOLVED, "from the grave")
        assert s.complete(pid, rescued[pid].counter, State.RESOLVED, "rescued").value == "rescued"
    s.close()


def test_a_killed_holders_leases_expire_when_nobody_saw_the_death(processes: Spawn, store_dir: Path) -> None:
    s = open_store(str(store_dir))
    s.create([NewPromise("only", "work")], now=None)
    victim = processes([sys.executable, "-c", HOLDER, str(store_dir), "victim", "1"],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert victim.stdout is not None
    [[pid, counter]] = json.loads(victim.stdout.readline())
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    task = s.task(pid)
    assert task is not None and task.state is TaskState.CLAIMED and task.expires_at is not None
    assert s.expire(now=task.expires_at - 1) == []
    assert s.expire(now=task.expires_at) == [pid]
    [c] = s.claim("rescuer", now=task.expires_at)
    assert c.counter == counter + 1
    with pytest.raises(StaleClaim):
        s.complete(pid, counter, State.RESOLVED, "late", now=task.expires_at)
    s.close()


def _in_child(fn: Any) -> int:
    """Run fn() in a forked child; its exit status."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = fn()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_a_handle_inherited_across_fork_is_refused(store_dir: Path) -> None:
    """An inherited handle shares the parent's flock: two processes would hold the lock at once."""
    s = open_store(str(store_dir))
    s.create([NewPromise("a", "work")], now=1.0)

    def use_inherited() -> int:
        try:
            s.claim("child", now=2.0)
        except StoreError:
            return 7
        return 0

    def open_own() -> int:
        own: DirStore = open_store(str(store_dir))
        return 0 if [c.id for c in own.claim("child", now=2.0)] == ["a"] else 3

    assert _in_child(use_inherited) == 7
    assert s.task("a").state is TaskState.READY  # the refused child wrote nothing
    assert _in_child(open_own) == 0
    assert s.task("a").owner == "child"
    s.close()
