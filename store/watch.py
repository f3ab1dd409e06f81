"""Wake-ups by event: an inotify descriptor that turns readable when the log changes.

Waiting processes (idle workers, an `invoke` waiting for its result) select on
it instead of sleeping in a loop; a timeout on their select is only a backstop.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
from pathlib import Path

_IN_MODIFY = 0x00000002
_IN_CREATE = 0x00000100
_IN_MOVED_TO = 0x00000080
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class Watch:
    """Readable whenever something is appended to, or created in, a directory."""

    def __init__(self, directory: Path) -> None:
        fd = _libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._fd: int | None = fd
        mask = _IN_MODIFY | _IN_CREATE | _IN_MOVED_TO
        if _libc.inotify_add_watch(fd, os.fsencode(directory), mask) < 0:
            os.close(fd)
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory} failed")

    def add(self, topic: str) -> None:
        """Every append wakes this watch already, whatever its topic."""

    def fileno(self) -> int:
        assert self._fd is not None, "watch is closed"
        return self._fd

    def drain(self) -> None:
        """Consume pending events; the caller then re-reads the log."""
        try:
            while os.read(self.fileno(), 65536):
                pass
        except BlockingIOError:
            pass

    def wait(self, timeout: float | None) -> bool:
        """Block until a change or the timeout; True if something changed."""
        ready, _, _ = select.select([self.fileno()], [], [], timeout)
        if ready:
            self.drain()
        return bool(ready)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
