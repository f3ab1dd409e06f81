"""Live progress of `runner invoke` on a terminal: each branch, redrawn in place.

No thread draws it (rich's auto-refresh is off): the invoke process may fork
workers for an embedded supervisor, and forking a process with threads is
unsafe. The wait loop calls `update` whenever the store may have changed;
redraws are throttled, and the last frame is drawn when the run ends.
"""

from __future__ import annotations

import time
from types import TracebackType

from rich.live import Live

from runner.store import PromiseStore

from . import report, views

INTERVAL = 0.05  # seconds: at most 20 redraws a second
ROWS = 20  # branches shown one per line; the rest are counted


class LiveProgress:
    def __init__(self, store: PromiseStore, root: str, *, interval: float = INTERVAL,
                 rows: int = ROWS) -> None:
        self.store = store
        self.root = root
        self.interval = interval
        self.rows = rows
        self._last = 0.0
        self._done = False
        # No redirection of stdout/stderr: forked workers inherit sys.stdout, and a
        # redirected one would draw this view from inside them.
        self._live = Live(console=views.console(), auto_refresh=False, redirect_stdout=False,
                          redirect_stderr=False, transient=False)

    def __enter__(self) -> LiveProgress:
        self._live.start()
        self.update(force=True)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is None:
            self.finish()
        else:
            self._live.stop()

    def update(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._done or (not force and now - self._last < self.interval):
            return
        self._last = now
        data = report.branches(self.store, self.root, rows=self.rows)
        self._live.update(views.progress(data), refresh=True)

    def finish(self) -> None:
        """Draw the last frame and stop: what follows on the terminal is the result."""
        if not self._done:
            self.update(force=True)
            self._done = True
            self._live.stop()


class NoProgress:
    """What invoke uses when stdout is not a terminal, or with --json: nothing drawn."""

    def __enter__(self) -> NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, force: bool = False) -> None:
        return None

    def finish(self) -> None:
        return None


def for_invoke(store: PromiseStore, root: str, enabled: bool) -> LiveProgress | NoProgress:
    return LiveProgress(store, root) if enabled else NoProgress()
