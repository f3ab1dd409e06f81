"""Runner benchmarks: fan-out overhead, children per second, recovery after a SIGKILL.

Each section starts a real `runner start` on a fresh store and drives it
through the store API, timing from the promises' own created/settled times,
so process start-up is not counted.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from runner.owners import owner_pid
from runner.store import (
    CHANGES,
    TIMER,
    TIMER_DUE,
    NewPromise,
    Promise,
    PromiseStore,
    open_history,
    open_store,
    settled_topic,
)
from tests.bench import Bench, Row

ROOT = Path(__file__).resolve().parent.parent
# The project's apps (pyproject) and the timers the timer rows run.
APPS = ",".join(["examples.notify", "examples.fan_out", "examples.fanout_rpc", "examples.factorial",
                 "examples.approval", "tests.apps.timers"])


@contextlib.contextmanager
def supervisor(workers: int, base: Path, url: str | None = None) -> Iterator[tuple[PromiseStore, Path]]:
    """A `runner start` on a fresh store (a directory under `base`, or the PostgreSQL store at
    `url`), ready when all its workers are up."""
    store_dir = Path(tempfile.mkdtemp(dir=base)) / "store"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NOTIFY_OUTBOX": str(store_dir.parent / "outbox.jsonl"),
           "RUNNER_APP": APPS}
    proc = subprocess.Popen([sys.executable, "-m", "runner", "start", "--workers", str(workers),
                             "--store", url or str(store_dir)], env=env, cwd=ROOT, start_new_session=True,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while url is None and not store_dir.joinpath("FORMAT").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        store = open_store(url or str(store_dir))
        while len((store.supervisor() or {}).get("workers", [])) < workers:
            if time.monotonic() > deadline:
                raise RuntimeError("supervisor did not start")
            time.sleep(0.02)
        yield store, store_dir
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_root(store: PromiseStore, promise_id: str, func: str, args: list[Any],
             timeout: float = 300) -> Promise:
    watch = store.watch(settled_topic(promise_id))
    try:
        store.create([NewPromise(promise_id, func, args)])
        deadline = time.monotonic() + timeout
        while not (found := store.get(promise_id)) or not found.settled:
            if time.monotonic() > deadline:
                raise TimeoutError(promise_id)
            watch.wait(0.5)
        return found
    finally:
        watch.close()


def notify_overhead(b: Bench) -> list[Row]:
    """Wall time of notify_all minus its slowest channel, median of 15 runs."""
    overheads = []
    with supervisor(2, b.tmp) as (store, _):
        run_root(store, "warm", "notify_all", [{"order_id": "warm"}])
        for i in range(15):
            done = run_root(store, f"n-{i}", "notify_all", [{"order_id": f"o-{i}"}])
            assert done.settled_at is not None
            overheads.append((done.settled_at - done.created_at) * 1000 - done.value["slowest_ms"])
    median = statistics.median(overheads)
    return [Row("notify_all overhead: wall - slowest channel (15 runs)", median_ms=median,
                p99_ms=max(overheads), target="<= 10 ms", result=_verdict(median <= 10))]


def fan_out_rate(b: Bench) -> list[Row]:
    """Children per second of fan_out_fan_in at three sizes, with 2 and 4 workers."""
    rows: list[Row] = []
    for workers in (2, 4):
        with supervisor(workers, b.tmp) as (store, _):
            per_child = {}
            for n in (100, 1_000, 10_000):
                items = [{"id": i, "data": "x"} for i in range(n)]
                done = run_root(store, f"fan-{n}", "fan_out_fan_in", [items])
                assert done.settled_at is not None
                seconds = done.settled_at - done.created_at
                per_child[n] = seconds / n
                rows.append(Row(f"fan_out_fan_in N={n:,}, {workers} workers: children/s",
                                median_ms=per_child[n] * 1e3, ops=n / seconds,
                                target=">= 1,000/s" if n == 1_000 else "",
                                result=_verdict(n / seconds >= 1000) if n == 1_000 else ""))
            ratio = per_child[10_000] / per_child[1_000]
            rows.append(Row(f"cost per child N=10,000 / N=1,000, {workers} workers",
                            target=f"<= 1.25x (is {ratio:.2f}x)", result=_verdict(ratio <= 1.25)))
    return rows


def kill_recovery(b: Bench) -> list[Row]:
    """From a worker's SIGKILL until its in-flight branch is claimed again, median of 5."""
    delays = []
    with supervisor(2, b.tmp) as (store, _):
        watch = store.watch(CHANGES)
        for i in range(5):
            root = f"kill-{i}"
            event = {"order_id": root, "delays": {"push": 3.0}}
            store.create([NewPromise(root, "notify_all", [event])])
            push = f"{root}.3"
            owner = _wait_for(store, watch, lambda p=push: _owner_of(store, p))
            killed = time.time()
            os.kill(owner_pid(owner) or 0, signal.SIGKILL)
            _wait_for(store, watch, lambda o=owner, p=push: (_owner_of(store, p) or o) != o or None)
            delays.append((time.time() - killed) * 1000)
            _wait_for(store, watch, lambda r=root: store.get(r).settled or None)  # type: ignore[union-attr]
        watch.close()
    median = statistics.median(delays)
    return [Row("SIGKILL of a worker -> its branch claimed again (5 kills)", median_ms=median,
                p99_ms=max(delays), target="<= 100 ms", result=_verdict(median <= 100))]


def _owner_of(store: PromiseStore, promise_id: str) -> str | None:
    return next((t.owner for t in store.claims() if t.id == promise_id), None)


def _wait_for(store: PromiseStore, watch: Any, probe: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while (found := probe()) is None:
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not reached")
        watch.wait(0.05)
    return found


def _verdict(ok: bool) -> str:
    return "OK" if ok else "MISS"


def timers_and_wakeups(b: Bench) -> list[Row]:
    """Timer lateness with 1,000 timers due in the same second; wake-ups of a ctx.all of 1,000."""
    with supervisor(2, b.tmp) as (store, store_dir):
        due = time.time() + 10  # 1,000 sleepers are written in a few seconds
        run_root(store, "sleepers", "many_sleepers", [1000, due])
        fired = [p for p in store.search(limit=100_000).items if p.func == TIMER and p.settled_at is not None]
        lags = sorted((p.settled_at or 0.0) - p.tags[TIMER_DUE] for p in fired)
        median, p99 = statistics.median(lags) * 1e3, lags[int(len(lags) * 0.99)] * 1e3
        run_root(store, "fan", "fan_all", [1000])
        history = open_history(str(store_dir))
        wakeups = sum(e.promise_id == "fan" for e in history.executions()) - 1  # its first run is no wake-up
        history.close()
    return [Row(f"timer lateness, {len(lags):,} timers due at once", median_ms=median, p99_ms=p99,
                target="median <= 20 ms", result=_verdict(len(lags) == 1000 and median <= 20)),
            Row("wake-ups of a workflow awaiting ctx.all of 1,000 children", ops=float(wakeups),
                target="1", result=_verdict(wakeups == 1))]


def fan_out_targets(b: Bench) -> list[Row]:
    """Issue 12's fan-out targets on 2 workers: children/s at N=10,000, CPU per child across
    the supervisor and its workers (user + sys), and N=100,000's cost per child against it."""
    rows: list[Row] = []
    with supervisor(2, b.tmp) as (store, _):
        info = store.supervisor() or {}
        processes = [psutil.Process(pid) for pid in [info["pid"], *info["workers"]]]
        run_root(store, "warm", "fan_out_fan_in", [[{"id": i, "data": "x"} for i in range(1000)]])
        per_child = {}
        for n in (10_000, 100_000):
            items = [{"id": i, "data": "x"} for i in range(n)]
            before = _cpu(processes)
            done = run_root(store, f"fan-{n}", "fan_out_fan_in", [items])
            cpu = _cpu(processes) - before
            assert done.settled_at is not None
            seconds = done.settled_at - done.created_at
            per_child[n] = seconds / n
            rate = n / seconds
            rows.append(Row(f"fan_out_fan_in N={n:,}, 2 workers: children/s", median_ms=per_child[n] * 1e3,
                            ops=rate, target=">= 6,000/s" if n == 10_000 else "",
                            result=_verdict(rate >= 6000) if n == 10_000 else ""))
            rows.append(Row(f"  CPU per child, supervisor + workers, N={n:,}", median_ms=cpu / n * 1e3,
                            target="<= 0.15 ms" if n == 10_000 else "",
                            result=_verdict(cpu / n <= 0.15e-3) if n == 10_000 else ""))
    ratio = per_child[100_000] / per_child[10_000]
    rows.append(Row("cost per child N=100,000 / N=10,000, 2 workers",
                    target=f"<= 1.1x (is {ratio:.2f}x)", result=_verdict(ratio <= 1.1)))
    return rows


def _cpu(processes: list[psutil.Process]) -> float:
    """Seconds of CPU (user + system) the processes have used so far."""
    return sum(t.user + t.system for t in (p.cpu_times() for p in processes))


SECTIONS = [notify_overhead, fan_out_rate, kill_recovery, timers_and_wakeups, fan_out_targets]
