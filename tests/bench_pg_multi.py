"""Bench section `postgres_multi`: several supervisors on one PostgreSQL store.

`python -m tests.bench postgres_multi`: fan_out_fan_in N=1,000 with one supervisor and
then two on the same store (2 workers each), timed from the root's own created/settled
times; and from a supervisor's SIGKILL (with its workers) until every branch it held
is claimed by the other supervisor's workers: at once when its death is seen on this
host, once its heartbeat lapses when it is lost with its host (simulated: its link to
the database blackholed just before the kill, so the server keeps its sessions).
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runner.owners import owner_supervisor
from runner.store import NewPromise, PromiseStore, open_store
from tests.bench import Bench, Row
from tests.bench_runner import ROOT, run_root
from tests.helpers import drop_pg_schema, new_pg_schema, pg_unreachable
from tests.netproxy import LinkProxy

APPS = "examples.fan_out,tests.apps.partition"
LAPSE = 2.0
PG_HOST = ("127.0.0.1", 5432)
KILLS = 3


@contextlib.contextmanager
def schema() -> Iterator[str]:
    url = new_pg_schema()
    try:
        yield url
    finally:
        drop_pg_schema(url)


class Supervisors:
    """`runner start` processes on one store URL, each killed (with its workers) at the end."""

    def __init__(self, url: str, store: PromiseStore) -> None:
        self.url, self.store = url, store
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, workers: int = 2, url: str | None = None) -> dict[str, Any]:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "RUNNER_APP": APPS}
        proc = subprocess.Popen([sys.executable, "-m", "runner", "start", "--workers", str(workers),
                                 "--lapse", f"{LAPSE}s", "--store", url or self.url], env=env, cwd=ROOT,
                                start_new_session=True, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        deadline = time.monotonic() + 30
        while True:
            info = next((i for i in self.store.supervisors() if i.get("pid") == proc.pid), {})
            if len(info.get("workers") or ()) >= workers:
                return info
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("supervisor did not start")
            time.sleep(0.02)

    def kill(self, pid: int) -> float:
        """SIGKILL the supervisor and its workers; the instant of the kill."""
        at = time.time()
        os.killpg(pid, signal.SIGKILL)
        next(p for p in self.procs if p.pid == pid).wait()
        return at

    def stop_all(self) -> None:
        """SIGTERM every live one (a drain, then a clean exit that retires its id)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def postgres_multi(b: Bench) -> list[Row]:
    reason = pg_unreachable()
    if reason is not None:
        return [Row(f"postgres_multi skipped: {reason}")]
    with schema() as url:
        store = open_store(url)
        sups = Supervisors(url, store)
        try:
            rows = _fan_out(store, sups)
            rows += _takeover(store, sups, b)
        finally:
            sups.close()
            store.close()
    return rows


def _fan_out(store: PromiseStore, sups: Supervisors) -> list[Row]:
    """Children/s of fan_out_fan_in N=1,000 on one supervisor, then on two."""
    rows = []
    items = [{"id": i, "data": "x"} for i in range(1_000)]
    for count in (1, 2):
        while len(sups.procs) < count:
            sups.start()
        run_root(store, f"warm-{count}", "fan_out_fan_in", [items[:100]])
        rates = []
        for i in range(3):
            done = run_root(store, f"fan-{count}-{i}", "fan_out_fan_in", [items])
            assert done.settled_at is not None
            rates.append(len(items) / (done.settled_at - done.created_at))
        rate = statistics.median(rates)
        rows.append(Row(f"PG fan_out_fan_in N=1,000, {count} supervisor{'s' * (count > 1)} x 2 workers: "
                        "children/s (median of 3)", median_ms=1e3 / rate, ops=rate,
                        target=">= 2,000/s", result="OK" if rate >= 2000 else "MISS"))
    return rows


def _takeover(store: PromiseStore, sups: Supervisors, b: Bench) -> list[Row]:
    """From a supervisor's SIGKILL until the other's workers claim every branch it held: on
    this host, where its death is seen; and as a host lost (its link blackholed first, so
    the server keeps its sessions), where its beat must lapse."""
    sups.stop_all()
    rows = []
    trace = str(Path(b.tmp) / "naps.jsonl")
    limit = (LAPSE + 1) * 1e3
    for lost, label in ((False, "on this host"), (True, "host lost")):
        delays = [_one_takeover(store, sups, f"nap-{label[:4]}-{k}", trace, lost=lost) for k in range(KILLS)]
        rows.append(Row(f"PG SIGKILL of 1 of 2 supervisors, {label} -> its branches claimed elsewhere "
                        f"({KILLS} kills, lapse {LAPSE:g} s)", median_ms=statistics.median(delays),
                        p99_ms=max(delays), target=f"<= {limit:,.0f} ms",
                        result="OK" if max(delays) <= limit else "MISS"))
    return rows


def _one_takeover(store: PromiseStore, sups: Supervisors, prefix: str, trace: str, *, lost: bool) -> float:
    """The victim alone claims 8 naps; then the other starts, and the victim is killed."""
    with LinkProxy(PG_HOST) as proxy:
        return _kill_one(store, sups, prefix, trace, proxy if lost else None)


def _kill_one(store: PromiseStore, sups: Supervisors, prefix: str, trace: str,
              proxy: LinkProxy | None) -> float:
    victim = sups.start(url=None if proxy is None else proxy.url(sups.url))
    ids = {f"{prefix}.{i}" for i in range(8)}
    store.create([NewPromise(pid, "partition_nap", [trace, i, 3.0]) for i, pid in enumerate(sorted(ids))])

    def claimed(by_victim: bool) -> dict[str, float]:
        return {t.id: t.claimed_at or 0.0 for t in store.claims()
                if t.id in ids and (owner_supervisor(t.owner) == victim["id"]) is by_victim}

    held = set(_wait(lambda: claimed(True) or None))
    sups.start()
    if proxy is not None:
        proxy.blackhole()
    killed = sups.kill(victim["pid"])
    again = _wait(lambda: ((found := claimed(False)).keys() >= held and found) or None)
    _wait(lambda: all((p := store.get(pid)) is not None and p.settled for pid in ids) or None)
    sups.stop_all()
    return (max(again[pid] for pid in held) - killed) * 1e3


def _wait(probe: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while (found := probe()) is None:
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not reached")
        time.sleep(0.01)
    return found


SECTIONS = [postgres_multi]
