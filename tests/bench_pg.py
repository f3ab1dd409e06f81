"""The PostgreSQL store beside the directory store, in one run: `python -m tests.bench postgres`.

Rows: S1's notify overhead, fan_out_fan_in children/s at N=1,000 and 10,000 with 2
workers, and the commits each child costs on PostgreSQL (counted by the server, in
a database of the bench's own so nobody else's transactions are counted).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.bench import Bench, Row
from tests.bench_runner import _verdict, run_root, supervisor
from tests.helpers import PG_DATABASE, pg_unreachable


@contextmanager
def _database() -> Iterator[str]:
    """A database of the bench's own, dropped after it; yields its URL."""
    import psycopg
    from psycopg import sql

    name = f"bench_{int(time.time())}"
    with psycopg.connect(PG_DATABASE, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    base, _, _ = PG_DATABASE.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_DATABASE, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def _commits(url: str) -> int:
    """Transactions committed in the database, once every other session of it has ended (a
    session's counts reach the server's statistics when it ends, or seconds after)."""
    import psycopg

    with psycopg.connect(url.partition("?")[0], autocommit=True) as conn:
        deadline = time.monotonic() + 30
        while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                           "AND pid <> pg_backend_pid()").fetchone()[0]:
            if time.monotonic() > deadline:
                raise TimeoutError("sessions of the bench database did not end")
            time.sleep(0.05)
        conn.execute("SELECT pg_stat_clear_snapshot()")
        return int(conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
                   .fetchone()[0])


def _notify(b: Bench, url: str | None) -> float:
    overheads = []
    with supervisor(2, b.tmp, url) as (store, _):
        run_root(store, "warm", "notify_all", [{"order_id": "warm"}])
        for i in range(15):
            done = run_root(store, f"n-{i}", "notify_all", [{"order_id": f"o-{i}"}])
            assert done.settled_at is not None
            overheads.append((done.settled_at - done.created_at) * 1000 - done.value["slowest_ms"])
        store.close()
    return statistics.median(overheads)


def _fan_out(b: Bench, url: str | None, n: int) -> tuple[float, float | None]:
    """(children/s, commits per child: on PostgreSQL only). The commits of a supervisor that
    starts, idles as long and stops are counted apart and taken off: they are no child's."""
    items = [{"id": i, "data": "x"} for i in range(n)]
    before = None if url is None else _commits(url)
    with supervisor(2, b.tmp, url) as (store, _):
        started = time.monotonic()
        done = run_root(store, f"fan-{n}", "fan_out_fan_in", [items])
        ran = time.monotonic() - started
        store.close()
    assert done.settled_at is not None
    rate = n / (done.settled_at - done.created_at)
    if url is None or before is None:
        return rate, None
    busy = _commits(url) - before
    with supervisor(2, b.tmp, url) as (store, _):
        store.close()
        time.sleep(ran)
    idle = _commits(url) - busy - before
    return rate, (busy - idle) / n


def postgres(b: Bench) -> list[Row]:
    reason = pg_unreachable()
    if reason is not None:
        return [Row(f"postgres: skipped ({reason})")]
    rows: list[Row] = []
    with _database() as base:
        for name, where in (("dir", None), ("pg", f"{base}?schema=notify")):
            median = _notify(b, where)
            rows.append(Row(f"S1 notify_all overhead, {name} store (15 runs)", median_ms=median,
                            target="<= 10 ms", result=_verdict(median <= 10)))
        for n in (1_000, 10_000):
            for name, where in (("dir", None), ("pg", f"{base}?schema=fan{n}")):
                rate, per_child = _fan_out(b, where, n)
                label = f"fan_out_fan_in N={n:,}, 2 workers, {name} store: children/s"
                target: dict[str, Any] = {}
                if name == "pg" and n == 1_000:
                    target = {"target": ">= 2,000/s", "result": _verdict(rate >= 2000)}
                rows.append(Row(label, median_ms=1e3 / rate, ops=rate, **target))
                if per_child is not None:
                    rows.append(Row(f"commits per child, N={n:,}, pg store (is {per_child:.2f})",
                                    ops=per_child))
    return rows


SECTIONS = [postgres]
