"""`make bench` rows for a long history: a store of 1,000,000 settled promises beside an empty one.

The history is 10,000 finished runs of a root and 99 children, written into the store's
history database by the same call compaction uses, then named in one ARCHIVE frame (as
compaction does). Building it through a million creates would take a minute and measure
nothing more. Both stores then get the same live work: ready tasks, a run in flight.

Each store is opened in a fresh process, which reports its open time, its RSS, and the
latency of a claim, a `get` of an old promise, the children of an old run (what `tree`
reads) and one page of `promises list`. The longest hold of the store lock while a
compaction archives and snapshots is measured in this process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from runner.store import DirStore, NewPromise, Promise, State
from runner.store import replica as replica_module
from runner.store.state import ARCHIVE
from tests.bench import Bench, Row, verdict

RUNS, CHILDREN = 10_000, 99
LIVE = 1_000  # ready tasks beside the history, and a run in flight with as many children

PROBE = r"""
import json, os, sys, time, statistics
import psutil
from runner.store import DirStore
t0 = time.perf_counter()
s = DirStore(sys.argv[1])
opened = time.perf_counter() - t0

def median(fn, n=200):
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)

def claim():
    [c] = s.claim("probe")
    s.release(c.id, c.counter)

out = {"open": opened, "claim": median(claim),
       "get": median(lambda: s.get("run-00042.7")),
       "tree": median(lambda: s.children("run-00042")),
       "page": median(lambda: s.search(limit=100, cursor=500_000), 50),
       "rss": psutil.Process().memory_info().rss}
print(json.dumps(out))
"""


def _history(s: DirStore) -> None:
    """10,000 finished runs into the history database, then the frame that says so."""
    number = s.state.created
    for start in range(0, RUNS, 100):
        runs = []
        for r in range(start, start + 100):
            root = f"run-{r:05d}"
            number += 1
            promises = [(number, Promise(root, State.RESOLVED, "fan_out", [r], None, {}, None, 1000.0,
                                         1001.0, r))]
            for i in range(CHILDREN):
                number += 1
                promises.append((number, Promise(f"{root}.{i}", State.RESOLVED, "leaf", [i], root, {}, None,
                                                 1000.0, 1000.5, i, 1)))
            runs.append((root, promises))
        high = s.archive.add(runs)
    with s._locked():
        s.state.created = number  # the numbers the history took, as if created here
        s._commit([[ARCHIVE, [], high]])


def _live(s: DirStore) -> None:
    s.create([NewPromise(f"ready-{i:04d}", "leaf", [i]) for i in range(LIVE)])
    s.create([NewPromise("inflight", "fan_out", runnable=False)]
             + [NewPromise(f"inflight.{i}", "leaf", [i], parent="inflight") for i in range(LIVE)])


def _probe(path: Path) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True,
                          timeout=300, check=True)
    return json.loads(done.stdout)


@contextmanager
def _longest_hold(s: DirStore) -> Any:
    """Record the longest time the store lock is held by this handle, in `holds[0]`."""
    holds = [0.0]
    log = s._log
    plain = log.locked

    @contextmanager
    def timed() -> Any:
        with plain():
            start = time.perf_counter()
            try:
                yield
            finally:
                holds[0] = max(holds[0], time.perf_counter() - start)

    log.locked = timed  # type: ignore[method-assign]
    try:
        yield holds
    finally:
        log.locked = plain  # type: ignore[method-assign]


def history_scale(b: Bench) -> list[Row]:
    """A store of 1,000,000 settled promises against an empty one, both with the same live work."""
    big, empty = b.path("history"), b.path("empty")
    start = time.perf_counter()
    with closing(DirStore(big)) as s:
        _history(s)
        _live(s)
    built = time.perf_counter() - start
    with closing(DirStore(empty)) as s:
        _live(s)
    base, full = _probe(empty), _probe(big)
    rows = []
    target, result = verdict(full["open"], 0.3, " s")
    rows.append(Row(f"open, {RUNS * (CHILDREN + 1):,} settled promises (built in {built:.0f} s)",
                    full["open"] * 1e3, target=f"{target}; empty store {base['open'] * 1e3:.0f} ms",
                    result=result))
    grown = (full["rss"] - base["rss"]) / 2**20
    target, result = verdict(grown, 60, " MiB")
    rows.append(Row("RSS of a process that opened it, minus an empty store's", target=target, result=result))
    target, result = verdict(full["claim"] / base["claim"], 1.2)
    rows.append(Row("claim beside that history", full["claim"] * 1e3, target=f"{target} empty store",
                    result=result))
    for key, name in (("get", "get an old promise"), ("tree", "children of an old run (tree)"),
                      ("page", "one page of promises list (100, mid-history)")):
        target, result = verdict(full[key] * 1e3, 50, " ms")
        rows.append(Row(name, full[key] * 1e3, target=target, result=result))
    rows.append(_compaction_hold(b.path("hold")))
    return rows


def _compaction_hold(path: Path) -> Row:
    """The longest lock hold while a log of finished runs and live work is compacted."""
    with closing(DirStore(path)) as s:
        _live(s)
        for r in range(300):  # finished runs, for the compaction to archive
            s.create([NewPromise(f"done-{r}", "fan_out", runnable=False)]
                     + [NewPromise(f"done-{r}.{i}", "leaf", [i], parent=f"done-{r}", resolved=True, value=i)
                        for i in range(20)])
            s.settle(f"done-{r}", State.RESOLVED, r)
        with _longest_hold(s) as holds:
            start = time.perf_counter()
            while s._log.segment < 3:  # two compactions, each past SEGMENT_BYTES of log
                s.create([NewPromise(f"fill-{time.perf_counter_ns()}", "leaf", ["x" * 500], runnable=False)])
            took = time.perf_counter() - start
    target, result = verdict(holds[0] * 1e3, 50, " ms")
    return Row(f"longest lock hold, two compactions of {replica_module.SEGMENT_BYTES >> 20} MiB "
               f"(all writes took {took:.1f} s)", holds[0] * 1e3, target=target, result=result)


SECTIONS = [history_scale]
