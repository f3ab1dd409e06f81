"""The durable promise store: records on disk, shared safely by several processes.

`open_store` returns the embedded directory store; `PromiseStore` is the
interface the runner speaks, so another backend can stand behind it.
"""

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


def open_store(path: str, **options: float) -> DirStore:
    return DirStore(path, **options)


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
    "normalize",
    "normalize_packed",
    "open_history",
    "open_store",
    "pack",
    "settled_topic",
]
