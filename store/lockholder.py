"""Who holds a flock: read from /proc/locks, since flock itself never says.

A process stopped (SIGSTOP, a debugger) while it holds the store lock freezes every
other one; the lease cannot help, since acting on it needs the lock. Knowing the
holder lets a waiter say whom it waits for, and the supervisor free the lock by
killing a stopped worker of its own.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

_PROC_LOCKS = Path("/proc/locks")


def lock_holders(fd: int) -> list[int]:
    """Pids holding a FLOCK on the file open at `fd` (empty where /proc/locks is missing)."""
    st = os.fstat(fd)
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        lines = _PROC_LOCKS.read_text().splitlines()
    except OSError:
        return []
    holders = []
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 11154 fe:00:2147216 0 EOF"; waiters are marked "->".
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == device and fields[4].isdigit():
            holders.append(int(fields[4]))
    return holders


def is_stopped(pid: int) -> bool:
    """Stopped by a signal or a tracer: it cannot release anything until continued."""
    try:
        return psutil.Process(pid).status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
    except psutil.Error:
        return False


def describe(pid: int) -> str:
    try:
        process = psutil.Process(pid)
        return f"pid {pid} ({process.name()}, {process.status()})"
    except psutil.Error:
        return f"pid {pid}"


class SlowWaits:
    """Calls `report` once for each wait that lasts `patience` seconds.

    A blocking flock cannot time out, so the looking happens on a thread of its own,
    started at the first contended wait. It sleeps on an event until a wait begins,
    then until that wait's patience runs out: a contended process wakes it at most
    once per `patience`, and an uncontended one never.
    """

    def __init__(self, patience: float, report: Callable[[], None]) -> None:
        self._patience = patience
        self._report = report
        self._begun = threading.Event()
        # (a number, when it began) of the wait in progress; replaced whole, so the
        # thread never reads one wait's number with another's time.
        self._current: tuple[int, float] | None = None
        self._count = 0
        self._thread: threading.Thread | None = None
        self._closed = False

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Around one blocking wait."""
        self._count += 1
        self._current = (self._count, time.monotonic())
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="store-lock-wait", daemon=True)
            self._thread.start()
        if not self._begun.is_set():
            self._begun.set()
        try:
            yield
        finally:
            self._current = None

    def _run(self) -> None:
        while True:
            self._begun.wait()
            self._begun.clear()
            if self._closed:
                return
            current = self._current
            if current is None:
                continue  # it ended before we looked
            time.sleep(max(0.0, current[1] + self._patience - time.monotonic()))
            if self._current is current:
                with contextlib.suppress(OSError):  # the handle closed meanwhile: nobody waits
                    self._report()

    def close(self) -> None:
        self._closed = True
        self._begun.set()
