"""Who supervises a PostgreSQL store: a `supervisors` table and a session advisory lock.

The lock is held by a connection of the supervisor's own, so the server drops it
when that process dies or loses its connection, as the kernel drops the directory
store's flock. A row describes each supervisor for `runner status`; only a row
whose connection still holds the lock describes one that runs.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from psycopg import sql

from .. import codec
from .connection import Database, connect, forget
from .schema import lock_key


class Supervisors:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._conn: Any = None  # the lock's connection, while we supervise
        self._pid = os.getpid()
        self._id = f"{socket.gethostname()}:{os.getpid()}"

    def lock(self) -> bool:
        """Become the store's supervisor, if none is running; held until unlock() or close()."""
        if self._conn is not None:
            return True
        conn = connect(self._db.dsn, self._db.shown, self._db.schema, autocommit=True)
        got = conn.execute(sql.SQL("SELECT pg_try_advisory_lock({}, 1)").format(lock_key(self._db.schema)))
        if not got.fetchone()[0]:
            conn.close()
            return False
        self._conn = conn
        backend = conn.info.backend_pid
        self._db.run(lambda tx: tx.execute(
            "INSERT INTO supervisors (id, info, beat, backend) VALUES (%s, %s, %s, %s) ON CONFLICT (id) "
            "DO UPDATE SET info = excluded.info, beat = excluded.beat, backend = excluded.backend",
            (self._id, codec.pack({}), time.time(), backend)))
        return True

    def unlock(self) -> None:
        if self._conn is None:
            return
        self._db.run(lambda tx: tx.execute("DELETE FROM supervisors WHERE id = %s", (self._id,)))
        self.close()

    def publish(self, info: dict[str, Any]) -> None:
        """Describe the running supervisor for `runner status`."""
        assert self._conn is not None, "not the supervisor"
        self._db.run(lambda tx: tx.execute("UPDATE supervisors SET info = %s, beat = %s WHERE id = %s",
                                           (codec.pack(info), time.time(), self._id)))

    def describe(self) -> dict[str, Any] | None:
        """The running supervisor's description, or None when no supervisor runs."""
        row = self._db.run(lambda tx: tx.execute(
            "SELECT info FROM supervisors s WHERE EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = s.backend "
            "AND l.locktype = 'advisory' AND l.granted) ORDER BY beat DESC LIMIT 1").fetchone())
        if row is None:
            return None
        try:
            info = codec.unpack(bytes(row[0]))
        except codec.Undecodable:  # an empty description beats a wrong one
            info = None
        return info if isinstance(info, dict) else {}

    # Shared supervision (interface.SharedSupervisors): for now one supervisor at a time
    # (lock), as on a directory store, so there is nobody to declare dead.
    shared = False

    def join(self, sid: str) -> None:
        pass

    def beat(self, sid: str) -> bool:
        return True

    def beats(self) -> dict[str, float]:
        return {}

    def retire(self, sid: str) -> bool:
        return False

    def lock_sweeper(self) -> bool:
        return True

    def every(self) -> list[dict[str, Any]]:
        """Every live supervisor's description."""
        info = self.describe()
        return [] if info is None else [info]

    def close(self) -> None:
        """Drop the lock's connection (the lock with it); a forked child only lets go of it."""
        if self._conn is not None:
            forget(self._conn, self._pid)
            self._conn = None
