"""Per-function retry policy: how many attempts, how long between them, what not to retry.

The policy only answers "how long until the next attempt"; it never sleeps or reads a
clock, so the worker can turn the answer into a durable not-before time and tests can
check it without waiting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


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
