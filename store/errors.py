"""Errors of the promise store: one root, each carrying the fields a caller needs."""

from __future__ import annotations


class StoreError(Exception):
    """Root of every error the store raises on purpose."""


class StoreFormatError(StoreError):
    """The directory is not a store of a format this code can read."""


class StoreUnavailable(StoreError):
    """The directory cannot be used: missing permissions, not a directory, and so on."""


class StoreIOError(StoreError):
    """A write or sync failed; the change was not made and the handle must be reopened."""


class StoreFull(StoreIOError):
    """The disk is full; the change was not made and nothing stored before was touched."""


class CorruptStore(StoreError):
    """A record is damaged somewhere other than an unacknowledged tail.

    The store refuses to open rather than read the damage as "absent": an absent
    settled promise would run again.
    """

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"corrupt record in {path} at byte {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class InvalidId(StoreError):
    """An id that cannot be stored (empty, not text, or too long)."""


class NotSerializable(StoreError):
    """A value that is not JSON-like (None, bool, int, float, str, bytes, list, dict)."""


class NotFound(StoreError):
    """No promise has this id."""

    def __init__(self, promise_id: str) -> None:
        super().__init__(f"no promise with id {promise_id!r}")
        self.promise_id = promise_id


class StaleClaim(StoreError):
    """A claim that is no longer current: its holder was fenced off."""

    def __init__(self, promise_id: str, counter: int, reason: str) -> None:
        super().__init__(f"stale claim on {promise_id!r} (counter {counter}): {reason}")
        self.promise_id = promise_id
        self.counter = counter
        self.reason = reason
