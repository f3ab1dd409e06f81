"""`make bench`: the store's costs side by side, measured in one run (not a test).

Run as ``python -m tests.bench [SECTION...]``. It prints one aligned table: the two disk floors, the
latency (median, p99) and throughput of each store operation with one process and with
two at once, claim latency as the store grows, the time to open a big store, and every
target of the store issue with OK or MISS.

The disk of a shared machine drifts (other writers, the hypervisor), so each ratio is
taken against an append floor measured at the same time: interleaved with the operations
in one process, and as a burst just before each phase with two processes.

More sections can be added: a section is a function taking the `Bench` (a scratch
directory and the facts measured so far, such as the append floor) and returning rows;
`main()` runs every function in `SECTIONS` (or those it is given) and prints the table.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.store import DirStore, NewPromise, State
from runner.store.state import WAIT

REPO = Path(__file__).resolve().parent.parent
N = 2000  # timed operations per measurement
PAYLOAD = [{"order_id": "o-1", "channel": "email", "body": "x" * 100}]  # a frame of ~200 B


@dataclass
class Row:
    name: str
    median_ms: float | None = None
    p99_ms: float | None = None
    ops: float | None = None  # per second
    target: str = ""
    result: str = ""  # OK / MISS when there is a target


@dataclass
class Bench:
    """What a section gets: a scratch directory on the store's disk, and what was measured so far."""

    tmp: Path
    facts: dict[str, float]

    def path(self, name: str) -> Path:
        """A fresh, absent store path."""
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.tmp)) / "store"

    @contextmanager
    def append_floor(self) -> Iterator[Callable[[Timings], None]]:
        """`sample(timings)`: time one 200 B append + fdatasync to a file of our own into `timings`."""
        fd = os.open(self.tmp / "floor.append", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        data = os.urandom(200)

        def sample(t: Timings) -> None:
            with t.one():
                os.write(fd, data)
                os.fdatasync(fd)

        try:
            yield sample
        finally:
            os.close(fd)


Section = Callable[[Bench], list[Row]]


# -- measuring -------------------------------------------------------------------------------


class Timings:
    """Per-call latencies, in seconds."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    @contextmanager
    def one(self) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.samples.append(time.perf_counter() - start)

    def median(self) -> float:
        return statistics.median(self.samples)

    def p99(self) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]

    def row(self, name: str, wall: float | None = None, target: str = "", result: str = "") -> Row:
        ops = len(self.samples) / (wall if wall is not None else sum(self.samples))
        return Row(name, self.median() * 1e3, self.p99() * 1e3, ops, target, result)


def verdict(value: float, limit: float, unit: str = "x") -> tuple[str, str]:
    return f"<= {limit:g}{unit} (is {value:.2f}{unit})", "OK" if value <= limit else "MISS"


def ratio_row(t: Timings, name: str, floor: Timings, limit: float, wall: float | None = None) -> Row:
    target, result = verdict(t.median() / floor.median(), limit)
    return t.row(name, wall, f"{target} append floor ({floor.median() * 1e3:.3f} ms then)", result)


def new(pid: str, runnable: bool = True) -> NewPromise:
    return NewPromise(pid, "leaf", PAYLOAD, runnable=runnable)


# -- sections --------------------------------------------------------------------------------


def floors(b: Bench) -> list[Row]:
    """What the disk allows: an append + fdatasync, and a new file made durable."""
    data = os.urandom(200)
    d = b.path("floor").parent
    append = Timings()
    with b.append_floor() as sample:
        for _ in range(N):
            sample(append)
    newfile = Timings()
    for i in range(N // 4):
        with newfile.one():
            tmp = d / f".f{i}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, data)
            os.fsync(fd)
            os.close(fd)
            os.rename(tmp, d / f"f{i}")
            dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
            os.fsync(dfd)
            os.close(dfd)
    b.facts["append_floor"] = append.median()
    return [append.row("floor: append 200 B + fdatasync"),
            newfile.row("floor: new file 200 B + fsync + rename + fsync(dir)")]


def single_process(b: Bench) -> list[Row]:
    create, claim, complete, settle = Timings(), Timings(), Timings(), Timings()
    floor = {name: Timings() for name in ("create", "claim", "complete", "settle")}
    with closing(DirStore(b.path("single"))) as s, b.append_floor() as sample:
        for i in range(N):
            sample(floor["create"])
            with create.one():
                s.create([new(f"job-{i}")])
        claims = []
        for _ in range(N):
            sample(floor["claim"])
            with claim.one():
                claims.extend(s.claim("w1"))
        assert len(claims) == N
        for c in claims:
            sample(floor["complete"])
            with complete.one():
                s.complete(c.id, c.counter, State.RESOLVED, {"ok": True})
        s.create([new(f"plain-{i}", runnable=False) for i in range(N)])
        for i in range(N):
            sample(floor["settle"])
            with settle.one():
                s.settle(f"plain-{i}", State.RESOLVED, {"ok": True})
    return [ratio_row(create, "create, 1 process", floor["create"], 3),
            ratio_row(settle, "settle, 1 process", floor["settle"], 3),
            ratio_row(claim, "claim, 1 process", floor["claim"], 4),
            ratio_row(complete, "complete, 1 process", floor["complete"], 3)]


def _phases(path: str, me: int, n: int, barrier: Any, out: Any) -> None:
    """One of the two processes: each phase starts and ends with both at the barrier."""
    results: dict[str, list[float]] = {}
    with closing(DirStore(path)) as s:
        phase = Timings()
        barrier.wait()
        for i in range(n):
            with phase.one():
                s.create([new(f"p{me}-{i}")])
        results["create"] = phase.samples
        barrier.wait()
        phase, claims = Timings(), []
        barrier.wait()
        for _ in range(n):
            with phase.one():
                claims.extend(s.claim(f"w{me}"))
        results["claim"] = phase.samples
        barrier.wait()
        phase = Timings()
        barrier.wait()
        for c in claims:
            with phase.one():
                s.complete(c.id, c.counter, State.RESOLVED, {"ok": True})
        results["complete"] = phase.samples
        s.create([new(f"q{me}-{i}", runnable=False) for i in range(n)])
        barrier.wait()
        phase = Timings()
        barrier.wait()
        for i in range(n):
            with phase.one():
                s.settle(f"q{me}-{i}", State.RESOLVED, {"ok": True})
        results["settle"] = phase.samples
        barrier.wait()
        phase = Timings()
        barrier.wait()
        for i in range(n // 2):  # the runner's own loop: create, claim, complete
            with phase.one():
                s.create([new(f"r{me}-{i}")])
            with phase.one():
                [c] = s.claim(f"w{me}") or [None]
            if c is not None:
                with phase.one():
                    s.complete(c.id, c.counter, State.RESOLVED, None)
        results["loop"] = phase.samples
        barrier.wait()
    out.put((me, results))


def two_processes(b: Bench) -> list[Row]:
    """Two processes on one store, each phase started together; ops/s counts both."""
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(3), ctx.Queue()
    path = str(b.path("two"))
    DirStore(path).close()
    procs = [ctx.Process(target=_phases, args=(path, me, N // 2, barrier, out)) for me in (0, 1)]
    for p in procs:
        p.start()
    walls, floors = {}, {}
    for name in ("create", "claim", "complete", "settle", "loop"):
        floors[name] = Timings()
        with b.append_floor() as sample:  # the disk just before the phase (both children wait)
            for _ in range(300):
                sample(floors[name])
        barrier.wait()
        start = time.perf_counter()
        barrier.wait()
        walls[name] = time.perf_counter() - start
    got = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join()
    rows = []
    for name, limit in (("create", 3), ("settle", 3), ("claim", 4), ("complete", 3)):
        t = Timings()
        t.samples = got[0][name] + got[1][name]
        rows.append(ratio_row(t, f"{name}, 2 processes", floors[name], limit, walls[name]))
    t = Timings()
    t.samples = got[0]["loop"] + got[1]["loop"]
    rows.append(t.row("create+claim+complete loop, 2 processes", walls["loop"]))
    return rows


def claim_scaling(b: Bench) -> list[Row]:
    """Claim latency with 100, 10,000 and 100,000 promises stored (all of them ready)."""
    rows, medians = [], {}
    big = b.path("scale")
    for size in (100, 10_000, 100_000):
        path = big if size == 100_000 else b.path(f"scale{size}")
        with closing(DirStore(path)) as s:
            for start in range(0, size, 5000):
                s.create([new(f"s-{i:06d}") for i in range(start, min(size, start + 5000))])
            t = Timings()
            for _ in range(300):
                with t.one():
                    [c] = s.claim("w")
                s.release(c.id, c.counter)  # back in the queue, untimed
            medians[size] = t.median()
            rows.append(t.row(f"claim, {size:,} stored"))
            if size == 100_000:  # a fan-out being drained: half of it claimed already
                for _ in range(10):
                    s.claim("drain", limit=5000)
                t = Timings()
                for _ in range(300):
                    with t.one():
                        [c] = s.claim("w")
                    s.release(c.id, c.counter)
                rows.append(t.row("claim, 100,000 stored, 50,000 claimed"))
    target, result = verdict(medians[100_000] / medians[100], 1.5)
    rows[2].target, rows[2].result = f"{target} claim@100", result
    row = _claim_beside_waiting(b.path("affine"))
    target, result = verdict(row.median_ms / 1e3 / medians[100], 1.2)
    row.target, row.result = f"{target} claim@100", result
    rows.append(row)
    opens = Timings()
    for _ in range(3):
        with opens.one():
            DirStore(big).close()
    target, result = verdict(opens.median(), 1.0, " s")
    row = opens.row("open a store of 100,000 promises", target=target, result=result)
    row.ops = None
    rows.append(row)
    return rows


def _claim_beside_waiting(path: Path, waiting: int = 100_000) -> Row:
    """Claim latency by a worker with `waiting` workflows suspended with affinity to it
    (built with raw frames: 100,000 suspends one by one would take half a minute)."""
    with closing(DirStore(path)) as s:
        for start in range(0, waiting, 5000):
            ids = range(start, min(waiting, start + 5000))
            s.create([new(f"wf-{i:06d}") for i in ids] + [new(f"wf-{i:06d}.0", runnable=False) for i in ids])
            claims = s.claim("w", limit=5000)
            with s._locked():
                s._commit([[WAIT, c.id, [f"{c.id}.0"], "w"] for c in claims])
        s.create([new(f"r-{i:03d}") for i in range(100)])
        t = Timings()
        for _ in range(300):
            with t.one():
                [c] = s.claim("w")
            s.release(c.id, c.counter)
        return t.row(f"claim, {waiting:,} workflows waiting with affinity to the claimer")


SECTIONS: list[Section] = [floors, single_process, two_processes, claim_scaling]


# -- the table -------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def render(rows: Sequence[Row]) -> str:
    header = ("measure", "median ms", "p99 ms", "ops/s", "target", "")
    cells = [header] + [(r.name, _fmt(r.median_ms, 3), _fmt(r.p99_ms, 3), _fmt(r.ops, 0), r.target, r.result)
                        for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    right = {1, 2, 3}
    lines = []
    for n, c in enumerate(cells):
        lines.append("  ".join(v.rjust(w) if i in right else v.ljust(w)
                               for i, (v, w) in enumerate(zip(c, widths, strict=True))).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def scratch_dir() -> Path:
    """A scratch directory on the same disk as the repository (where stores live)."""
    tmp = Path(tempfile.gettempdir())
    if os.stat(tmp).st_dev != os.stat(REPO).st_dev:
        tmp = REPO / ".bench-tmp"
        tmp.mkdir(exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="runner-bench-", dir=tmp))


def main(sections: Sequence[Section] = SECTIONS) -> int:
    tmp = scratch_dir()
    bench = Bench(tmp, {})
    rows: list[Row] = []
    started = time.perf_counter()
    try:
        for section in sections:
            rows.extend(section(bench))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(render(rows))
    missed = sum(r.result == "MISS" for r in rows)
    print(f"\n{len(rows)} measures in {time.perf_counter() - started:.0f} s on {tmp.parent} "
          f"({os.cpu_count()} CPUs); {missed} target(s) missed")
    return 0


def all_sections() -> list[Section]:
    from tests.bench_history import SECTIONS as HISTORY  # a long history's rows follow the store's
    from tests.bench_pg import SECTIONS as POSTGRES  # then PostgreSQL beside the directory store
    from tests.bench_pg_multi import SECTIONS as PG_MULTI  # several supervisors on one PostgreSQL
    from tests.bench_runner import SECTIONS as RUNNER  # then the runner's

    return [*SECTIONS, *HISTORY, *RUNNER, *POSTGRES, *PG_MULTI]


def chosen(names: Sequence[str]) -> list[Section]:
    """The sections named (all of them when none is): `python -m tests.bench history_scale`."""
    sections = all_sections()
    if not names:
        return sections
    by_name = {s.__name__: s for s in sections}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise SystemExit(f"no bench section {unknown[0]!r}; there are: {', '.join(by_name)}")
    return [by_name[n] for n in names]


if __name__ == "__main__":
    sys.exit(main(chosen(sys.argv[1:])))
