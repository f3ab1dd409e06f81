"""Per-function retry policy: how many attempts, how long between them, what not to retry.

The policy only answers "how long until the next attempt"; it never sleeps or reads a
clock, so the worker can turn the answer into a durable not-before time and tests can
check it without waiting.
"""

from __future__ import annotations

import builtins
import logging
import math
import sys
from dataclasses import dataclass
from typing import Any

from runner.store import Promise

log = logging.getLogger(__name__)

RETRY_TAG = "retry"  # the tag a child given its own policy (ctx.run(...).options(retry=...)) stores it in


@dataclass(frozen=True)
class Retry:
    """Exponential backoff: `delay`, `delay * backoff`, ... capped at `max_delay`."""

    attempts: int = 3
    delay: float = 0.1
    backoff: float = 2.0
    max_delay: float = 10.0
    non_retryable: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        # bool is an int subclass; Retry(attempts=True) is a mistake, not one attempt.
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise TypeError(f"attempts must be an int, not {type(self.attempts).__name__}")
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")
        for field in ("delay", "max_delay"):
            value = getattr(self, field)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{field} must be a finite number >= 0, got {value}")
        if not math.isfinite(self.backoff) or self.backoff < 1:
            raise ValueError(f"backoff must be a finite number >= 1, got {self.backoff}")
        # Accept any iterable of classes but store a tuple: isinstance() needs one, and
        # a frozen policy should be hashable.
        classes = tuple(self.non_retryable)
        for cls in classes:
            if not (isinstance(cls, type) and issubclass(cls, BaseException)):
                raise TypeError(f"non_retryable must hold exception classes, got {cls!r}")
        object.__setattr__(self, "non_retryable", classes)

    @classmethod
    def none(cls) -> Retry:
        """One attempt, no retry: for calls that must not repeat on failure."""
        return cls(attempts=1)

    def next_delay(self, attempt: int, error: BaseException) -> float | None:
        """Seconds to wait after failed attempt number `attempt` (1-based), or None to stop."""
        if attempt < 1:
            raise ValueError(f"attempt numbers start at 1, got {attempt}")
        if attempt >= self.attempts or isinstance(error, self.non_retryable):
            return None
        try:
            wait = self.delay * self.backoff ** (attempt - 1)
        except OverflowError:  # a late attempt of a long policy: the cap applies anyway
            wait = math.inf if self.delay else 0.0
        return min(wait, self.max_delay)

    def stored(self) -> dict[str, Any]:
        """The policy as the store holds it: the classes not to retry by name, never by reference."""
        return {"attempts": self.attempts, "delay": self.delay, "backoff": self.backoff,
                "max_delay": self.max_delay,
                "non_retryable": [f"{c.__module__}.{c.__qualname__}" for c in self.non_retryable]}

    @classmethod
    def from_stored(cls, stored: dict[str, Any]) -> Retry:
        """The policy a child stored; a class not to retry is found among the modules this
        process imported (a module named by stored data is never imported)."""
        classes = [found for name in stored.get("non_retryable", []) if (found := _imported(name))]
        return cls(stored["attempts"], stored["delay"], stored["backoff"], stored["max_delay"],
                   tuple(classes))


def policy_of(promise: Promise, default: Retry) -> Retry:
    """The child's own policy when it has one (any worker reads the same), else `default`."""
    stored = promise.tags.get(RETRY_TAG)
    if not isinstance(stored, dict):
        return default
    try:
        return Retry.from_stored(stored)
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("%s: its stored retry policy does not read (%s); the function's applies", promise.id, exc)
        return default


def _imported(name: str) -> type[BaseException] | None:
    module_name, _, qualname = name.rpartition(".")
    found: Any = builtins if module_name == "builtins" else sys.modules.get(module_name)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if isinstance(found, type) and issubclass(found, BaseException):
        return found
    log.warning("retry policy: %s is not an imported exception class; it is retried", name)
    return None
