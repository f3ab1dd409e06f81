"""Who holds a flock: read from /proc/locks, since flock itself never says.

A process stopped (SIGSTOP, a debugger) while it holds the store lock freezes every
other one; the lease cannot help, since acting on it needs the lock. Knowing the
holder lets a waiter say whom it waits for, and the supervisor free the lock by
killing a stopped worker of its own.
"""

from __future__ import annotations

import os
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
