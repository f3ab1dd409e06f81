"""What a store directory holds, and checking that a directory is one.

Layout::

    STORE/
      FORMAT      format name and version (created once, never replaced)
      lock        flock'ed around every read and write of the log (never unlinked)
      supervisor.lock   held by the one running supervisor (never unlinked)
      snapshot    the whole state up to the start of one log segment (atomic replace)
      log/NNNNNNNN.seg   append-only frames; each frame is one atomic batch of operations
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import codec
from .errors import InvalidId, StoreFormatError, StoreUnavailable
from .fsutil import DIR_MODE, create_once, io_error, make_dirs, sync_dir
from .types import MAX_ID_BYTES

FORMAT_NAME = "fanout-runner-store"
FORMAT_VERSION = 1
_KNOWN = {"FORMAT", "lock", "snapshot", "log", "supervisor.lock"}


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


def _format_bytes() -> bytes:
    return codec.pack({"format": FORMAT_NAME, "version": FORMAT_VERSION})


def prepare_dir(root: Path) -> None:
    """Create the store directory, or check that an existing one is ours and usable."""
    try:
        make_dirs(root)
    except (FileExistsError, NotADirectoryError):
        raise StoreUnavailable(f"store path {root} exists and is not a directory") from None
    except OSError as exc:
        raise StoreUnavailable(f"cannot create store directory {root}: {exc.strerror}") from None
    if not root.is_dir():
        raise StoreUnavailable(f"store path {root} is not a directory")
    if not os.access(root, os.W_OK | os.X_OK):
        raise StoreUnavailable(f"store directory {root} is not writable")
    fmt = root / "FORMAT"
    if not fmt.exists():
        # A crash while creating FORMAT leaves its temporary file: still an empty store.
        strangers = {n for n in os.listdir(root) if not leftover_temp(n, "FORMAT")} - _KNOWN
        if strangers:
            raise StoreFormatError(f"{root} is not a runner store (it holds {sorted(strangers)[0]!r})")
        try:
            (root / "log").mkdir(mode=DIR_MODE, exist_ok=True)
            create_once(fmt, _format_bytes())  # its fsync of root also keeps log/'s name
            # and the store's own name, even if a crashed process created the directory
            sync_dir(root.resolve().parent)
        except OSError as exc:
            raise io_error(exc, f"creating store {root}") from None
    try:
        found = codec.unpack(fmt.read_bytes())
    except Exception:
        raise StoreFormatError(f"{root}/FORMAT is not a runner store format file") from None
    if not isinstance(found, dict) or found.get("format") != FORMAT_NAME:
        raise StoreFormatError(f"{root} is not a runner store")
    if found.get("version") != FORMAT_VERSION:
        raise StoreFormatError(
            f"{root} is a store of format version {found.get('version')}; this runner reads {FORMAT_VERSION}")
