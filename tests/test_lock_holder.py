"""A process stopped while it holds the store lock: named by those who wait, killed if it is ours."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from runner.store import open_store
from runner.store.lockholder import is_stopped, lock_holders
from runner.supervisor import STOPPED_HOLDER, LockWatchdog
from tests.e2e_support import Workspace
from tests.helpers import kill_group, runner_cmd, wait_until

HOLD = "import fcntl, os, sys, time\nfd = os.open(sys.argv[1], os.O_RDWR)\nfcntl.flock(fd, fcntl.LOCK_EX)\n" \
       "print('held', flush=True)\ntime.sleep(600)\n"


def hold_lock(store_dir: Path) -> subprocess.Popen[str]:
    """Another process takes the store lock and is stopped with it: it cannot let go."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(store_dir / "lock")], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    os.kill(proc.pid, signal.SIGSTOP)
    wait_until(lambda: is_stopped(proc.pid), timeout=5, message="holder never stopped")
    return proc


def test_holders_are_read_from_proc_locks(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    holder = hold_lock(tmp_path / "store")
    try:
        assert store.lock_holders() == [holder.pid]
        fd = os.open(tmp_path / "other", os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert lock_holders(fd) == [os.getpid()]  # ours, on another file: told apart by inode
        os.close(fd)
    finally:
        holder.kill()
        holder.wait()
    assert store.lock_holders() == []
    store.close()


def test_watchdog_kills_only_a_worker_of_ours_stopped_long_enough(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    holder = hold_lock(tmp_path / "store")
    try:
        stranger = LockWatchdog(store, lambda: set())
        now = time.monotonic()
        stranger.check(now)
        stranger.check(now + STOPPED_HOLDER + 1)
        assert holder.poll() is None  # not ours: only named, never killed
        ours = LockWatchdog(store, lambda: {holder.pid})
        ours.check(now)
        ours.check(now + STOPPED_HOLDER / 2)
        assert holder.poll() is None  # not stopped long enough yet
        ours.check(now + STOPPED_HOLDER)
        assert holder.wait(timeout=5) == -signal.SIGKILL
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        store.close()


def test_waiting_command_names_the_stopped_holder(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    open_store(str(store_dir)).close()
    holder = hold_lock(store_dir)
    waiter = subprocess.Popen(runner_cmd("promises", "list", "--store", str(store_dir)),
                              stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        assert waiter.stderr is not None
        line = waiter.stderr.readline()  # within a second or so: no hanging mute
        assert "waiting for the store lock" in line and f"pid {holder.pid}" in line and "stopped" in line
        holder.kill()
        holder.wait()
        assert waiter.wait(timeout=20) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
        kill_group(waiter)


def stop_while_holding(ws: Workspace, pid: int, tries: int = 2000) -> bool:
    """SIGSTOP a busy worker at moments until it is caught holding the store lock."""
    for _ in range(tries):
        os.kill(pid, signal.SIGSTOP)
        wait_until(lambda: is_stopped(pid), timeout=5, message="worker never stopped")
        if ws.store.lock_holders() == [pid]:
            return True
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.002)  # let it run on to another moment
    return False


def test_supervisor_frees_the_lock_from_its_stopped_worker(ws: Workspace) -> None:
    ws.start()
    items = [{"id": i, "data": f"d{i}"} for i in range(3000)]
    assert ws.cli("invoke", "fan_out_fan_in", "--no-wait", "--id", "frozen", "--arg", json.dumps(items),
                  ).returncode == 0
    worker = ws.supervisor()["workers"][0]
    assert stop_while_holding(ws, worker), "the worker was never caught holding the lock"
    stopped = time.monotonic()
    wait_until(lambda: worker not in ws.supervisor()["workers"], timeout=STOPPED_HOLDER + 10,
               message=lambda: f"stopped worker not killed: {ws.stderr('supervisor')}")
    assert time.monotonic() - stopped >= STOPPED_HOLDER - 0.5  # it was given its bound first
    assert "holding the store lock; killing it" in ws.stderr("supervisor")
    done = ws.invoke("fan_out_fan_in", items, promise_id="frozen", timeout=120)
    assert done.returncode == 0, done.stderr
