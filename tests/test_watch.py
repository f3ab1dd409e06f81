"""Targeted wake-ups and the blocking store lock.

A writer touches its topics' files before its call returns, so whether a watch was
woken is known the moment the call is back: `wait(0)` tells it without any sleep.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import runner.store.watch
from runner.store import CHANGES, TIMERS, WORK, DirStore, NewPromise, State, Wake, open_store, settled_topic
from runner.store.lockholder import lock_holders
from runner.store.watch import topic_file
from tests.helpers import Spawn, wait_until


def pair(tmp_path: Path) -> tuple[DirStore, DirStore]:
    """Two handles on one store: one watches, the other writes."""
    path = str(tmp_path / "store")
    return open_store(path), open_store(path)


def other_bucket(pid: str) -> str:
    """An id whose settles wake another bucket than `pid`'s."""
    return next(f"o{i}" for i in range(1000)
                if topic_file(settled_topic(f"o{i}")) != topic_file(settled_topic(pid)))


def test_a_settle_wakes_its_own_watcher_only(tmp_path: Path) -> None:
    watcher, writer = pair(tmp_path)
    other = other_bucket("a")
    writer.create([NewPromise("a", "f", runnable=False), NewPromise(other, "f", runnable=False)])
    mine, theirs = watcher.watch(settled_topic("a")), watcher.watch(settled_topic(other))
    work = watcher.watch(WORK)
    writer.settle("a", State.RESOLVED, 1)
    assert mine.wait(0) and not theirs.wait(0) and not work.wait(0)
    theirs.add(settled_topic("a"))  # from now on, this one too
    writer.create([NewPromise("b", "f", runnable=False, resolved=True, value=2)])  # created settled
    assert mine.wait(0) == (topic_file(settled_topic("b")) == topic_file(settled_topic("a")))
    writer.settle(other, State.RESOLVED, 3)
    assert theirs.wait(0) and not mine.wait(0)
    for w in (mine, theirs, work):
        w.close()
    watcher.close()
    writer.close()


def test_work_and_timers_wake_on_what_they_name(tmp_path: Path) -> None:
    watcher, writer = pair(tmp_path)
    work, timers, changes = watcher.watch(WORK), watcher.watch(TIMERS), watcher.watch(CHANGES)
    writer.create([NewPromise("idle", "f", runnable=False)])
    assert changes.wait(0) and not work.wait(0) and not timers.wait(0)
    writer.create([NewPromise("job", "f")])  # ready work
    assert work.wait(0) and not timers.wait(0)
    [claim] = writer.claim("w1")
    assert changes.wait(0) and not work.wait(0)  # a claim makes no work for anyone
    writer.retry("job", claim.counter, delay=60, error={"type": "E", "message": "later"})
    assert timers.wait(0) and not work.wait(0)  # due later: the schedule moved
    writer.heartbeat("w1")
    assert not work.wait(0) and not timers.wait(0)
    for w in (work, timers, changes):
        w.close()
    watcher.close()
    writer.close()


def test_a_waiting_workflow_woken_is_work(tmp_path: Path) -> None:
    watcher, writer = pair(tmp_path)
    writer.create([NewPromise("wf", "f"), NewPromise("wf.0", "g", parent="wf", runnable=False),
                   NewPromise("wf.1", "g", parent="wf", runnable=False)])
    [claim] = writer.claim("w1")
    assert writer.suspend("wf", claim.counter, ["wf.0", "wf.1"], affinity="w1", wake=Wake.ALL)
    work = watcher.watch(WORK)
    writer.settle("wf.0", State.RESOLVED, 0)
    assert not work.wait(0)  # still awaits wf.1
    writer.settle("wf.1", State.RESOLVED, 1)
    assert work.wait(0)
    work.close()
    watcher.close()
    writer.close()


# argv: store. Settles each id it is sent a line with, at once.
SETTLER = r"""
import sys
from runner.store import open_store, State
s = open_store(sys.argv[1])
print("ready", flush=True)
for line in sys.stdin:
    s.settle(line.strip(), State.RESOLVED, 1)
"""


def test_no_wake_up_is_missed_in_a_race(tmp_path: Path, processes: Spawn) -> None:
    """Each settle is sent off as its waiter reads the store: it lands before the read or after,
    and either way the waiter, watching since before the read, sees it."""
    count = 300
    store = open_store(str(tmp_path / "store"))
    store.create([NewPromise(f"p-{i}", "f", runnable=False) for i in range(count)])
    settler = processes([sys.executable, "-c", SETTLER, str(tmp_path / "store")],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert settler.stdout.readline() == "ready\n"
    waited = 0
    for i in range(count):
        watch = store.watch(settled_topic(f"p-{i}"))
        settler.stdin.write(f"p-{i}\n")
        settler.stdin.flush()
        while not store.get(f"p-{i}").settled:  # type: ignore[union-attr]
            waited += 1
            assert watch.wait(10), f"the settle of p-{i} woke nobody"
        watch.close()
    settler.stdin.close()
    assert settler.wait(30) == 0
    assert waited > 0, "the race never happened: every settle came before its read"
    store.close()


HOLDER = r"""
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(600)
"""


def test_a_waiter_blocks_in_the_kernel_and_a_killed_holder_never_wedges(tmp_path: Path,
                                                                          processes: Spawn) -> None:
    store = open_store(str(tmp_path / "store"))
    store.create([NewPromise("x", "f")])
    holder = processes([sys.executable, "-c", HOLDER, str(tmp_path / "store" / "lock")],
                       stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    got: list[object] = []
    reader = threading.Thread(target=lambda: got.append(store.get("x")))
    reader.start()
    # Blocked in flock, not polling: /proc/locks lists us as a waiter ("->") on the lock.
    ino = os.stat(tmp_path / "store" / "lock").st_ino
    wait_until(lambda: any(line.split()[1:2] == ["->"] and line.split()[6].endswith(f":{ino}")
                           and line.split()[5] == str(os.getpid())
                           for line in Path("/proc/locks").read_text().splitlines()),
               timeout=10, message="the reader never blocked on the lock")
    assert not got
    os.kill(holder.pid, signal.SIGKILL)  # the kernel drops its flock with it
    reader.join(timeout=10)
    assert not reader.is_alive() and got and got[0].id == "x"  # type: ignore[attr-defined]
    assert holder.wait(5) == -signal.SIGKILL
    fd = os.open(tmp_path / "store" / "lock", os.O_RDONLY)
    assert lock_holders(fd) == []
    os.close(fd)
    store.close()


def test_a_link_planted_in_wake_is_never_followed(tmp_path: Path) -> None:
    watcher, writer = pair(tmp_path)
    outside = tmp_path / "outside"
    outside.write_text("mine")
    os.utime(outside, (1_000_000, 1_000_000))
    (tmp_path / "store" / "wake" / "work").symlink_to(outside)
    work = watcher.watch(WORK)
    writer.create([NewPromise("job", "f")])
    assert outside.stat().st_mtime == 1_000_000 and outside.read_text() == "mine"
    assert work.wait(0)  # the link itself was touched, and watched as itself
    work.close()
    watcher.close()
    writer.close()


def test_a_watch_whose_file_cannot_be_made_watches_every_append(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk: no topic file, so woken by every write instead (spurious, never missed)."""
    watcher, writer = pair(tmp_path)
    writer.create([NewPromise("a", "f", runnable=False)])

    def full(*_: object, **__: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runner.store.watch, "open_file", full)
    mine = watcher.watch(settled_topic("a"))
    monkeypatch.undo()
    writer.create([NewPromise("b", "f", runnable=False)])
    assert mine.wait(0)  # spurious
    writer.settle("a", State.RESOLVED, 1)
    assert mine.wait(0)
    mine.close()
    watcher.close()
    writer.close()
