"""One connection to the store's database, safe to share between threads and forks.

Every call runs in one transaction (committed, so durable, before it returns: the
server's synchronous commit flushes the WAL). A deadlock between two processes
aborts one transaction, which then runs again from the start: its body only
reads and writes through the transaction it is given.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg import errors, sql

from ..errors import StoreIOError, StoreUnavailable
from .listen import PgWatch, route
from .schema import prepare
from .url import redact

T = TypeVar("T")
IDLE_IN_TRANSACTION_MS = 5000
_RETRIES = 20
# Connections a forked child inherited and must neither use nor close: closing sends the
# server a Terminate on the parent's socket. Kept referenced so they are never finalised.
_inherited: list[Any] = []


def connect(dsn: str, shown: str, schema: str, *, autocommit: bool = False) -> Any:
    """A connection to a store of this version in `schema`, first on its search path
    (created if new); a failure is one clear line naming the store without its password."""
    try:
        conn = psycopg.connect(dsn, autocommit=autocommit)
    except psycopg.Error as exc:
        raise StoreUnavailable(f"cannot connect to {shown}: {_first_line(exc)}") from None
    try:
        prepare(conn, schema)
        with conn.transaction():
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
            # A process cut off inside a transaction (a partition that holds its connection
            # open) would keep its rows locked for as long as the server keeps its session:
            # ours last milliseconds, so one idle this long is ended, its change undone.
            conn.execute(f"SET idle_in_transaction_session_timeout = {IDLE_IN_TRANSACTION_MS}")
    except psycopg.Error as exc:
        conn.close()
        raise StoreUnavailable(f"cannot use {shown}: {_first_line(exc)}") from None
    except BaseException:
        conn.close()
        raise
    return conn


def _first_line(exc: BaseException) -> str:
    return redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)


def _rows(cursor: Any) -> list[Any]:
    return cursor.fetchall() if cursor.description is not None else []


def forget(conn: Any, pid: int) -> None:
    """Close `conn`, opened by process `pid`; in a forked child, only let go of it."""
    if os.getpid() == pid:
        conn.close()
    else:
        _inherited.append(conn)


class Tx:
    """The transaction a call's body writes through; notifications go out with its commit."""

    def __init__(self, conn: Any, schema: str) -> None:
        self._conn = conn
        self._schema = schema
        self.topics: set[str] = set()

    def execute(self, query: Any, params: Any = None) -> Any:
        return self._conn.execute(query, params)

    def notify(self, *topics: str) -> None:
        self.topics.update(topics)

    def channel(self, topic: str) -> str:
        """The channel of a topic, for a statement that sends its own NOTIFY (one round trip
        less; settled:<id> goes out on the settled channel with the id as payload)."""
        return route(self._schema, topic)[0]

    def send(self) -> None:
        """NOTIFY every topic of this transaction: delivered at its commit, never before."""
        if not self.topics:
            return
        routed = [route(self._schema, t) for t in sorted(self.topics)]
        self._conn.execute("SELECT pg_notify(c, p) FROM unnest(%s::text[], %s::text[]) AS n(c, p)",
                           ([c for c, _ in routed], [p for _, p in routed]))


class Database:
    def __init__(self, dsn: str, shown: str, schema: str) -> None:
        self.dsn, self.shown, self.schema = dsn, shown, schema
        self._pid = os.getpid()
        self._mutex = threading.Lock()
        self._closed = False
        # Autocommit: a lone statement is its own transaction (one round trip, no BEGIN or
        # COMMIT of its own); run() opens one around several.
        self._conn: Any = connect(dsn, shown, schema, autocommit=True)

    def run(self, body: Callable[[Tx], T], *, alone: bool = False) -> T:
        """`body` in one transaction, run again after a deadlock or a serialization failure
        (`alone`: its one statement is the transaction, and it notifies nothing)."""
        with self._mutex:
            if self._closed:
                raise StoreUnavailable(f"the store {self.shown} is closed")
            if self._conn is None:
                self._conn = connect(self.dsn, self.shown, self.schema, autocommit=True)
            for attempt in range(_RETRIES):
                tx = Tx(self._conn, self.schema)
                try:
                    # Pipelined: a statement whose result is not read yet goes out with the
                    # next one read, or with the commit: fewer round trips per call.
                    if alone:
                        return body(tx)
                    with self._conn.transaction():
                        result = body(tx)
                        tx.send()
                    return result
                except (errors.DeadlockDetected, errors.SerializationFailure):
                    if attempt == _RETRIES - 1:
                        raise StoreIOError(f"{self.shown}: the change kept conflicting with others") from None
                except psycopg.OperationalError as exc:
                    self._reconnect()
                    raise StoreIOError(f"{self.shown}: {_first_line(exc)}") from None
                except psycopg.Error as exc:
                    raise StoreIOError(f"{self.shown}: {_first_line(exc)}") from None
        raise AssertionError("unreachable")

    def query(self, statement: Any, params: Any = None) -> list[Any]:
        """The rows of one statement, run as a transaction of its own (atomic, and durable
        when it returns, as any commit)."""
        return self.run(lambda tx: _rows(tx.execute(statement, params)), alone=True)

    def channel(self, topic: str) -> str:
        return route(self.schema, topic)[0]

    def _reconnect(self) -> None:
        """After a lost connection the next call connects afresh. The lost call raised: its
        change was not made, or was committed unacknowledged, and is read back as it stands."""
        forget(self._conn, self._pid)
        self._conn = None

    def watch(self, topics: tuple[str, ...]) -> PgWatch:
        pid = os.getpid()
        return PgWatch(lambda: connect(self.dsn, self.shown, self.schema, autocommit=True),
                       lambda conn: forget(conn, pid), self.schema, topics)

    def close(self) -> None:
        with self._mutex:
            self._closed = True
            if self._conn is not None:
                forget(self._conn, self._pid)
                self._conn = None
