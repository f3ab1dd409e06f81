"""Driving a workflow coroutine: replay, suspend, resume, finish.

A workflow's coroutine is stepped by hand. When it awaits a child that has not
settled, the step returns that child; the worker then suspends the promise in
the store (releasing its claim, so waiting holds no worker) and keeps the
coroutine in memory. If the same worker claims it again next, it resumes the
coroutine where it stopped; anyone else replays it from the top.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from runner.store import Wake

from .context import Context, Wait
from .errors import AsyncioInWorkflow
from .noloop import NO_LOOP

log = logging.getLogger(__name__)

_CLOSE_TRIES = 8  # closes of a coroutine whose `finally` blocks keep awaiting; then the GC has it


@dataclass(slots=True)
class Finished:
    value: Any


@dataclass(slots=True)
class Failed:
    error: BaseException


@dataclass(slots=True)
class Waiting:
    children: tuple[str, ...]
    wake: Wake


Step = Finished | Failed | Waiting


class WorkflowRun:
    """One workflow's coroutine and context, alive between its suspensions."""

    def __init__(self, ctx: Context, coro: Any) -> None:
        self.ctx = ctx
        self.coro = coro
        self.counter = 0  # the claim counter it last suspended under

    def step(self) -> Step:
        """Run until the next await whose condition does not hold yet, the end, or an error.

        Whatever the coroutine raises fails this attempt, BaseException included: a
        workflow's `sys.exit()` or `raise KeyboardInterrupt` is its own error, never the
        worker's (a worker ignores SIGINT; its shutdown never interrupts a step, which runs
        to its next await without yielding to the loop).

        The step runs with NO_LOOP as the running event loop: asyncio.gather, sleep or
        wait_for called by the workflow ask it for the loop and get a clear error, before
        anything is scheduled on the worker's real loop.
        """
        previous = asyncio.events._get_running_loop()
        asyncio.events._set_running_loop(NO_LOOP)
        try:
            yielded = self.coro.send(None)
        except StopIteration as stop:
            try:
                self.ctx.check_complete()
            except Exception as exc:
                return Failed(exc)
            return Finished(stop.value)
        except BaseException as exc:
            return Failed(exc)
        finally:
            asyncio.events._set_running_loop(previous)
        if not isinstance(yielded, Wait):
            self.close()
            return Failed(AsyncioInWorkflow.awaited(self.ctx.id, yielded))
        return Waiting(yielded.ids, yielded.wake)

    def close(self) -> None:
        """Drop the coroutine; whatever its `finally` blocks do about it is not our failure.

        A `finally: await ctx.run(cleanup)` awaits a child nobody recorded, so the coroutine
        yields where it should exit ("coroutine ignored GeneratorExit") and stays
        suspended in its `finally`; closing again ends it there, one try per such await.
        Its cleanup still runs, durably, when the workflow replays from the store.
        """
        for _ in range(_CLOSE_TRIES):
            try:
                self.coro.close()
                return
            except BaseException as exc:
                log.info("%s: closing its coroutine raised %r (ignored: it replays from the store)",
                         self.ctx.id, exc)


class RunCache:
    """Suspended workflows kept in memory, least recently used evicted first.

    An evicted workflow is not lost: it replays from the store when woken.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        self._runs: OrderedDict[str, WorkflowRun] = OrderedDict()
        self._capacity = capacity

    def put(self, promise_id: str, run: WorkflowRun) -> None:
        self._runs[promise_id] = run
        self._runs.move_to_end(promise_id)
        while len(self._runs) > self._capacity:
            self._runs.popitem(last=False)[1].close()

    def take(self, promise_id: str, counter: int) -> WorkflowRun | None:
        """The run if nobody else claimed the workflow since it suspended here."""
        run = self._runs.pop(promise_id, None)
        if run is not None and run.counter + 1 != counter:
            run.close()
            return None
        return run
