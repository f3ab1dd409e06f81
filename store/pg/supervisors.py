"""Several supervisors on one PostgreSQL store: a row each, beats by the server's clock, and
advisory locks held by each supervisor's own connection.

Each supervisor joins with a row (its id, its description, its last beat). Beats and
ages are read on the server's clock, so hosts whose clocks disagree still agree on who
lapsed. Retiring a supervisor deletes its row: its beat then changes nothing and answers
False, so a supervisor back from a partition learns it was declared dead and is never
revived by its own beat.

The supervisor's own connection (not the one its calls run on) holds two advisory
locks, which the server drops when the process dies or its connection is lost:
- presence, one per supervisor id: a row whose presence lock nobody holds describes
  no running supervisor (`runner status`, and an `invoke` deciding whether anyone
  serves the store), without waiting out its lapse;
- the sweep lock, one per store: whoever holds it fires timers, times out deadlines,
  expires leases and declares the lapsed dead. A holder that dies or is cut off loses
  it with its session, and the next supervisor to ask takes it.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import psycopg
from psycopg import sql

from .. import codec
from ..errors import StoreIOError, StoreUnavailable
from .connection import Database, connect, forget
from .schema import lock_key

CLOCK = "extract(epoch from clock_timestamp())"  # the server's time, the one clock every host shares
SWEEP = 2  # the sweep lock: (lock_key(schema), SWEEP)
# A granted advisory lock of two int4 keys in this database, as pg_locks shows it.
_ADVISORY = ("l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.database = "
             "(SELECT oid FROM pg_database WHERE datname = current_database())")


class Supervisors:
    shared = True  # several supervisors may run on one database at once

    def __init__(self, db: Database) -> None:
        self._db = db
        self._conn: Any = None  # our own connection: it holds our presence, and the sweep lock when we sweep
        self._pid = os.getpid()
        self._id: str | None = None  # the id we joined under
        self._sweeping = False
        name = f"fanout-runner:{db.schema}:supervisor"
        self._presence_key = sql.SQL("hashtext({})").format(sql.Literal(name))
        self._sweep_key = lock_key(db.schema)

    # -- our own connection ---------------------------------------------------------------

    def lock(self) -> bool:
        """Take part in supervising the store: any number of supervisors may, so this only
        opens our own connection (a store that cannot be reached raises)."""
        self._own()
        return True

    def _own(self) -> Any:
        """Our connection, checked alive; after a lost one, a new one holding our presence
        again (the sweep lock is lost with the old one, and asked for anew)."""
        if self._conn is not None:
            try:
                self._conn.execute("SELECT 1")
                return self._conn
            except psycopg.Error:
                self._drop()
        self._conn = connect(self._db.dsn, self._db.shown, self._db.schema, autocommit=True)
        if self._id is not None:
            self._present(self._id)
        return self._conn

    def _present(self, sid: str) -> None:
        """Hold the presence lock of `sid` on our connection, and name its server pid."""
        self._execute(sql.SQL("SELECT pg_advisory_lock_shared({}, hashtext(%s))").format(self._presence_key),
                      (sid,))
        backend = self._conn.info.backend_pid
        self._write("UPDATE supervisors SET backend = %s WHERE id = %s", (backend, sid))

    def _write(self, query: Any, params: Any) -> int:
        """One statement in a transaction of the store's connection; how many rows it changed."""
        return int(self._db.run(lambda tx: tx.execute(query, params).rowcount))

    def _execute(self, query: Any, params: Any = None) -> Any:
        """A statement on our connection; a lost connection is a StoreIOError (retried later)."""
        try:
            return self._conn.execute(query, params)
        except psycopg.Error as exc:
            self._drop()
            raise StoreIOError(f"{self._db.shown}: {str(exc).strip().splitlines()[0]}") from None

    def _drop(self) -> None:
        if self._conn is not None:
            forget(self._conn, self._pid)
        self._conn = None
        self._sweeping = False

    # -- the interface's calls ---------------------------------------------------------------

    def join(self, sid: str) -> None:
        """A new supervisor id, beating from now, its presence held by our connection."""
        self._own()
        backend = self._conn.info.backend_pid
        self._write(f"INSERT INTO supervisors (id, info, beat, backend) VALUES (%s, %s, {CLOCK}, %s)",
                    (sid, codec.pack({}), backend))
        if self._id is not None:  # a rejoin: the old id's row was retired; let go of its presence
            self._execute(sql.SQL("SELECT pg_advisory_unlock_shared({}, hashtext(%s))").format(
                self._presence_key), (self._id,))
        self._id = sid
        self._present(sid)

    def beat(self, sid: str) -> bool:
        """Renew `sid`'s beat (from any handle: the supervisor beats through one of its own);
        False once it was retired (the row is gone and stays gone)."""
        return self._write(f"UPDATE supervisors SET beat = {CLOCK} WHERE id = %s", (sid,)) == 1

    def beats(self) -> dict[str, float]:
        """Every id not retired, with the seconds since its last beat by the server's clock."""
        found = self._db.run(lambda tx: tx.execute(f"SELECT id, {CLOCK} - beat FROM supervisors").fetchall())
        return {sid: float(age) for sid, age in found}

    def retire(self, sid: str) -> dict[str, Any] | None:
        """Declare `sid` dead; its last description for the one call that did (so its claims
        are given back once), else None."""
        row = self._db.run(lambda tx: tx.execute("DELETE FROM supervisors WHERE id = %s RETURNING info",
                                                 (sid,)).fetchone())
        return None if row is None else _info(row[0])

    def lock_sweeper(self, lapse: float) -> bool:
        """Whether we sweep: the sweep lock, kept while our connection lives.

        A holder cut off with its connection held open (a blackholed link) keeps its session,
        so its lock, for as long as the server does not notice; once its beat has lapsed,
        its session is ended, and the next call takes the lock.
        """
        self._own()
        if not self._sweeping:
            query = sql.SQL("SELECT pg_try_advisory_lock({}, %s)").format(self._sweep_key)
            self._sweeping = bool(self._execute(query, (SWEEP,)).fetchone()[0])
            if not self._sweeping:
                self._unseat(lapse)
        return self._sweeping

    def _unseat(self, lapse: float) -> None:
        """End the session holding the sweep lock if it is a supervisor's whose beat lapsed."""
        query = sql.SQL(
            "SELECT pg_terminate_backend(l.pid) FROM pg_locks l JOIN supervisors s ON s.backend = l.pid "
            f"WHERE {_ADVISORY} AND l.classid::bigint = ({{}}::bigint & 4294967295) AND l.objid::bigint = %s "
            f"AND {CLOCK} - s.beat > %s").format(self._sweep_key)
        self._db.run(lambda tx: tx.execute(query, (SWEEP, lapse)).fetchall())

    def unlock(self) -> None:
        """A clean exit: retire our own id, so nobody waits out our lapse; drop our connection."""
        if self._id is not None:
            sid, self._id = self._id, None
            with contextlib.suppress(StoreIOError, StoreUnavailable):  # cut off: it lapses instead
                self.retire(sid)
        self.close()

    def publish(self, info: dict[str, Any]) -> None:
        """Describe this supervisor for `runner status`; a retired one's description is not revived."""
        assert self._id is not None, "not a supervisor"
        self._write("UPDATE supervisors SET info = %s WHERE id = %s", (codec.pack(info), self._id))

    def every(self) -> list[dict[str, Any]]:
        """The description of every running supervisor, the latest to beat first."""
        return self._described(present=True)

    def lost(self) -> list[dict[str, Any]]:
        """The description of every supervisor not retired whose presence nobody holds."""
        return self._described(present=False)

    def _described(self, *, present: bool) -> list[dict[str, Any]]:
        query = sql.SQL(
            "SELECT info FROM supervisors s WHERE {} EXISTS (SELECT 1 FROM pg_locks l WHERE " + _ADVISORY +
            " AND l.classid::bigint = ({}::bigint & 4294967295) "
            "AND l.objid::bigint = (hashtext(s.id)::bigint & 4294967295)) ORDER BY beat DESC").format(
                sql.SQL("" if present else "NOT"), self._presence_key)
        return [_info(row[0]) for row in self._db.run(lambda tx: tx.execute(query).fetchall())]

    def describe(self) -> dict[str, Any] | None:
        """The running supervisor's description (the latest to beat, when several run), or None."""
        every = self.every()
        return every[0] if every else None

    def close(self) -> None:
        """Drop our connection (our locks with it); a forked child only lets go of it."""
        self._drop()


def _info(data: Any) -> dict[str, Any]:
    try:
        info = codec.unpack(bytes(data))
    except codec.Undecodable:  # an empty description beats a wrong one
        info = None
    return info if isinstance(info, dict) else {}
