"""Small durable-filesystem steps, each commented with the invariant it keeps."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from .errors import StoreFull, StoreIOError, StoreUnavailable

FILE_MODE = 0o600
DIR_MODE = 0o700


def io_error(exc: OSError, what: str) -> StoreIOError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFull(f"disk full while {what}; nothing was changed")
    return StoreIOError(f"{what} failed: {exc.strerror or exc}")


def open_file(path: Path, flags: int, mode: int = FILE_MODE) -> int:
    """open(2) a store file, never through a symbolic link, and only a regular file.

    A link planted in the store (a segment pointing at /etc/passwd, a dangling lock)
    would have the store truncate, overwrite or create a file outside it.
    Raises StoreUnavailable for a link or a non-file; other OSErrors go to the caller.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StoreUnavailable(f"{path} is a symbolic link: refused (the store never follows one)") \
                from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StoreUnavailable(f"{path} is not a regular file: refused")
    return fd


def read_file(path: Path) -> bytes:
    """The whole content of a store file, read without following a link."""
    fd = open_file(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


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


def write_temp(path: Path, data: bytes) -> Path:
    """`data` in a new temporary file beside `path`, on disk: rename it into place to publish it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # A crashed process of the same pid may have left this name (as a file, or a planted
    # link): remove it and create anew, so nothing it points at is ever written.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
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
    tmp = write_temp(path, data)
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
    tmp = write_temp(path, data)
    os.rename(tmp, path)
    sync_dir(path.parent)  # the rename itself must survive a crash
