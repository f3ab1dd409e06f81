"""Settled history: whole runs moved out of the live state into an indexed database.

The log and the snapshot hold only what decisions need (pending promises, tasks,
claims, the runs still going). A run whose root and every descendant have settled
never changes again; compaction copies it here, and an ARCHIVE frame in the log then
drops it from every process's memory. Reads that miss in memory look here, by id,
by parent or in archive order, so memory and open time stay flat however long the
history grows.

The database is SQLite, from Python's standard library (no dependency to install): it
gives durable transactions (WAL, synchronous=FULL: a commit is on disk when it returns)
and the indexes reads need. Rows are only ever inserted, then removed by retention a
whole run at a time; every row holds a promise exactly as the log does (msgpack, read
back as data, never executed).

Rules that keep a crash harmless at any instant:
- rows are committed before the ARCHIVE frame naming their runs is written, so a
  process that dropped a run from memory always finds it here;
- a crash between the two leaves rows for a run still in memory: reads prefer
  memory, listings skip ids memory holds, and the next pass inserts the same rows again
  (INSERT OR IGNORE);
- `high`, the highest row number ever archived (rows are numbered by the creation
  order of their promises), only grows and is copied into the
  ARCHIVE frame: a database that says less than the log has lost rows (replaced,
  restored from an old copy) and is reported as damage, never read as "absent".
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from . import codec, validate
from .errors import CorruptStore, StoreUnavailable
from .fsutil import DIR_MODE, FILE_MODE, sync_dir
from .layout import check_dir
from .state import promise_from_list, promise_to_list
from .types import Promise, State

DB_NAME = "runs.db"
SCHEMA_VERSION = 1
BUSY_MS = 30_000  # a second writer (gc beside a compaction) waits rather than fails

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE promises (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    root TEXT NOT NULL,
    parent TEXT,
    state TEXT NOT NULL,
    record BLOB NOT NULL
);
CREATE INDEX promises_parent ON promises (parent, seq);
CREATE INDEX promises_root ON promises (root);
CREATE INDEX promises_state ON promises (state, seq);
CREATE TABLE runs (root TEXT PRIMARY KEY, settled_at REAL NOT NULL, size INTEGER NOT NULL);
CREATE INDEX runs_settled ON runs (settled_at);
CREATE TABLE counts (state TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
"""

# (root, its promises with their creation numbers: the root first, each parent before its children)
Run = tuple[str, list[tuple[int, Promise]]]


class Archive:
    """The settled runs of one store, in STORE/history/runs.db; opened on first use."""

    def __init__(self, root: Path, *, writable: bool) -> None:
        self.dir = root / "history"
        self.path = self.dir / DB_NAME
        self.store_id = ""  # set once FORMAT is read, as the log's is
        self.writable = writable
        self._db: sqlite3.Connection | None = None

    # -- opening ---------------------------------------------------------------------

    def exists(self) -> bool:
        """Whether there is a database: an open connection says so without a syscall."""
        return self._db is not None or os.path.lexists(self.path)

    def check(self, high: int) -> None:
        """Damage unless the database is this store's and holds every row the log says it
        was given (`high`, from the ARCHIVE frames applied so far)."""
        if high == 0:
            return
        if not self.exists():
            raise CorruptStore(str(self.path), 0, "missing: the store's history database (the log "
                                                  f"says it holds rows up to {high})")
        found = self._meta("high")
        if not isinstance(found, int) or found < high:
            raise CorruptStore(str(self.path), 0, f"holds the history up to row {found}, the log "
                                                  f"says {high}: rows are missing (an older copy?)")

    def _conn(self, *, create: bool = False) -> sqlite3.Connection:
        if self._db is None:
            self._db = self._open(create)
        return self._db

    def _open(self, create: bool) -> sqlite3.Connection:
        if create and not self.exists():
            self._create()
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            raise CorruptStore(str(self.path), 0, "missing: the store's history database") from None
        check_dir(self.dir, "history directory", follow=False)
        if not stat.S_ISREG(st.st_mode):
            raise CorruptStore(str(self.path), 0, "is not a regular file; the store never follows a link")
        # On a read-only filesystem nobody can be writing it, and SQLite could not make its
        # -shm file there: read it as the immutable file it then is.
        mode = "rw" if self.writable else "ro&immutable=1"
        try:
            db = sqlite3.connect(f"file:{self.path}?mode={mode}", uri=True, timeout=BUSY_MS / 1000,
                                 isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA synchronous=FULL")
            found = dict(db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise self._damage(exc) from None
        if found.get("store") != self.store_id:
            db.close()
            raise CorruptStore(str(self.path), 0, f"belongs to another store (id {found.get('store')!r})")
        if found.get("version") != SCHEMA_VERSION:
            db.close()
            raise CorruptStore(str(self.path), 0, f"is history version {found.get('version')!r}, "
                                                  f"not {SCHEMA_VERSION}")
        return db

    def _create(self) -> None:
        """Make an empty database under a temporary name, then move it into place: a crash
        leaves none or a whole one, never a half-made schema."""
        with contextlib.suppress(FileExistsError):
            os.mkdir(self.dir, DIR_MODE)
            sync_dir(self.dir.parent)
        tmp = self.dir / f".{DB_NAME}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.close(os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE))
        db = sqlite3.connect(tmp, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=DELETE")  # no side files while it is being made
            db.executescript(_SCHEMA)
            db.executemany("INSERT INTO meta VALUES (?, ?)",
                           [("store", self.store_id), ("version", SCHEMA_VERSION), ("high", 0)])
            db.execute("PRAGMA journal_mode=WAL")  # readers never wait for the one writer
        finally:
            db.close()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self.path)
        sync_dir(self.dir)

    def _damage(self, exc: sqlite3.Error) -> CorruptStore | StoreUnavailable:
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            return StoreUnavailable(f"the history database {self.path} stayed locked: {exc}")
        return CorruptStore(str(self.path), 0, f"history database: {exc}")

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        try:
            yield self._conn()
        except sqlite3.Error as exc:
            raise self._damage(exc) from None

    def _meta(self, key: str) -> Any:
        with self._reading() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    # -- writing -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self, *, create: bool = False) -> Iterator[sqlite3.Connection]:
        """One durable transaction: committed (and on disk) when the block ends, else undone."""
        try:
            db = self._conn(create=create)
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self._damage(exc) from None
        sync_dir(self.dir)  # the WAL SQLite may have just created must keep its name

    def add(self, runs: Sequence[Run]) -> int:
        """Insert whole runs in one durable transaction; returns `high` after it."""
        with self._transaction(create=True) as db:
            high = int(db.execute("SELECT value FROM meta WHERE key = 'high'").fetchone()[0])
            for root, promises in runs:
                high = self._insert(db, root, promises, high)
            db.execute("UPDATE meta SET value = ? WHERE key = 'high'", (high,))
        return high

    @staticmethod
    def _insert(db: sqlite3.Connection, root: str, promises: list[tuple[int, Promise]], high: int) -> int:
        """Rows numbered in creation order (the live state's numbers), so listings merge."""
        rows = [(number, p.id, root, p.parent, p.state.value, codec.pack(promise_to_list(p)))
                for number, p in promises]
        there = Counter(dict(Archive._states_of(db, root)))  # a pass that crashed before its frame
        before = db.total_changes
        db.executemany("INSERT OR IGNORE INTO promises VALUES (?, ?, ?, ?, ?, ?)", rows)
        if db.total_changes - before == len(rows):
            added = Counter(p.state.value for _, p in promises)
        else:
            added = Counter(dict(Archive._states_of(db, root))) - there
        db.executemany("INSERT INTO counts VALUES (?, ?) ON CONFLICT (state) DO UPDATE "
                       "SET n = n + excluded.n", list(added.items()))
        high = max(high, max(number for number, _ in promises))
        settled = max(p.settled_at or 0.0 for _, p in promises)
        db.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, (SELECT count(*) FROM promises "
                   "WHERE root = ?))", (root, settled, root))
        return high

    @staticmethod
    def _states_of(db: sqlite3.Connection, root: str) -> list[tuple[str, int]]:
        return db.execute("SELECT state, count(*) FROM promises WHERE root = ? GROUP BY state",
                          (root,)).fetchall()

    def remove(self, roots: Sequence[str]) -> None:
        """Remove whole runs in one durable transaction."""
        with self._transaction() as db:
            for root in roots:
                gone = self._states_of(db, root)
                db.executemany("UPDATE counts SET n = n - ? WHERE state = ?", [(n, s) for s, n in gone])
                db.execute("DELETE FROM promises WHERE root = ?", (root,))
                db.execute("DELETE FROM runs WHERE root = ?", (root,))

    # -- reading -----------------------------------------------------------------------

    def get(self, promise_id: str) -> Promise | None:
        if not self.exists():
            return None
        with self._reading() as db:
            row = db.execute("SELECT seq, record FROM promises WHERE id = ?", (promise_id,)).fetchone()
        return None if row is None else self._decode(*row)

    def children(self, parent: str) -> list[Promise]:
        if not self.exists():
            return []
        with self._reading() as db:
            rows = db.execute("SELECT seq, record FROM promises WHERE parent = ? ORDER BY seq",
                              (parent,)).fetchall()
        return [self._decode(*row) for row in rows]

    def page(self, after: int, limit: int, state: State | None) -> list[tuple[int, Promise]]:
        """Up to `limit` (seq, promise) past `after`, in archive order (of `state` only, if given)."""
        if not self.exists():
            return []
        where, args = ("state = ? AND ", [state.value]) if state is not None else ("", [])
        with self._reading() as db:
            rows = db.execute(f"SELECT seq, record FROM promises WHERE {where}seq > ? ORDER BY seq LIMIT ?",
                              (*args, after, limit)).fetchall()
        return [(row[0], self._decode(*row)) for row in rows]

    def counts(self) -> dict[str, int]:
        if not self.exists():
            return {}
        with self._reading() as db:
            return {s: n for s, n in db.execute("SELECT state, n FROM counts").fetchall()}

    def settled_before(self, when: float) -> list[str]:
        """Roots of the runs whose last settle came before `when`, oldest first."""
        if not self.exists():
            return []
        with self._reading() as db:
            return [r for (r,) in db.execute("SELECT root FROM runs WHERE settled_at < ? ORDER BY settled_at",
                                             (when,)).fetchall()]

    def roots_of(self, ids: Sequence[str]) -> set[str]:
        """The roots of the runs holding these ids (the ids not archived are left out)."""
        if not ids or not self.exists():
            return set()
        with self._reading() as db:
            return {r for pid in ids
                    for (r,) in db.execute("SELECT root FROM promises WHERE id = ?", (pid,)).fetchall()}

    def _decode(self, seq: int, record: bytes) -> Promise:
        try:
            fields = codec.unpack(record)
            if err := validate.PROMISE(fields, validate.EMPTY):
                raise validate.Invalid(err)
            return promise_from_list(fields)
        except (codec.Undecodable, validate.Invalid) as exc:
            raise CorruptStore(str(self.path), seq, f"history row {seq}: {exc}") from None

    def close(self, *, inherited: bool = False) -> None:
        """Close the connection; one `inherited` across a fork is left open, never closed.

        SQLite's own state for it (its locks, whether it is the last connection and may
        checkpoint and delete the WAL) is the parent's: closing it here could remove
        files the parent still uses. It is kept alive until this process exits.
        """
        if self._db is not None:
            if inherited:
                _INHERITED.append(self._db)
            else:
                self._db.close()
            self._db = None


_INHERITED: list[sqlite3.Connection] = []  # see Archive.close
