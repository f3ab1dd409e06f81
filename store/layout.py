"""What a store directory holds, and checking that a directory is one.

Layout::

    STORE/
      FORMAT      format name, version and the store's random id (created once, never replaced)
      lock        flock'ed around every read and write of the log (never unlinked)
      supervisor.lock   held by the one running supervisor (never unlinked)
      compact.lock      held by the one process compacting the log (never unlinked)
      snapshot    a header frame (store id, the segment it continues in, that segment's
                  `prev`), then the live state up to the start of that segment (atomic replace)
      history/runs.db   the settled history: whole runs moved out of the live state, in an
                  SQLite database indexed by id, parent and root (archive.py), with its -wal
                  and -shm files
      wake/       empty files whose touch wakes whoever waits on a topic (work, timers, changes,
                  settled/00..ff: see watch.py); not data, never synced, safe to delete when idle
      log/NNNNNNNN.seg   a header frame (store id, number, `prev`: the previous segment's size
                  and last frame's checksum), then append-only frames; each frame is one
                  atomic batch of operations
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import codec
from .errors import CorruptStore, InvalidId, StoreFormatError, StoreUnavailable
from .fsutil import DIR_MODE, create_once, io_error, make_dirs, read_file, sync_dir
from .types import MAX_ID_BYTES

FORMAT_NAME = "fanout-runner-store"
# 2: FORMAT names the store's id; each segment and the snapshot start with a header
# naming it and their place in the sequence; frame headers carry their own checksum.
FORMAT_VERSION = 2
_KNOWN = {"FORMAT", "lock", "snapshot", "log", "supervisor.lock", "compact.lock", "history", "wake"}


def leftover_temp(name: str, stem: str) -> bool:
    """A temporary file of fsutil's atomic writes (`.STEM.PID.tmp`) left by a crash."""
    return name.startswith(f".{stem}.") and name.endswith(".tmp")


def check_id(promise_id: Any) -> str:
    """Ids are stored as data, never as paths; only their size and type are limited."""
    if not isinstance(promise_id, str) or not promise_id:
        raise InvalidId(f"a promise id must be a non-empty string, got {promise_id!r}")
    try:
        size = len(promise_id.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidId("a promise id must be valid UTF-8 text") from None
    if size > MAX_ID_BYTES:
        raise InvalidId(f"a promise id may be at most {MAX_ID_BYTES} bytes of UTF-8, got {size}")
    return promise_id


def check_dir(path: Path, what: str, *, follow: bool) -> os.stat_result:
    """A directory of the store must be a real one, ours, and writable by us alone.

    Like ssh with ~/.ssh: anyone else who can write in it could plant a link or a
    segment, and the store would then write outside itself or read another history.
    `follow`: whether a symbolic link to the directory is accepted (the store's own
    path may be one, chosen by its user; nothing inside it may).
    """
    st = os.stat(path) if follow else os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise CorruptStore(str(path), 0, f"{what} is a symbolic link; the store never follows one")
    if not stat.S_ISDIR(st.st_mode):
        raise StoreUnavailable(f"{what} {path} is not a directory")
    if st.st_uid != os.geteuid():
        raise StoreUnavailable(f"{what} {path} is owned by uid {st.st_uid}, not by this user "
                               f"(uid {os.geteuid()}): refused")
    if st.st_mode & 0o022:
        raise StoreUnavailable(f"{what} {path} is writable by group or others (mode "
                               f"{stat.S_IMODE(st.st_mode):o}): refused; chmod go-w it if it is yours")
    return st


def prepare_dir(root: Path) -> bool:
    """Create the store directory, or check that an existing one is ours and usable.

    Returns whether it can be written; a store on a read-only filesystem can still
    be read, and nobody can be writing it.
    """
    try:
        make_dirs(root)  # what it creates is 0700, so nothing of ours needs tightening
    except (FileExistsError, NotADirectoryError):
        raise StoreUnavailable(f"store path {root} exists and is not a directory") from None
    except OSError as exc:
        if exc.errno != errno.EROFS or not root.exists():
            raise StoreUnavailable(f"cannot create store directory {root}: {exc.strerror}") from None
    check_dir(root, "store directory", follow=True)
    writable = not os.statvfs(root).f_flag & os.ST_RDONLY
    if writable and not os.access(root, os.W_OK | os.X_OK):
        raise StoreUnavailable(f"store directory {root} is not writable")
    if not (root / "FORMAT").exists() and not os.path.islink(root / "FORMAT"):
        if not writable:
            raise StoreUnavailable(f"{root} holds no store, and its filesystem is read-only")
        # A crash while creating FORMAT leaves its temporary file: still an empty store.
        strangers = {n for n in os.listdir(root) if not leftover_temp(n, "FORMAT")} - _KNOWN
        if strangers:
            raise StoreFormatError(f"{root} is not a runner store (it holds {sorted(strangers)[0]!r})")
    return writable


def create(root: Path, first_segment: Callable[[str], None]) -> None:
    """Make `root` a new store: its log, its first segment, then FORMAT naming its id. Under the lock.

    FORMAT comes last: from then on the store has a history, and a first segment
    that is missing is damage, never an empty store.
    """
    store_id = uuid.uuid4().hex
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(root / "log", DIR_MODE)
        check_dir(root / "log", "log directory", follow=False)
        first_segment(store_id)
        fmt = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "id": store_id}
        create_once(root / "FORMAT", codec.pack(fmt))  # its fsync of root also keeps log/'s name
        # and the store's own name, even if a crashed process created the directory
        sync_dir(root.resolve().parent)
    except OSError as exc:
        raise io_error(exc, f"creating store {root}") from None


def store_id(root: Path) -> str | None:
    """The id FORMAT gives the store, None when there is no FORMAT yet; refuses other formats."""
    try:
        data = read_file(root / "FORMAT")
    except FileNotFoundError:
        return None
    try:
        found = codec.unpack(data)
    except codec.Undecodable:
        raise StoreFormatError(f"{root}/FORMAT is not a runner store format file") from None
    if not isinstance(found, dict) or found.get("format") != FORMAT_NAME:
        raise StoreFormatError(f"{root} is not a runner store")
    if found.get("version") != FORMAT_VERSION:
        raise StoreFormatError(
            f"{root} is a store of format version {found.get('version')}; this runner reads "
            f"{FORMAT_VERSION} only (older stores are not converted: finish their runs with the "
            "runner that made them)")
    if type(found.get("id")) is not str:
        raise StoreFormatError(f"{root}/FORMAT names no store id")
    return str(found["id"])
