"""A store's state, replicated in each process from the shared log.

A change is built under the lock from a state that has caught up with the log,
appended as one frame, fdatasync'd, and only then applied and acknowledged.
Past a size the state is snapshotted and the segments it covers are dropped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import codec, faults
from .errors import CorruptStore, NotSerializable, StoreError, StoreIOError
from .fsutil import io_error, write_replace
from .layout import leftover_temp, prepare_dir
from .log import Log, Overtaken, segment_name
from .state import StoreState
from .watch import Watch

SEGMENT_BYTES = 8 << 20  # past this (and the last snapshot's size), the state is snapshotted
_log = logging.getLogger(__name__)


class Replica:
    """This process's copy of a store's state, kept in step with the shared log.

    Every read and every change happens under the log's lock, after catching up;
    a change is one frame, synced before it is applied and acknowledged.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        prepare_dir(self.root)  # creates log/ with a new store; a missing one is damage
        self._mutex = threading.RLock()
        self._log = Log(self.root)
        self._snapshot_bytes = 0
        self._pid = os.getpid()  # see _locked: a handle must not cross a fork
        self._closed = False
        self.state = StoreState()
        try:
            with self._log.locked():
                self._load()
        except BaseException:
            self._log.close()  # a refused open must not leak the lock's descriptor
            raise

    # -- opening and catching up ---------------------------------------------

    @codec.gc_paused()
    def _load(self) -> None:
        """Read the snapshot and the log after it. Call under the lock.

        A missing piece is damage, reported, never read as "absent": the segment
        a snapshot continues in, a segment between two others, or the snapshot
        itself once older segments are gone.
        """
        snapshot = self.root / "snapshot"
        if not self._log.dir.is_dir():
            raise CorruptStore(str(self._log.dir), 0, "missing: the store's log directory")
        segments = self._log.segments()
        if snapshot.exists():
            start, self.state = self._read_snapshot(snapshot)
            if start not in segments:
                raise CorruptStore(str(self._log.dir / segment_name(start)), 0,
                                   "missing: the snapshot continues in this log segment")
        else:
            self.state = StoreState()
            start = segments[0] if segments else 1
            if start != 1:
                raise CorruptStore(str(snapshot), 0, f"missing, and the log starts at segment {start}")
        for expected, number in enumerate((n for n in segments if n >= start), start):
            if number != expected:
                raise CorruptStore(str(self._log.dir / segment_name(expected)), 0,
                                   f"missing log segment (segment {number} follows)")
        for name in os.listdir(self.root):
            if leftover_temp(name, "snapshot"):  # a crash mid-compaction; nobody writes it now
                with contextlib.suppress(OSError):
                    os.unlink(self.root / name)
        self._log.start_at(start)
        self._sync()
        self._log.remove_below(start)

    def _read_snapshot(self, path: Path) -> tuple[int, StoreState]:
        data = path.read_bytes()
        found = codec.read_frame(data, 0)
        if found is None or found[1] != len(data):
            raise CorruptStore(str(path), 0, "snapshot checksum mismatch")
        self._snapshot_bytes = len(data)
        segment, body = codec.unpack(found[0])
        return segment, StoreState.from_snapshot(body)

    def _sync(self) -> None:
        try:
            payloads = self._log.read_new()
        except Overtaken:  # others compacted twice past our cursor: start over from the snapshot
            self._load()
            return
        for payload in payloads:
            for op in codec.unpack(payload):
                self.state.apply(op)

    def lock_holders(self) -> list[int]:
        """Pids holding the store lock now: a stopped one freezes every process."""
        return self._log.holders()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the store lock with a state that has caught up with every process's writes."""
        if os.getpid() != self._pid:
            # A handle inherited across fork shares its flock's open file
            # description with the parent, so both "hold" the lock at once and claim the same
            # tasks. Refuse, rather than silently lose mutual exclusion.
            raise StoreError(f"store handle on {self.root} was opened by process {self._pid}; "
                             "open a new one in this process (after fork)")
        with self._mutex, self._log.locked():
            faults.crash_point("locked.hold")
            self._sync()
            yield

    def _commit(self, ops: list[list[Any]]) -> None:
        """Append the operations as one durable frame, then apply them. Call under the lock."""
        if not ops:
            return
        payload = codec.pack(ops)  # raises NotSerializable before anything is written
        # Read the frame back *before* appending it. Some values pack but
        # cannot be unpacked (a dict with a tuple key: msgpack reads the key back as an
        # unhashable list); appended, such a frame would make every later open fail.
        try:
            decoded = codec.unpack(payload)
        except Exception as exc:
            raise NotSerializable(f"cannot store value: it would not read back ({exc})") from None
        self._log.append(payload)
        for op in decoded:  # apply exactly what every other process will read
            self.state.apply(op)
        # Compacting rewrites the whole state: wait until the log is at least as big as
        # the last snapshot, so a large store is not rewritten every few megabytes.
        if self._log.offset > max(SEGMENT_BYTES, self._snapshot_bytes):
            try:
                self._compact()
            except (OSError, StoreIOError) as exc:
                # The change is durable and applied: report it done. The log is still
                # whole without the snapshot; the next full segment tries again.
                _log.warning("compacting store %s failed: %s", self.root, exc)

    @codec.gc_paused()
    def _compact(self) -> None:
        """Snapshot the state, continue in a new segment, drop what the snapshot covers."""
        segment = self._log.rotate()
        faults.crash_point("compact.after_rotate")
        data = codec.frame(codec.pack([segment, self.state.to_snapshot()]))
        try:
            write_replace(self.root / "snapshot", data)
        except OSError as exc:
            raise io_error(exc, "writing a snapshot") from None
        self._snapshot_bytes = len(data)
        faults.crash_point("compact.after_snapshot")
        self._log.remove_below(segment)

    def refresh(self) -> None:
        """Catch up with what other processes wrote."""
        with self._locked():
            pass

    def make_durable(self) -> None:
        """Make every change this handle has read durable, whoever wrote it.

        Catching up already syncs every frame it reads (Log.read_new), so this is a
        refresh: a caller about to print a result says so explicitly.
        """
        self.refresh()

    def watch(self) -> Watch:
        """A descriptor that turns readable when any process writes to this store."""
        return Watch(self.root / "log")

    def close(self) -> None:
        """Close this handle's descriptors (in a forked child too: closing never unlocks)."""
        # Only once: by a second close the descriptor numbers may belong to other
        # open files (another handle's lock).
        if self._closed:
            return
        self._closed = True
        self._log.close()
