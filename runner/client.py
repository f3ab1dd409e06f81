"""The runner from Python code: start runs, wait for them, settle promises from outside.

    client = runner.Client(store=".runner", app="myapp")
    handle = client.start(notify_all, {"order_id": "o-1"}, id="order-1")
    print(handle.result(timeout=30))        # or: await handle

A client needs a supervisor serving its store (`runner start`, or runner.LocalSupervisor):
it never runs one itself, since a web server's threads cannot fork workers or install
signal handlers. Waiting for a run no supervisor serves raises NoSupervisor at once
rather than hanging; a supervisor that dies while a client waits is not an error (the
next one to start finishes the run). A client is safe to share between threads: its
one store handle serialises access, and one watcher thread wakes all of its waiters.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

from runner.store import NotFound, Promise, State, open_history
from runner.store.history import History

from . import settle
from .apps import load_apps
from .error_values import error_value, raise_error
from .errors import NoSupervisor
from .history import RunHistory, in_run
from .invoke import submit
from .location import StoreLocation, Where
from .parked import parked_in_run
from .registry import registry
from .wakeups import Wakeups

Function = str | Callable[..., Any]
PathLike = str | os.PathLike[str]


class Client:
    """A store and the app modules whose functions it starts by name (found as the CLI finds them:
    `app`, else $RUNNER_APP, else `[tool.runner] app` in `cwd`'s pyproject.toml)."""

    def __init__(self, store: Where = ".runner", app: str | Sequence[str] = (), *,
                 cwd: PathLike | None = None) -> None:
        self.apps = load_apps([app] if isinstance(app, str) else app,
                              cwd=None if cwd is None else Path(cwd))
        self.location = StoreLocation(store)
        self.store = self.location.open()
        self.registry = registry
        self._wakeups = Wakeups(self.store)
        self._history: History | None = None

    # -- runs ------------------------------------------------------------------------

    def start(self, fn: Function, /, *args: Any, id: str | None = None,
              timeout: float | None = None) -> RunHandle:
        """Create the run and return its handle at once; an id that exists attaches to that run.

        `fn` is a registered function or its name; `timeout` (seconds from now) rejects
        the run and its pending children once passed.
        """
        name = fn if isinstance(fn, str) else self.registry.name_of(fn)
        root = id if id is not None else f"{name}-{uuid.uuid4().hex[:12]}"
        deadline = None if timeout is None else time.time() + timeout
        promise = submit(self.store, self.registry, name, list(args), root, timeout=deadline)
        return RunHandle(self, promise.id)

    def run(self, fn: Function, /, *args: Any, id: str | None = None, timeout: float | None = None) -> Any:
        """Start a run and wait for its value (or its error, raised as a workflow would see it)."""
        return self.start(fn, *args, id=id, timeout=timeout).result()

    async def run_async(self, fn: Function, /, *args: Any, id: str | None = None,
                        timeout: float | None = None) -> Any:
        handle = await asyncio.to_thread(self.start, fn, *args, id=id, timeout=timeout)
        return await handle

    def get(self, id: str) -> RunHandle:
        """A handle on an existing promise (a run, or any promise in it); NotFound if there is none."""
        if self.store.get(id) is None:
            raise NotFound(id)
        return RunHandle(self, id)

    # -- settling from outside ------------------------------------------------------------

    def resolve(self, promise_id: str, value: Any = None) -> Promise:
        """Resolve a pending promise (one a workflow made with ctx.promise(), say) with `value`.

        A settled promise never changes: settling one twice raises AlreadySettled."""
        return settle.resolve(self.store, promise_id, value)

    def reject(self, promise_id: str, error: BaseException | str) -> Promise:
        """Reject a pending promise; an exception comes back as itself where it is awaited."""
        value = error_value(error) if isinstance(error, BaseException) else {"type": "Rejected",
                                                                              "message": error}
        return settle.settle(self.store, promise_id, State.REJECTED, value)

    def cancel(self, promise_id: str, reason: str = "canceled by a client") -> list[str]:
        """Cancel a promise and every pending promise below it; returns the descendants cancelled."""
        return settle.cancel(self.store, promise_id, reason)[1]

    # -- what happened ----------------------------------------------------------------

    def history(self, root: str) -> RunHistory:
        """Every execution in the run `root` so far, read from the store's log (see RunHistory)."""
        if self._history is None:
            self._history = open_history(self.location.history_dir())
        return RunHistory([e for e in self._history.executions() if in_run(root, e.promise_id)],
                          self.registry)

    # -- closing --------------------------------------------------------------------------

    def close(self) -> None:
        self._wakeups.close()
        if self._history is not None:
            self._history.close()
        self.store.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- for handles ----------------------------------------------------------------------

    def _check_waitable(self, promise_id: str) -> None:
        """Refuse a wait nothing can end: no supervisor serves the store, or a workflow in the
        run is parked (its replay took another path; it waits for a fix to the code)."""
        if self.store.supervisor() is None:
            raise NoSupervisor(promise_id, str(self.location))
        if (parked := parked_in_run(self.store, promise_id)) is not None:
            raise parked

    def _settled(self, promise_id: str) -> Promise:
        promise = self.store.get(promise_id)
        if promise is None:
            raise NotFound(promise_id)
        return promise


class RunHandle:
    """A run started or attached to: its state, its result (blocking or awaited), cancelling it."""

    def __init__(self, client: Client, id: str) -> None:
        self.client = client
        self.id = id

    @property
    def promise(self) -> Promise:
        """The stored record, read now."""
        return self.client._settled(self.id)

    @property
    def state(self) -> State:
        return self.promise.state

    def done(self) -> bool:
        return self.promise.settled

    def result(self, timeout: float | None = None) -> Any:
        """Block until the run settles; its value, or its error raised as a workflow would see it
        (runner.Canceled, runner.TimedOut, the original exception, runner.ChildFailed).

        Raises TimeoutError when `timeout` seconds pass first (the run goes on); as the wait
        begins, NoSupervisor when no supervisor serves the store, and runner.errors.Parked
        when a workflow in the run is parked.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            woken = threading.Event()
            remove = self.client._wakeups.add(self.id, woken.set)
            try:
                if not woken.is_set():
                    self.client._check_waitable(self.id)
                if not woken.wait(None if deadline is None else max(0.0, deadline - time.monotonic())):
                    raise TimeoutError(f"run {self.id} is still pending after {timeout:g} s")
            finally:
                remove()
            if (promise := self.client._settled(self.id)).settled:
                return _outcome(promise)

    async def result_async(self, timeout: float | None = None) -> Any:
        """As result(), for asyncio: the loop is never blocked on the store (reads run in a thread,
        the wake-up arrives through call_soon_threadsafe)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            await self._woken(None if deadline is None else max(0.0, deadline - time.monotonic()), timeout)
            if (promise := await asyncio.to_thread(self.client._settled, self.id)).settled:
                return _outcome(promise)

    async def _woken(self, remaining: float | None, timeout: float | None) -> None:
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed while we waited
                loop.call_soon_threadsafe(_set_once, woken)

        remove = await asyncio.to_thread(self.client._wakeups.add, self.id, wake)
        try:
            await asyncio.sleep(0)  # let a wake-up from add() land before asking who serves
            if not woken.done():
                await asyncio.to_thread(self.client._check_waitable, self.id)
            await asyncio.wait_for(woken, remaining)
        except TimeoutError:
            raise TimeoutError(f"run {self.id} is still pending after {timeout:g} s") from None
        finally:
            remove()

    def __await__(self) -> Generator[Any, None, Any]:
        return self.result_async().__await__()

    def cancel(self, reason: str = "canceled by a client") -> list[str]:
        """Cancel the run and its pending children (result() then raises runner.Canceled)."""
        return self.client.cancel(self.id, reason)

    def __repr__(self) -> str:
        return f"RunHandle({self.id!r})"


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _outcome(promise: Promise) -> Any:
    if promise.state is State.RESOLVED:
        return promise.value
    raise raise_error(promise)
