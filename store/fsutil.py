"""Small durable-filesystem steps, each commented with the invariant it keeps."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from .errors import StoreFull, StoreIOError

FILE_MODE = 0o600
DIR_MODE = 0o700


def io_error(exc: OSError, what: str) -> StoreIOError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFull(f"disk full while {what}; nothing was changed")
    return StoreIOError(f"{what} failed: {exc.strerror or exc}")


def sync_dir(path: Path) -> None:
    """fsync a directory, so a name created, renamed or removed in it survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path) -> None:
    """Create `path` and its missing parents, each name synced into its parent.

    mkdir(parents=True) would leave every new entry in the page cache only: after a
    power cut the store, or a folder above it, could be gone with all it acknowledged.
    """
    if path.is_dir():
        return
    make_dirs(path.parent)
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        if not path.is_dir():
            raise
        return  # another process created it, and syncs it into its parent
    sync_dir(path.parent)


def write_all(fd: int, data: bytes) -> None:
    """Write every byte or raise: a short write on a regular file means the disk is full."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written == 0:
            raise OSError(errno.ENOSPC, "short write")
        view = view[written:]


def _write_temp(path: Path, data: bytes) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        write_all(fd, data)
        os.fsync(fd)  # the data must be on disk before any name points at it
    except OSError:
        os.unlink(tmp)
        raise
    finally:
        os.close(fd)
    return tmp


def create_once(path: Path, data: bytes) -> bool:
    """Create `path` holding `data`, durably, unless it exists; True if we created it.

    The content goes to a temporary name first and is linked into place: link,
    unlike rename, never replaces an existing file, and nobody ever sees a
    half-written file under the final name.
    """
    tmp = _write_temp(path, data)
    try:
        os.link(tmp, path)
        created = True
    except FileExistsError:
        created = False
    finally:
        os.unlink(tmp)
    sync_dir(path.parent)  # the new name must survive a crash
    return created


def write_replace(path: Path, data: bytes) -> None:
    """Replace `path` atomically: a crash leaves the old or the new content, never a mix."""
    tmp = _write_temp(path, data)
    os.rename(tmp, path)
    sync_dir(path.parent)  # the rename itself must survive a crash
