"""Retention: whole settled runs older than an age are removed, on a schedule.

The default keeps everything. A supervisor started with `--retain 7d` removes, every
`--gc-every`, each run whose every promise settled more than seven days ago
(store.gc: never a part of a run, never a run with anything pending); `runner gc`
does the same once, by hand.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from runner.store import PromiseStore

log = logging.getLogger(__name__)


@dataclass
class Retention:
    keep: float  # seconds a settled run is kept
    every: float  # seconds between passes
    _next: float = field(default=0.0, init=False)  # monotonic time of the next pass (0: at once)

    def due(self, store: PromiseStore) -> list[str]:
        """Remove what has aged out, if a pass is due; returns the roots removed."""
        now = time.monotonic()
        if now < self._next:
            return []
        self._next = now + self.every
        removed = store.gc(time.time() - self.keep)
        if removed:
            log.info("retention removed %d runs settled over %.0f s ago", len(removed), self.keep)
        return removed
