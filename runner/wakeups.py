"""One watcher per client wakes every waiter whose promise settled.

A web server may have hundreds of requests waiting for runs at once. A watch each
would cost an inotify instance each (a user has 128 by default); one thread here
sleeps on one watch, to which each waited promise adds its settle's topic, reads the
waited promises when it wakes, and calls the wake function of each waiter whose
promise has settled. A
waiter is a threading.Event's `set`, or a future's, handed over with
`loop.call_soon_threadsafe`, so an asyncio loop never blocks on the store.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
from collections.abc import Callable

from runner.store import PromiseStore, settled_topic
from runner.store.interface import Watchable

log = logging.getLogger(__name__)

BACKSTOP = 1.0  # seconds between looks when nothing woke us (a deadline passing writes nothing)
Wake = Callable[[], None]


class Wakeups:
    def __init__(self, store: PromiseStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._waiting: dict[str, dict[int, Wake]] = {}
        self._next = 0
        self._thread: threading.Thread | None = None
        self._stop: tuple[int, int] | None = None  # a pipe that wakes the thread to end it
        self._watch: Watchable | None = None
        self._closed = False

    def add(self, promise_id: str, wake: Wake) -> Callable[[], None]:
        """Call `wake` once `promise_id` has settled (at once if it has); returns the remover.

        The waiter is registered before the store is read, so a settle that lands
        between the two is seen by the read or by the next look, never by neither.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("the client is closed")
            key, self._next = self._next, self._next + 1
            self._waiting.setdefault(promise_id, {})[key] = wake
            if self._watch is None:  # a client that never waits (`runner invoke`) has none
                self._watch = self._store.watch(settled_topic(promise_id))
                self._stop = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
                self._thread = threading.Thread(target=self._run, args=(self._watch, self._stop[0]),
                                                name="runner-wakeups", daemon=True)
                self._thread.start()
            else:
                self._watch.add(settled_topic(promise_id))

        def remove() -> None:
            with self._lock:
                waiters = self._waiting.get(promise_id, {})
                waiters.pop(key, None)
                if not waiters:
                    self._waiting.pop(promise_id, None)

        promise = self._store.get(promise_id)
        if promise is None or promise.settled:
            self._fire([promise_id])
        return remove

    def _fire(self, ids: list[str]) -> None:
        with self._lock:
            wakes = [wake for pid in ids for wake in self._waiting.pop(pid, {}).values()]
        for wake in wakes:
            wake()

    def _run(self, watch: Watchable, stop: int) -> None:
        try:
            while True:
                ready, _, _ = select.select([watch.fileno(), stop], [], [], BACKSTOP)
                if stop in ready:
                    return
                if watch.fileno() in ready:
                    watch.drain()
                self._look()
        finally:
            watch.close()

    def _look(self) -> None:
        """Wake whoever's promise settled (everyone, if the store failed: each waiter reads
        the store itself and meets the error there)."""
        with self._lock:
            ids = list(self._waiting)
        if not ids:
            return
        try:
            settled = []
            for pid in ids:
                promise = self._store.get(pid)
                if promise is None or promise.settled:
                    settled.append(pid)
        except Exception:
            log.warning("the store could not be read while waiting", exc_info=True)
            settled = ids
        self._fire(settled)

    def close(self) -> None:
        """Stop the watcher; waiters still registered are woken to find the client closed."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread, stop = self._thread, self._stop
        if thread is not None and stop is not None:
            with contextlib.suppress(BlockingIOError):
                os.write(stop[1], b"x")
            thread.join()
            for fd in stop:
                os.close(fd)
        with self._lock:
            ids = list(self._waiting)
        self._fire(ids)
