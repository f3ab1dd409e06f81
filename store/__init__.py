"""The durable promise store: records on disk, shared safely by several processes.

`open_store` returns the embedded directory store for a path, the PostgreSQL store
(store/pg) for a postgresql:// URL; `PromiseStore` is the interface the runner
speaks, so either backend stands behind it.
"""

from typing import Any

from .codec import normalize, normalize_packed, pack
from .directory import DEFAULT_LEASE, DirStore, check_id
from .errors import (
    CorruptStore,
    InvalidId,
    NotFound,
    NotSerializable,
    StaleClaim,
    StoreError,
    StoreFormatError,
    StoreFull,
    StoreIOError,
    StoreUnavailable,
)
from .history import Execution, History, open_history
from .interface import PromiseStore
from .pg.url import is_url, redact
from .types import (
    CHANGES,
    MAX_ID_BYTES,
    TIMER,
    TIMER_DUE,
    TIMERS,
    WORK,
    Claim,
    Completion,
    NewPromise,
    Page,
    Promise,
    State,
    Stats,
    Task,
    TaskState,
    Wake,
    settled_topic,
)


def open_store(location: str, **options: Any) -> PromiseStore:
    """The store at `location`: a PostgreSQL database for a postgresql:// (or postgres://)
    URL, else a directory. Without the driver the URL is one clear error naming the extra."""
    if not is_url(location):
        return DirStore(location, **options)
    try:
        from .pg.store import PgStore
    except ImportError:
        raise StoreUnavailable(f"{redact(location)} needs the PostgreSQL driver: "
                               "pip install 'fanout-runner[postgres]'") from None
    return PgStore(location, **options)


__all__ = [
    "CHANGES",
    "DEFAULT_LEASE",
    "MAX_ID_BYTES",
    "TIMER",
    "TIMERS",
    "TIMER_DUE",
    "WORK",
    "Claim",
    "Completion",
    "CorruptStore",
    "DirStore",
    "Execution",
    "History",
    "InvalidId",
    "NewPromise",
    "NotFound",
    "NotSerializable",
    "Page",
    "Promise",
    "PromiseStore",
    "StaleClaim",
    "State",
    "Stats",
    "StoreError",
    "StoreFormatError",
    "StoreFull",
    "StoreIOError",
    "StoreUnavailable",
    "Task",
    "TaskState",
    "Wake",
    "check_id",
    "is_url",
    "normalize",
    "normalize_packed",
    "open_history",
    "open_store",
    "pack",
    "redact",
    "settled_topic",
]
