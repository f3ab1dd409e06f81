"""A store's live state, replicated in each process from the shared log.

A change is built under the lock from a state that has caught up with the log,
appended as one frame, fdatasync'd, and only then applied and acknowledged; once the
lock is let go, the topics it produced wake whoever watches them (watch.py).
Past a size the log is sealed and the state copied (under the lock: references and
lists, cheap); then, outside the lock, whole settled runs move to the history
database (archive.py), the rest is snapshotted, and the segments the snapshot
covers are dropped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import lock_descriptor, unlock_descriptor

from . import codec, faults, validate
from .archive import Archive, Run
from .errors import CorruptStore, NotSerializable, StoreError, StoreIOError, StoreUnavailable
from .fsutil import io_error, open_file, read_file, sync_dir, write_temp
from .layout import check_dir, create, leftover_temp, prepare_dir, store_id
from .log import Log, Overtaken, piece_header
from .state import ARCHIVE, Frozen, StoreState
from .types import CHANGES
from .watch import Wakes, Watch, wake_dir

# Past this (and the last snapshot's size), the log is compacted. Small, so that opening
# (the snapshot, then the log after it) stays well under 0.3 s; compaction holds the lock
# only to write a frame and to rename, so doing it often costs no process a wait.
SEGMENT_BYTES = 1 << 20
_log = logging.getLogger(__name__)
# What decoding or applying a frame's content can raise; validate.py checks first, and
# the handlers' own lookups (KeyError, ...) are the backstop for what it does not.
APPLY_ERRORS = (codec.Undecodable, validate.Invalid, KeyError, IndexError, TypeError, ValueError,
                AssertionError)


class Replica:
    """This process's copy of a store's state, kept in step with the shared log.

    Every read and every change happens under the log's lock, after catching up;
    a change is one frame, synced before it is applied and acknowledged.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.writable = prepare_dir(self.root)  # a missing log/ is damage, checked in _load
        self._mutex = threading.RLock()
        self._log = Log(self.root, writable=self.writable)
        self.archive = Archive(self.root, writable=self.writable)
        self._snapshot_bytes = 0
        self._pid = os.getpid()  # see _locked: a handle must not cross a fork
        self._closed = False
        self._damage: CorruptStore | None = None  # met while catching up: every later call fails
        # This process sealed a segment: it compacts the state frozen then, once it unlocks.
        self._compact_due: Frozen | None = None
        self._compacting = threading.Lock()
        self.state = StoreState()
        self._wake_due: set[str] = set()  # topics this process produced under the lock
        self._wakes = Wakes(None)
        try:
            self._wake_dir = wake_dir(self.root, self.writable)
            self._wakes = Wakes(self._wake_dir)
            with self._log.locked():
                found = store_id(self.root)
                if found is None:
                    create(self.root, self._first_segment)
                    found = store_id(self.root)
                self._log.store_id = self.archive.store_id = str(found)
                self._load()
        except BaseException:
            self._log.close()  # a refused open must not leak the lock's descriptor
            self.archive.close()
            self._wakes.close()
            raise

    def _first_segment(self, store: str) -> None:
        self._log.store_id = store
        self._log.create_segment(1, None, replace=True)

    # -- opening and catching up ---------------------------------------------

    @codec.gc_paused()
    def _load(self) -> None:
        """Read the snapshot and the log after it. Call under the lock.

        A missing piece is damage, reported, never read as "absent": the segment
        a snapshot continues in, a segment between two others, the first segment
        of a store without a snapshot, or the snapshot itself once older segments
        are gone. Each piece's header names the store and its place in the sequence.
        """
        snapshot = self.root / "snapshot"
        try:
            check_dir(self._log.dir, "log directory", follow=False)
        except FileNotFoundError:
            raise CorruptStore(str(self._log.dir), 0, "missing: the store's log directory") from None
        segments = self._log.segments()
        if snapshot.exists() or snapshot.is_symlink():
            start, prev, self.state, self._snapshot_bytes = self._read_snapshot(snapshot)
            if self._log.start_at(start) != prev:
                raise CorruptStore(str(self._log.path(start)), 0,
                                   "is not the segment the snapshot continues in")
        else:
            self.state = StoreState()
            start = segments[0] if segments else 1
            if start != 1:
                raise CorruptStore(str(snapshot), 0, f"missing, and the log starts at segment {start}")
            self._log.start_at(1, None)
        for expected, number in enumerate((n for n in segments if n >= start), start):
            if number != expected:
                raise CorruptStore(str(self._log.path(expected)), 0,
                                   f"missing log segment (segment {number} follows)")
        if self.writable:
            for name in os.listdir(self.root):
                if leftover_temp(name, "snapshot"):  # a crash mid-compaction; nobody writes it now
                    with contextlib.suppress(OSError):
                        os.unlink(self.root / name)
        self._sync()
        self.archive.check(self.state.archive_high)
        if self.writable:
            self._log.remove_below(start)

    def _read_snapshot(self, path: Path) -> tuple[int, list[int] | None, StoreState, int]:
        """(segment it continues in, that segment's `prev`, state, size): a header frame, then the body."""
        try:
            data = read_file(path)
        except StoreUnavailable as exc:
            raise CorruptStore(str(path), 0, str(exc)) from None
        except OSError as exc:
            raise io_error(exc, f"reading {path}") from None
        header, body_at = self._snapshot_frame(path, data, 0)
        piece_header(path, header, self._log.store_id)
        body, end = self._snapshot_frame(path, data, body_at, depth=None)  # validate.snapshot checks it
        if end != len(data):
            raise CorruptStore(str(path), end, "extra bytes after the snapshot")
        try:
            validate.snapshot(body)
            state = StoreState.from_snapshot(body)
        except APPLY_ERRORS as exc:
            raise CorruptStore(str(path), body_at, f"snapshot body cannot be applied: {exc}") from None
        return header["segment"], header["prev"], state, len(data)

    @staticmethod
    def _snapshot_frame(path: Path, data: bytes, offset: int,
                        depth: int | None = codec.FRAME_DEPTH) -> tuple[Any, int]:
        """The value in the snapshot's frame at `offset`, and where the frame ends."""
        found = codec.read_frame(data, offset)
        if found is None:
            raise CorruptStore(str(path), offset, codec.fault(data, offset) or "cut short")
        try:
            return codec.unpack(found[0], depth), found[1]
        except codec.Undecodable as exc:
            raise CorruptStore(str(path), offset, str(exc)) from None

    def _sync(self) -> None:
        try:
            frames = self._log.read_new()
        except Overtaken:  # others compacted twice past our cursor: start over from the snapshot
            self._load()
            return
        for segment, offset, payload in frames:
            try:
                for op in validate.frame_ops(codec.unpack(payload)):
                    validate.operation(op, self.state)
                    self._apply(op)
            except APPLY_ERRORS as exc:
                # Part of the frame may be applied, and the cursor is past it: this
                # handle's state is no longer the log's, so it serves nothing more.
                self._damage = CorruptStore(str(self._log.path(segment)), offset, str(exc))
                raise self._damage from None

    def _apply(self, op: list[Any]) -> None:
        """Apply one operation another process wrote (a follower of the log hooks in here)."""
        self.state.apply(op)

    def lock_holders(self) -> list[int]:
        """Pids holding the store lock now: a stopped one freezes every process."""
        return self._log.holders()

    def _usable(self) -> None:
        """Refuse a handle that crossed a fork, or met damage."""
        if os.getpid() != self._pid:
            # A handle inherited across fork shares its flock's open file
            # description with the parent, so both "hold" the lock at once and claim the same
            # tasks. Refuse, rather than silently lose mutual exclusion.
            raise StoreError(f"store handle on {self.root} was opened by process {self._pid}; "
                             "open a new one in this process (after fork)")
        if self._damage is not None:
            raise self._damage

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the store lock with a state that has caught up with every process's writes."""
        self._usable()
        with self._mutex:
            try:
                with self._log.locked():
                    faults.crash_point("locked.hold")
                    self._sync()
                    yield
            finally:
                # Unlocked first: whoever this wakes finds the lock free.
                topics, self._wake_due = self._wake_due, set()
                self._wakes.touch(topics)
            due, self._compact_due = self._compact_due, None
        if due is not None:
            self._compact_quietly(due)

    def _commit(self, ops: list[list[Any]]) -> None:
        """Append the operations as one durable frame, then apply them. Call under the lock."""
        if not ops:
            return
        if not self.writable:
            raise StoreUnavailable(f"store {self.root} is on a read-only filesystem: it can be read, "
                                   "not changed")
        payload = codec.pack(ops)  # raises NotSerializable before anything is written
        # Read the frame back *before* appending it. Some values pack but
        # cannot be unpacked (a dict with a tuple key: msgpack reads the key back as an
        # unhashable list); appended, such a frame would make every later open fail.
        try:
            decoded = codec.unpack(payload)
        except codec.Undecodable as exc:
            raise NotSerializable(f"cannot store value: it would not read back ({exc})") from None
        self._log.append(payload)
        produced = self.state.produced = {CHANGES}  # what the ops make happen, for the wake-ups
        try:
            for op in decoded:  # apply exactly what every other process will read
                self.state.apply(op)
        finally:
            self.state.produced = None
            self._wake_due |= produced
        # Compacting rewrites the live state: wait until the log is at least as big as
        # the last snapshot, so a large one is not rewritten every megabyte.
        if self._log.offset > max(SEGMENT_BYTES, self._snapshot_bytes) and not self._compacting.locked():
            try:
                self._log.rotate()  # the sealed segments are what compaction reads, unlocked
            except StoreIOError as exc:
                # The change is durable and applied: report it done. The next frame tries again.
                _log.warning("sealing a log segment of %s failed: %s", self.root, exc)
                return
            faults.crash_point("compact.after_rotate")
            # What the snapshot will hold: the state at the start of the new segment,
            # copied now (references to frozen records, the tasks as lists), written later.
            self._compact_due = Frozen.of(self.state, self._log.segment, self._log.prev)

    # -- compaction: outside the lock but for a frame and a rename --------------------

    def _compact_quietly(self, frozen: Frozen) -> None:
        try:
            self._compact(frozen)
        except (OSError, StoreError) as exc:
            # The change that sealed the segment is durable: whatever failed here (the disk,
            # the history database), the log is whole without it, the call that triggered
            # it succeeded, and the next sealed segment tries again. Damage is reported by
            # the next open and by every read of what it touched.
            _log.warning("compacting store %s failed: %s", self.root, exc)

    @codec.gc_paused()
    def _compact(self, frozen: Frozen) -> None:
        """Move the whole settled runs of the state frozen at a rotation to the history
        database, snapshot the rest, and drop the segments the snapshot covers.

        Only the ARCHIVE frame and the snapshot's rename take the store lock; finding the
        runs, archiving them and writing the snapshot happen while other processes go on.
        """
        with self._compaction() as mine:
            if not mine:
                return  # another process compacts now; the next sealed segment is ours
            state = frozen.state()
            op = self._archive(state.complete_runs())
            if op is not None:
                state.apply(op)
            header = {"store": self._log.store_id, "segment": frozen.segment, "prev": frozen.prev}
            data = codec.frame(codec.pack(header)) + codec.frame(codec.pack(frozen.body(state)))
            try:
                tmp = write_temp(self.root / "snapshot", data)
            except OSError as exc:
                raise io_error(exc, "writing a snapshot") from None
            faults.crash_point("compact.after_temp")
            with self._locked():
                if self._snapshot_start() >= frozen.segment:  # one taken later is in place already
                    os.unlink(tmp)
                    return
                os.rename(tmp, self.root / "snapshot")
                sync_dir(self.root)
                self._snapshot_bytes = len(data)
                faults.crash_point("compact.after_snapshot")
                self._log.remove_below(frozen.segment)

    def _snapshot_start(self) -> int:
        """The segment the snapshot in place continues in (0: there is none). Under the lock."""
        path = self.root / "snapshot"
        if not path.exists() and not path.is_symlink():
            return 0
        data = read_file(path)
        header, _ = self._snapshot_frame(path, data, 0)
        return int(piece_header(path, header, self._log.store_id)["segment"])

    def _archive(self, runs: list[Run]) -> list[Any] | None:
        """Put whole settled runs in the history database, then say so in one frame, which
        drops them from every process's memory. Returns that frame's operation."""
        if not runs:
            return None
        with self._mutex:  # the connection is this handle's: no read of another thread in between
            high = self.archive.add(runs)
        faults.crash_point("archive.after_add")
        op = [ARCHIVE, [root for root, _ in runs], high]
        with self._locked():
            self._commit([op])
        faults.crash_point("archive.after_frame")
        return op

    def archive_settled(self) -> int:
        """Move every whole settled run to the history database now; returns how many."""
        with self._compaction(wait=True):
            with self._locked():
                runs = self.state.complete_runs()
            self._archive(runs)
            return len(runs)

    @contextlib.contextmanager
    def _compaction(self, *, wait: bool = False) -> Iterator[bool]:
        """One compaction (or archiving pass) at a time: in this process, and in the store."""
        if not self._compacting.acquire(blocking=wait):
            yield False
            return
        fd = None
        try:
            if self.writable:
                fd = open_file(self.root / "compact.lock", os.O_RDWR | os.O_CREAT)
                if not lock_descriptor(fd, blocking=wait):
                    yield False
                    return
            yield True
        finally:
            if fd is not None:
                unlock_descriptor(fd)
                os.close(fd)
            self._compacting.release()

    def refresh(self) -> None:
        """Catch up with what other processes wrote."""
        with self._locked():
            pass

    def watch(self, *topics: str) -> Watch:
        """A descriptor that turns readable when something of `topics` may have happened."""
        return Watch(self._wake_dir, self._log.dir, topics)

    def close(self) -> None:
        """Close this handle's descriptors (in a forked child too: closing never unlocks)."""
        # Only once: by a second close the descriptor numbers may belong to other
        # open files (another handle's lock).
        if self._closed:
            return
        self._closed = True
        self._log.close()
        self._wakes.close()
        self.archive.close(inherited=os.getpid() != self._pid)

