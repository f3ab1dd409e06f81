"""Test-only failpoints: SIGKILL this process at a named point inside a store change.

Crash tests run a child process with ``RUNNER_STORE_CRASH_AT=NAME`` (crash at the
first hit of NAME) or ``NAME:N`` (crash at the N-th hit) and then check that the
store opens and every record reads as the old or the new version.

The variable is read once, at import. In production it is unset, and a
failpoint then costs one function call and one comparison (``name != _NAME``),
which is noise next to the fdatasync every change pays.

Points (all in store/):
  ``append.mid``            log.py: half of the frame is written, then the crash (a torn tail)
  ``append.before_sync``    log.py: the whole frame is written, not yet fdatasync'd
  ``append.after_sync``     log.py: the frame is durable, not yet applied or acknowledged
  ``compact.after_rotate``  replica.py: the new segment exists, the snapshot is not written
  ``archive.after_add``     replica.py: whole runs are in the history database, no frame says so
  ``archive.after_frame``   replica.py: the ARCHIVE frame is durable, the snapshot not written
  ``compact.after_temp``    replica.py: the new snapshot is on disk under its temporary name
  ``compact.after_snapshot`` replica.py: the snapshot is in place, old segments not removed
  ``locked.hold``           replica.py: the store lock is held, nothing is read or written yet

Disk-full and sync errors are injected in-process instead, by monkeypatching
``runner.store.log.write_all`` or ``os.fdatasync`` in a test: no production code path
exists for them.
"""

from __future__ import annotations

import os
import signal

ENV = "RUNNER_STORE_CRASH_AT"


def _parse(spec: str | None) -> tuple[str | None, int]:
    if not spec:
        return None, 1
    name, sep, count = spec.rpartition(":")
    if sep and count.isdigit() and name:
        return name, max(1, int(count))
    return spec, 1


_NAME, _AT = _parse(os.environ.get(ENV))
_hits = 0


def fires(name: str) -> bool:
    """True when failpoint `name` must fire now; the caller does its damage, then calls die()."""
    if name != _NAME:
        return False
    global _hits
    _hits += 1
    return _hits == _AT


def die() -> None:
    """SIGKILL ourselves: no atexit, no finally, no flush, exactly like an outside kill."""
    os.kill(os.getpid(), signal.SIGKILL)


def crash_point(name: str) -> None:
    """SIGKILL this process here when RUNNER_STORE_CRASH_AT names this point (and its count)."""
    if name != _NAME:
        return
    if fires(name):
        die()
