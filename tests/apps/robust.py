"""Functions that misbehave the way users' code does: for the tests of a worker's robustness.

Loaded by the CLI under test with the other e2e apps. Each leaf leaves one trace line per
execution (tests.apps.e2e._trace), so a test counts executions across processes.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TYPE_CHECKING, Any

from runner import Retry, function
from runner.errors import ChildIdTooLong
from tests.apps.e2e import _trace

if TYPE_CHECKING:
    from runner.context import Context


def _escape(kind: str) -> None:
    """Raise what escapes user code without being an Exception (or, for StopIteration,
    what a thread pool's future cannot carry)."""
    if kind == "StopIteration":
        next(iter([]))
    if kind == "SystemExit":
        sys.exit(3)
    if kind == "KeyboardInterrupt":
        raise KeyboardInterrupt
    if kind == "GeneratorExit":
        raise GeneratorExit
    if kind == "CancelledError":
        raise asyncio.CancelledError
    raise AssertionError(f"unknown kind {kind!r}")


@function(retry=Retry(attempts=2, delay=0.0))
def escapes(path: str, kind: str) -> None:
    """A sync leaf: run in the worker's thread pool."""
    _trace(path, kind=kind)
    _escape(kind)


@function(retry=Retry(attempts=2, delay=0.0))
async def escapes_async(path: str, kind: str) -> None:
    """An async leaf: run on the worker's event loop."""
    _trace(path, kind=kind)
    _escape(kind)


@function
async def cancels_itself(path: str) -> None:
    """Cancels the task it runs in: its own doing, not the worker's shutdown."""
    _trace(path)
    task = asyncio.current_task()
    assert task is not None
    task.cancel()
    await asyncio.sleep(0)


@function
async def workflow_escapes(ctx: Context, kind: str) -> None:
    _escape(kind)


@function
def cleanup(path: str) -> str:
    _trace(path)
    return "cleaned"


@function
async def with_cleanup(ctx: Context, path: str) -> list[Any]:
    """Awaits in its `finally`: closing its coroutine makes it yield where it should exit."""
    try:
        return [await ctx.promise(), await ctx.promise()]
    finally:
        await ctx.run(cleanup, path)


@function
async def unstorable_tag(ctx: Context) -> Any:
    """A `ctx.promise()` tagged with a value the store cannot hold."""
    return await ctx.promise(when={1, 2})


@function
async def descend(ctx: Context, depth: int) -> int:
    """Recurses until its child's id would not fit, and catches that where it is raised."""
    try:
        handle = ctx.run(descend, depth + 1)
    except ChildIdTooLong:
        return depth
    return await handle


@function
async def blocks_loop(path: str, seconds: float) -> str:
    """An async leaf that blocks its event loop, as a careless `time.sleep` does."""
    _trace(path)
    time.sleep(seconds)
    return "unblocked"
