"""The one supervisor of a store: a flock on `supervisor.lock`, which also describes it.

The kernel drops the flock when its holder dies, so a SIGKILLed supervisor never
keeps the next one out. The file is never unlinked (a waiter would lock an inode
nobody else sees); its content is live status, not durable state.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from filelock import lock_descriptor, unlock_descriptor

from . import codec
from .errors import StoreUnavailable
from .fsutil import open_file


class SupervisorPresence:
    def __init__(self, root: Path) -> None:
        self._path = root / "supervisor.lock"
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Become the store's one supervisor, if none is running; held until release() or close()."""
        if self._fd is not None:
            return True
        try:
            fd = open_file(self._path, os.O_RDWR | os.O_CREAT)  # never through a planted link
        except OSError as exc:  # a read-only store, say: it can be inspected, not supervised
            raise StoreUnavailable(f"cannot take {self._path}: {exc.strerror}") from None
        if not lock_descriptor(fd, blocking=False):
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            unlock_descriptor(self._fd)
            os.close(self._fd)
            self._fd = None

    def publish(self, info: dict[str, Any]) -> None:
        """Describe the running supervisor for `runner status`."""
        assert self._fd is not None, "not the supervisor"
        # A checksummed frame, written over the old one and only then cut to size: a
        # reader at any moment finds the old or the new description whole, never an
        # empty file (which truncating first would show it, for as long as we were preempted).
        data = codec.frame(codec.pack(info))
        os.pwrite(self._fd, data, 0)
        os.ftruncate(self._fd, len(data))

    def describe(self) -> dict[str, Any] | None:
        """The running supervisor's description, or None when no supervisor runs."""
        if self._fd is not None:
            return self._read(self._fd)
        try:
            fd = open_file(self._path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            if lock_descriptor(fd, blocking=False):  # nobody holds it: no supervisor
                unlock_descriptor(fd)
                return None
            return self._read(fd)
        finally:
            os.close(fd)

    @staticmethod
    def _read(fd: int) -> dict[str, Any]:
        found = codec.read_frame(os.pread(fd, 1 << 20, 0), 0)  # the first frame; an old tail after it
        try:
            info = None if found is None else codec.unpack(found[0])
        except codec.Undecodable:  # an empty description beats a wrong one
            info = None
        return info if isinstance(info, dict) else {}

    def close(self) -> None:
        """Close without unlocking: in a forked child the lock is still the parent's."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
