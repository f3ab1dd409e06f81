"""The append-only log: numbered segment files of frames, shared by every process.

Every process keeps the whole state in memory and follows the log from a
cursor. Reading and appending both happen under one exclusive lock, so a
reader never sees a frame that is still being written: a bad frame can only
be a crash's torn tail (dropped) or damage (reported).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import codec, faults, lockholder
from .errors import CorruptStore, StoreUnavailable
from .fsutil import create_once, io_error, open_file, sync_dir, write_all, write_replace

SEGMENT_SUFFIX = ".seg"
MAX_HEADER = 4096  # a segment header is ~80 bytes; one read covers it
SLOW_LOCK = 1.0  # seconds of waiting for the lock before saying who holds it
log = logging.getLogger(__name__)


class Unchecked:
    """No expectation of a segment header's `prev` (a cursor placed by the caller's own check)."""


UNCHECKED = Unchecked()


def segment_name(number: int) -> str:
    return f"{number:08d}{SEGMENT_SUFFIX}"


class Overtaken(Exception):
    """The cursor's segment was removed and no next segment follows it.

    Other processes compacted at least twice since this one last read: the
    segments after the cursor are gone and only the snapshot holds them. The
    caller must reload from the snapshot; appending to the removed segment
    would write to a file nobody will ever read again.
    """


class Log:
    """The segments of one store, checked to be that store's, in sequence.

    Each segment starts with a header frame naming the store's id, its number and
    `prev`, the size and last frame checksum of the segment before it: a segment
    missing, copied in from another store, or put in another's place is damage.
    """

    def __init__(self, root: Path, *, writable: bool = True) -> None:
        self.dir = root / "log"
        self.writable = writable
        self.store_id = ""  # set once FORMAT is read, under the lock
        self._lock_fd = _open_lock(root / "lock", writable)
        self._slow = None if self._lock_fd is None else lockholder.SlowWaits(SLOW_LOCK, self._slow_wait)
        self.segment = 0
        self.offset = 0
        self._last_crc = 0  # payload checksum of the last frame before the cursor
        self.prev: list[int] | None = None  # what the cursor segment's header says of the one before
        self._fd: int | None = None
        self._next_path = ""  # the segment after the cursor's, once the cursor is placed
        self._unsynced = False  # frames of others were read since our last fdatasync

    # -- locking -------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store lock, waiting for it in the kernel when it is contended.

        flock directly rather than filelock's lock_descriptor: its blocking mode polls
        (sleep, try again), which cost the workers 40% of their time in a fan-out and
        a wake-up latency of up to a poll. A blocked flock is woken by the unlock itself.
        """
        if self._lock_fd is None:  # a read-only store without a lock file: nobody can write it
            yield
            return
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            assert self._slow is not None
            with self._slow.waiting():
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            try:
                if self._unsynced:  # what was read may be told only once it is on disk (read_new)
                    self.sync()
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def holders(self) -> list[int]:
        """Pids holding the store lock now (none on a read-only store without a lock file)."""
        return [] if self._lock_fd is None else lockholder.lock_holders(self._lock_fd)

    def _slow_wait(self) -> None:
        """Past a second of waiting, say whom we wait for, rather than hang mute."""
        holders = ", ".join(lockholder.describe(pid) for pid in self.holders())
        log.warning("waiting for the store lock of %s, held for over %.0f s by %s",
                    self.dir.parent, SLOW_LOCK, holders or "another process")

    # -- segments -------------------------------------------------------------

    def segments(self) -> list[int]:
        names = (n for n in os.listdir(self.dir) if n.endswith(SEGMENT_SUFFIX))
        return sorted(int(n[: -len(SEGMENT_SUFFIX)]) for n in names if n[:-4].isdigit())

    def path(self, number: int) -> Path:
        return self.dir / segment_name(number)

    def start_at(self, segment: int, prev: list[int] | Unchecked | None = UNCHECKED) -> list[int] | None:
        """Point the cursor just past the header of `segment`; returns the header's `prev`.

        `prev`, when given, is what the header must say of the segment before.
        """
        self._close_fd()
        path = self.path(segment)
        try:
            self._fd = open_file(path, os.O_RDWR | os.O_APPEND if self.writable else os.O_RDONLY)
        except FileNotFoundError:
            raise CorruptStore(str(path), 0, "missing log segment") from None
        except StoreUnavailable as exc:
            raise CorruptStore(str(path), 0, str(exc)) from None
        except OSError as exc:
            raise io_error(exc, f"opening {path}") from None
        self.segment, self.offset = segment, 0
        self._next_path = str(self.path(segment + 1))  # looked for at every catch-up: built once
        head = os.pread(self._fd, codec.HEADER.size + MAX_HEADER, 0)
        found = codec.read_frame(head, 0)
        if found is None:
            raise CorruptStore(str(path), 0, "no segment header")
        header = self._check_header(path, found[0], segment)
        if not isinstance(prev, Unchecked) and header["prev"] != prev:
            raise CorruptStore(str(path), 0, f"does not continue segment {segment - 1} of this store "
                                             "(its header names another predecessor)")
        self.offset, self._last_crc, self.prev = found[1], codec.payload_crc(head, 0), header["prev"]
        return self.prev

    def _check_header(self, path: Path, payload: bytes, segment: int) -> dict[str, Any]:
        try:
            header = piece_header(path, codec.unpack(payload), self.store_id)
        except codec.Undecodable as exc:
            raise CorruptStore(str(path), 0, f"segment header: {exc}") from None
        if header["segment"] != segment:
            raise CorruptStore(str(path), 0, f"is segment {header['segment']!r} of this store, "
                                             f"not segment {segment}")
        return header

    def create_segment(self, number: int, prev: list[int] | None, *, replace: bool = False) -> None:
        """Create segment `number` holding its header, atomically: nobody sees it without one."""
        data = codec.frame(codec.pack({"store": self.store_id, "segment": number, "prev": prev}))
        try:
            if replace:  # only before FORMAT exists: nothing in it was ever acknowledged
                write_replace(self.path(number), data)
            else:
                create_once(self.path(number), data)  # syncs the directory: the name survives
        except OSError as exc:
            raise io_error(exc, "creating a log segment") from None

    def rotate(self) -> int:
        """Seal the current segment and continue in a new one; returns its number."""
        prev = [self.offset, self._last_crc]
        self.create_segment(self.segment + 1, prev)
        self.start_at(self.segment + 1, prev)
        return self.segment

    def remove_below(self, segment: int) -> None:
        """Drop segments a snapshot now covers. Readers with one open keep reading it."""
        removed = False
        for number in self.segments():
            if number < segment:
                os.unlink(self.path(number))  # a planted link is removed, never what it points at
                removed = True
        if removed:
            sync_dir(self.dir)

    # -- reading ----------------------------------------------------------------

    def read_new(self) -> list[tuple[int, int, bytes]]:
        """(segment, offset, payload) of each frame appended since the cursor, moving past them.

        Call under the lock. These frames are other processes' (our own appends move
        the cursor), and one may be unsynced: its writer died between its write and
        its fdatasync. Nothing read may be told before they are on disk: the lock is let
        go only once they are, by our own append's fdatasync (of the same file, which
        covers them) or else by one in locked().
        """
        found: list[tuple[int, int, bytes]] = []
        while True:
            assert self._fd is not None, "log cursor not started"
            st = os.fstat(self._fd)
            size = st.st_size
            buf = os.pread(self._fd, size - self.offset, self.offset) if size > self.offset else b""
            end = 0
            for offset, payload in codec.frames(buf):
                found.append((self.segment, self.offset + offset, payload))
                end = offset + len(payload) + codec.HEADER.size
                self._last_crc = codec.payload_crc(buf, offset)
            has_next = os.path.exists(self._next_path)
            if not has_next and st.st_nlink == 0:
                raise Overtaken(f"segment {self.segment} was compacted away")
            if end < len(buf):
                self._bad_tail(buf, end, sealed=has_next)
            self.offset += end
            if not has_next:
                # Earlier segments were synced by whoever rotated past them.
                self._unsynced = self._unsynced or (bool(found) and self.writable)
                return found
            self.start_at(self.segment + 1, [self.offset, self._last_crc])

    def _bad_tail(self, buf: bytes, end: int, *, sealed: bool) -> None:
        """Drop a torn tail; report anything else as damage."""
        where = str(self.path(self.segment))
        reason = codec.fault(buf, end)
        if reason is not None:
            raise CorruptStore(where, self.offset + end, reason)
        if sealed:
            raise CorruptStore(where, self.offset + end, "a frame cut short before later segments")
        if not self.writable:
            return  # nobody can drop it, nor write after it: read up to it
        # A torn write: the frame was never acknowledged (its writer died before
        # the sync returned), so cutting it off loses nothing anyone was told.
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, self.offset + end)
            os.fsync(self._fd)
        except OSError as exc:
            raise io_error(exc, "dropping a torn record") from None

    # -- writing -----------------------------------------------------------------

    def append(self, payload: bytes) -> None:
        """Append one frame durably. Call under the lock, after read_new()."""
        assert self._fd is not None, "log cursor not started"
        data = codec.frame(payload)
        try:
            if faults.fires("append.mid"):  # test-only: a torn write, then the crash
                write_all(self._fd, data[: len(data) // 2])
                faults.die()
            write_all(self._fd, data)
            faults.crash_point("append.before_sync")
            os.fdatasync(self._fd)  # acknowledged only once on disk
        except OSError as exc:
            # Cut the frame off again: after a failed sync its fate is unknown, and
            # it must not be read as done by anyone. Never retry the sync.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self.offset)
            raise io_error(exc, "writing to the log") from None
        faults.crash_point("append.after_sync")
        self._unsynced = False
        self.offset += len(data)
        self._last_crc = codec.payload_crc(data, 0)

    def sync(self) -> None:
        """fdatasync the segment the cursor is in. Call under the lock."""
        assert self._fd is not None, "log cursor not started"
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            raise io_error(exc, "syncing the log") from None
        self._unsynced = False

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        self._close_fd()
        if self._slow is not None:
            self._slow.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)


def piece_header(path: Path, header: Any, store_id: str) -> dict[str, Any]:
    """The header that opens a segment or the snapshot, checked to be one of this store's."""
    if not isinstance(header, dict) or header.keys() < {"store", "segment", "prev"}:
        raise CorruptStore(str(path), 0, "no header naming the store and the segment")
    if header["store"] != store_id:
        raise CorruptStore(str(path), 0, f"belongs to another store (id {header['store']!r})")
    if type(header["segment"]) is not int:
        raise CorruptStore(str(path), 0, "its header names no segment")
    return header


def _open_lock(path: Path, writable: bool) -> int | None:
    """The store lock's descriptor; None on a read-only store that has no lock file.

    The lock file is never unlinked: a waiter holding the old inode open would
    otherwise lock a file nobody else sees. flock is released by the kernel when
    its holder dies, so a SIGKILLed holder never wedges the store. flock works on a
    read-only descriptor too, so a read-only store is still read under the lock.
    """
    try:
        if writable:
            return open_file(path, os.O_RDWR | os.O_CREAT)
        return open_file(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreUnavailable(f"cannot open store lock in {path.parent}: {exc.strerror}") from None
