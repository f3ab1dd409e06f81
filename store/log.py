"""The append-only log: numbered segment files of frames, shared by every process.

Every process keeps the whole state in memory and follows the log from a
cursor. Reading and appending both happen under one exclusive lock, so a
reader never sees a frame that is still being written: a bad frame can only
be a crash's torn tail (dropped) or damage (reported).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from filelock import lock_descriptor, unlock_descriptor

from . import codec, faults, lockholder
from .errors import CorruptStore, StoreUnavailable
from .fsutil import FILE_MODE, io_error, sync_dir, write_all

SEGMENT_SUFFIX = ".seg"
LOCK_POLL = 0.0003  # seconds between tries when contended; holders keep the lock < 1 ms
SLOW_LOCK = 1.0  # seconds of waiting for the lock before saying who holds it
log = logging.getLogger(__name__)


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
    def __init__(self, root: Path) -> None:
        self.dir = root / "log"
        # The lock file is never unlinked: a waiter holding the old inode open
        # would otherwise lock a file nobody else sees. flock is released by the
        # kernel when its holder dies, so a SIGKILLed holder never wedges the store.
        try:
            self._lock_fd = os.open(root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        except OSError as exc:
            raise StoreUnavailable(f"cannot open store lock in {root}: {exc.strerror}") from None
        self.segment = 0
        self.offset = 0
        self._fd: int | None = None

    # -- locking -------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        if not lock_descriptor(self._lock_fd, blocking=False):
            self._wait_for_lock()
        try:
            yield
        finally:
            unlock_descriptor(self._lock_fd)

    def holders(self) -> list[int]:
        """Pids holding the store lock now."""
        return lockholder.lock_holders(self._lock_fd)

    def _wait_for_lock(self) -> None:
        """Wait for the lock; past a second, say once whom we wait for, rather than hang mute."""
        patience: float | None = time.monotonic() + SLOW_LOCK
        while not lock_descriptor(self._lock_fd, blocking=False):
            if patience is not None and time.monotonic() >= patience:
                patience = None
                holders = ", ".join(lockholder.describe(pid) for pid in self.holders())
                log.warning("waiting for the store lock of %s, held for over %.0f s by %s",
                            self.dir.parent, SLOW_LOCK, holders or "another process")
            time.sleep(LOCK_POLL)

    # -- segments -------------------------------------------------------------

    def segments(self) -> list[int]:
        names = (n for n in os.listdir(self.dir) if n.endswith(SEGMENT_SUFFIX))
        return sorted(int(n[: -len(SEGMENT_SUFFIX)]) for n in names if n[:-4].isdigit())

    def _path(self, number: int) -> Path:
        return self.dir / segment_name(number)

    def start_at(self, segment: int) -> None:
        """Point the cursor at the start of `segment`, creating it if it is the first."""
        self._close_fd()
        self.segment, self.offset = segment, 0
        path = self._path(segment)
        if not path.exists():
            self._create_segment(segment)
        self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)

    def _create_segment(self, number: int) -> None:
        try:
            fd = os.open(self._path(number), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
            os.close(fd)
            sync_dir(self.dir)  # the new segment's name must survive a crash
        except FileExistsError:
            pass
        except OSError as exc:
            raise io_error(exc, "creating a log segment") from None

    def rotate(self) -> int:
        """Seal the current segment and continue in a new one; returns its number."""
        self._create_segment(self.segment + 1)
        self.start_at(self.segment + 1)
        return self.segment

    def remove_below(self, segment: int) -> None:
        """Drop segments a snapshot now covers. Readers with one open keep reading it."""
        removed = False
        for number in self.segments():
            if number < segment:
                os.unlink(self._path(number))
                removed = True
        if removed:
            sync_dir(self.dir)

    # -- reading ----------------------------------------------------------------

    def read_new(self) -> list[bytes]:
        """Payloads appended since the cursor, moving the cursor past them. Call under the lock.

        These frames are other processes' (our own appends move the cursor), and one
        may be unsynced: its writer died between its write and its fdatasync. The
        caller is about to act on them, so they are synced first, once per catch-up.
        """
        payloads: list[bytes] = []
        while True:
            assert self._fd is not None, "log cursor not started"
            st = os.fstat(self._fd)
            size = st.st_size
            buf = os.pread(self._fd, size - self.offset, self.offset) if size > self.offset else b""
            end = 0
            for offset, payload in codec.frames(buf):
                payloads.append(payload)
                end = offset + len(payload) + codec.HEADER.size
            has_next = os.path.exists(self._path(self.segment + 1))
            if not has_next and st.st_nlink == 0:
                raise Overtaken(f"segment {self.segment} was compacted away")
            if end < len(buf):
                self._bad_tail(buf, end, sealed=has_next)
            self.offset += end
            if not has_next:
                if payloads:
                    self.sync()  # earlier segments were synced by whoever rotated past them
                return payloads
            self.start_at(self.segment + 1)

    def _bad_tail(self, buf: bytes, end: int, *, sealed: bool) -> None:
        """Drop a torn tail; report anything else as damage."""
        where = str(self._path(self.segment))
        if sealed or codec.whole_frame_after(buf, end) is not None:
            raise CorruptStore(where, self.offset + end, "checksum or header mismatch before later records")
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
        self.offset += len(data)

    def sync(self) -> None:
        """fdatasync the segment the cursor is in. Call under the lock."""
        assert self._fd is not None, "log cursor not started"
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            raise io_error(exc, "syncing the log") from None

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        self._close_fd()
        os.close(self._lock_fd)
