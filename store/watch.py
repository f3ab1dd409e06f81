"""Targeted wake-ups: a writer touches one file per topic its change produced, and a
waiter watches, with inotify, only the files of the topics it waits on.

STORE/wake/ holds an empty file per topic: `work`, `timers`, `changes`, and
`settled/00` .. `settled/ff`, each the settles of the promises whose id hashes there
(so a waiter for one promise wakes for a 256th of the settles, not for all). A
topic's file exists once someone has watched it: a writer touches only files that
exist, with one utime each, after it has unlocked the store, so whoever it wakes
finds the lock free.

No wake-up is missed: a waiter adds its watch before it reads the state it waits
on, and a writer touches after its change is committed. Either the touch comes
after the watch (an event), or the read comes after the commit (it sees it). A
writer killed between its commit and its touch wakes nobody: waiters keep a
backstop timeout for that.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import select
import zlib
from collections.abc import Iterable
from pathlib import Path

from .fsutil import DIR_MODE, open_file
from .layout import check_dir
from .types import CHANGES, TIMERS, WORK, settled_topic

WAKE_DIR = "wake"
_SETTLED = settled_topic("")  # the prefix of every settle's topic
_PLAIN = (WORK, TIMERS, CHANGES)

_IN_MODIFY = 0x00000002
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
    """STORE/wake, created if missing; None on a read-only store that lacks it (nobody writes
    there, so nobody need be woken). Checked like every directory of the store."""
    path = root / WAKE_DIR
    for directory in (path, path / "settled"):
        if writable:
            with contextlib.suppress(FileExistsError):
                os.mkdir(directory, DIR_MODE)  # not synced: wake-ups outlive no crash
        try:
            check_dir(directory, "wake-up directory", follow=False)
        except FileNotFoundError:
            return None
    return path


class Wakes:
    """The writer's side: touch the files of the topics its changes produced."""

    def __init__(self, directory: Path | None) -> None:
        self._fd: int | None = None
        if directory is not None:
            self._fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)

    def touch(self, topics: Iterable[str]) -> None:
        if self._fd is None:
            return
        for name in {topic_file(t) for t in topics}:
            # Only a wake-up: a failure here never fails the durable change that caused it.
            with contextlib.suppress(OSError):  # FileNotFoundError above all: nobody watched it yet
                os.utime(name, dir_fd=self._fd, follow_symlinks=False)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Watch:
    """Readable once a topic it watches may have been produced (see the module's note)."""

    def __init__(self, directory: Path | None, topics: Iterable[str]) -> None:
        fd = _libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._fd: int | None = fd
        self._dir = directory
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
        if self._dir is None or name in self._files:
            return
        path = self._dir / name
        try:
            os.close(open_file(path, os.O_RDONLY | os.O_CREAT))
        except OSError as exc:
            if exc.errno == errno.EROFS:
                return  # a read-only store: nobody can write it, so nothing will happen
            raise
        if _libc.inotify_add_watch(self.fileno(), os.fsencode(path),
                                   _IN_ATTRIB | _IN_MODIFY | _IN_DONT_FOLLOW) < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path} failed")
        self._files.add(name)

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
