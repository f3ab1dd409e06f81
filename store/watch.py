"""Targeted wake-ups: a writer touches one file per topic its change produced, and a
waiter watches, with inotify, only the files of the topics it waits on.

STORE/wake/ holds an empty file per topic: `work`, `timers`, `changes`, and
`settled/00` .. `settled/ff`, each the settles of the promises whose id hashes there
(so a waiter for one promise wakes for a 256th of the settles, not for all). A
topic's file exists once someone has watched it: a writer touches only files that
exist, with one utime each, after it has unlocked the store, so whoever it wakes
finds the lock free. It knows which exist without asking for each: a waiter that
creates a topic's file appends a byte to `created` before it reads the store, and a
writer lists the files again whenever that file's size has changed.

No wake-up is missed: a waiter creates its file, says so in `created` and adds its
watch before it reads the state it waits on, and a writer looks at `created` and
touches after its change is committed. Either the touch comes after the watch (an
event), or the read comes after the commit (it sees it). A writer killed between
its commit and its touch wakes nobody: waiters keep a backstop timeout for that.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import select
import zlib
from collections.abc import Iterable
from pathlib import Path

from .fsutil import DIR_MODE, open_file
from .layout import check_dir
from .types import CHANGES, TIMERS, WORK, settled_topic

WAKE_DIR = "wake"
_log = logging.getLogger(__name__)
_CREATED = "created"  # one byte longer for each topic file ever created
_SETTLED = settled_topic("")  # the prefix of every settle's topic
_PLAIN = (WORK, TIMERS, CHANGES)
_LOG = "../log"  # what a watch holds once it watches the log instead of its topics' files

_IN_MODIFY = 0x00000002
_IN_MOVED_TO = 0x00000080
_IN_CREATE = 0x00000100
_IN_ATTRIB = 0x00000004  # what utime raises on the watched file
_IN_DONT_FOLLOW = 0x02000000  # a link planted in wake/ is never watched through
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def topic_file(topic: str) -> str:
    """The file under wake/ that stands for `topic`."""
    if topic.startswith(_SETTLED):
        bucket = zlib.crc32(topic[len(_SETTLED):].encode("utf-8", "surrogatepass")) & 0xFF
        return f"settled/{bucket:02x}"
    if topic in _PLAIN:
        return topic
    raise ValueError(f"unknown watch topic {topic!r}")


def wake_dir(root: Path, writable: bool) -> Path | None:
    """STORE/wake, created if missing, checked like every directory of the store; None where
    it cannot be (a read-only store lacking it, where nobody writes; a full disk, where
    waiters watch the log instead until a process opens the store again)."""
    path = root / WAKE_DIR
    for directory in (path, path / "settled"):
        try:
            if writable:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(directory, DIR_MODE)  # not synced: wake-ups outlive no crash
            check_dir(directory, "wake-up directory", follow=False)
        except FileNotFoundError:
            return None
        except OSError as exc:  # a full disk: its writes will say so
            _log.debug("no wake-up files in %s (waiters watch the log instead): %s", root, exc)
            return None
    if writable:
        try:
            os.close(open_file(path / _CREATED, os.O_RDONLY | os.O_CREAT))
        except OSError as exc:
            _log.debug("no wake-up files in %s (waiters watch the log instead): %s", root, exc)
            return None
    return path


class Wakes:
    """The writer's side: touch the files of the topics its changes produced."""

    def __init__(self, directory: Path | None) -> None:
        self._fd: int | None = None
        self._created: int | None = None
        self._seen = -1  # the size of `created` when the files were last listed
        self._existing: set[str] = set()
        if directory is not None and os.path.lexists(directory / _CREATED):
            self._fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            self._created = open_file(directory / _CREATED, os.O_RDONLY)

    def touch(self, topics: Iterable[str]) -> None:
        if self._fd is None or self._created is None:
            return
        # Only a wake-up: a failure here never fails the durable change that caused it.
        with contextlib.suppress(OSError):
            size = os.fstat(self._created).st_size  # before listing: one created meanwhile shows next time
            if size != self._seen:
                self._existing = self._list()
                self._seen = size
            for name in {topic_file(t) for t in topics} & self._existing:
                with contextlib.suppress(FileNotFoundError):  # deleted by hand since
                    os.utime(name, dir_fd=self._fd, follow_symlinks=False)

    def _list(self) -> set[str]:
        assert self._fd is not None
        names = set(os.listdir(self._fd))
        found = {name for name in _PLAIN if name in names}
        if "settled" in names:
            settled = os.open("settled", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                              dir_fd=self._fd)
            try:
                found.update(f"settled/{name}" for name in os.listdir(settled))
            finally:
                os.close(settled)
        return found

    def close(self) -> None:
        for fd in (self._fd, self._created):
            if fd is not None:
                os.close(fd)
        self._fd = self._created = None


class Watch:
    """Readable once a topic it watches may have been produced (see the module's note)."""

    def __init__(self, directory: Path | None, log: Path, topics: Iterable[str]) -> None:
        fd = _libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._fd: int | None = fd
        self._dir = directory
        self._log = log
        self._files: set[str] = set()
        try:
            for topic in topics:
                self.add(topic)
        except BaseException:
            self.close()
            raise

    def add(self, topic: str) -> None:
        """Wake for `topic` too, from now on (call it before reading what it stands for)."""
        name = topic_file(topic)
        if name in self._files or _LOG in self._files:
            return
        if self._dir is None:
            self._every_append()
            return
        path = self._dir / name
        try:
            self._create(path)
        except OSError as exc:
            # A full disk, or a read-only one: woken by every append instead (spurious
            # wake-ups, never a missed one), and a write says what is wrong where it fails.
            _log.debug("cannot create %s: %s", path, exc)
            self._every_append()
            return
        self._inotify(path, _IN_ATTRIB | _IN_MODIFY | _IN_DONT_FOLLOW)
        self._files.add(name)

    def _every_append(self) -> None:
        """Watch the log itself: a wake-up for every write, and no file to make."""
        self._inotify(self._log, _IN_MODIFY | _IN_CREATE | _IN_MOVED_TO)
        self._files.add(_LOG)

    def _inotify(self, path: Path, mask: int) -> None:
        if _libc.inotify_add_watch(self.fileno(), os.fsencode(path), mask) < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path} failed")

    def _create(self, path: Path) -> None:
        """The topic's file, announced to writers (see the module's note) if it is new."""
        try:
            os.close(open_file(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return
        try:
            self._announce()
        except OSError:
            with contextlib.suppress(OSError):  # unannounced, writers might never touch it
                os.unlink(path)
            raise

    def _announce(self) -> None:
        """Tell writers a topic file is new (see the module's note): before any read."""
        assert self._dir is not None
        fd = open_file(self._dir / _CREATED, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, b".")
        finally:
            os.close(fd)

    def fileno(self) -> int:
        assert self._fd is not None, "watch is closed"
        return self._fd

    def drain(self) -> None:
        """Consume pending events; the caller then re-reads the store."""
        try:
            while os.read(self.fileno(), 65536):
                pass
        except BlockingIOError:
            pass

    def wait(self, timeout: float | None) -> bool:
        """Block until a wake-up or the timeout; True if woken."""
        ready, _, _ = select.select([self.fileno()], [], [], timeout)
        if ready:
            self.drain()
        return bool(ready)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
