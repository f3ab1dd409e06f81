"""Workflows for the timer and combinator tests: durable sleep, all / any / race, asyncio misuse.

Loaded by the CLI under test (`RUNNER_APP=...,tests.apps.timers`).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING, Any

from runner import Retry, TimedOut, function

if TYPE_CHECKING:
    from runner.context import Context


@function
def stamp(tag: str) -> dict[str, Any]:
    """A leaf that says when it ran, in which process."""
    return {"tag": tag, "at": time.time(), "pid": os.getpid()}


@function
def wait_then(seconds: float, value: Any) -> Any:
    time.sleep(seconds)
    return value


@function(retry=Retry.none())  # fails at once: no retry hides which child failed first
def wait_then_fail(seconds: float, message: str) -> Any:
    time.sleep(seconds)
    raise ValueError(message)


@function
async def sleeper(ctx: Context, seconds: float) -> dict[str, Any]:
    """Sleep, then run a leaf: the leaf's time says when the workflow woke."""
    before = await ctx.run(stamp, "before")
    await ctx.sleep(seconds)
    after = await ctx.run(stamp, "after")
    return {"before": before, "after": after}


@function
async def sleep_until_then(ctx: Context, when: float) -> float:
    await ctx.sleep_until(when)
    return time.time()


@function
async def all_of(ctx: Context, specs: list[list[Any]]) -> Any:
    """ctx.all over leaves given as [seconds, value, fails]; a failure comes back as its message."""
    try:
        return {"values": await ctx.all([_leaf(ctx, *spec) for spec in specs])}
    except ValueError as exc:
        return {"failed": str(exc)}


@function
async def any_of(ctx: Context, specs: list[list[Any]]) -> Any:
    try:
        return {"value": await ctx.any([_leaf(ctx, *spec) for spec in specs])}
    except ExceptionGroup as group:
        return {"all_failed": sorted(str(e) for e in group.exceptions)}


@function
async def race_of(ctx: Context, specs: list[list[Any]]) -> Any:
    try:
        return {"value": await ctx.race([_leaf(ctx, *spec) for spec in specs])}
    except ValueError as exc:
        return {"failed": str(exc)}


@function
async def in_order(ctx: Context, specs: list[list[Any]]) -> list[Any]:
    """The values as their children settle, a failure as its message."""
    out: list[Any] = []
    async for handle in ctx.as_completed([_leaf(ctx, *spec) for spec in specs]):
        try:
            out.append(await handle)
        except ValueError as exc:
            out.append(f"failed: {exc}")
    return out


@function
async def with_deadline(ctx: Context, work: float, deadline: float) -> str:
    """A timeout is a race with a sleep."""
    job = ctx.run(wait_then, work, "done")
    timer = ctx.sleep(deadline)
    winner = await ctx.race([job, timer])
    return "timed out" if winner is None else winner


@function
async def race_then_branch(ctx: Context, marker: str) -> Any:
    """Waits on a race of two external promises, then runs a leaf named by the winner.

    The test settles one, kills the workers, settles the other and restarts: the replay
    must take the recorded branch.
    """
    first, second = ctx.promise(), ctx.promise()
    winner = await ctx.race([first, second])
    await ctx.promise()  # hold here: the test kills the workers while the run waits
    return await ctx.run(stamp, f"{marker}:{winner}")


@function
async def fan_all(ctx: Context, n: int) -> int:
    """ctx.all over n leaves: one wake-up of the parent, however many children."""
    return len(await ctx.all([ctx.run(stamp, str(i)) for i in range(n)]))


def _leaf(ctx: Context, seconds: float, value: Any, fails: bool = False) -> Any:
    if fails:
        return ctx.run(wait_then_fail, seconds, str(value))
    return ctx.run(wait_then, seconds, value)


@function
async def uses_gather(ctx: Context) -> Any:
    return await asyncio.gather(ctx.run(stamp, "a"), ctx.run(stamp, "b"))


@function
async def uses_sleep(ctx: Context) -> Any:
    await asyncio.sleep(0.01)
    return "slept"


@function
async def uses_wait_for(ctx: Context) -> Any:
    return await asyncio.wait_for(ctx.run(stamp, "a"), 5)


@function
async def many_sleepers(ctx: Context, n: int, until: float) -> int:
    """n child workflows, each sleeping until the same time: they wait on disk, holding no worker."""
    return len(await ctx.all([ctx.run(sleeper_until, until) for _ in range(n)]))


@function
async def sleeper_until(ctx: Context, until: float) -> bool:
    await ctx.sleep_until(until)
    return True


@function
async def sleeper_only(ctx: Context, seconds: float) -> bool:
    await ctx.sleep(seconds)
    return True


@function
async def staggered(ctx: Context, n: int, first: float, step: float) -> int:
    """n sleepers due one after another, `step` apart: each timer fires on its own."""
    return len(await ctx.all([ctx.run(sleeper_only, first + i * step) for i in range(n)]))


# -- per-call options and named promises ------------------------------------------------


@function(retry=Retry.none())
def fails_until(path: str, failures: int, error: str = "ValueError") -> int:
    """Fails its first `failures` runs (counted in a file), then returns how many runs it took."""
    with open(path, "a") as f:
        f.write("x")
    with open(path) as f:
        runs = len(f.read())
    if runs <= failures:
        raise {"ValueError": ValueError, "KeyError": KeyError}[error](f"run {runs}")
    return runs


@function
async def retried_per_call(ctx: Context, path: str, failures: int, error: str, attempts: int) -> Any:
    policy = Retry(attempts=attempts, delay=0.0, non_retryable=(KeyError,))
    try:
        return await ctx.run(fails_until, path, failures, error).options(retry=policy)
    except (ValueError, KeyError) as exc:
        return f"failed: {type(exc).__name__}"


@function
async def child_timeout(ctx: Context, work: float, timeout: float) -> str:
    try:
        return await ctx.run(wait_then, work, "done").options(timeout=timeout, id=f"{ctx.id}-job")
    except TimedOut:
        return "child timed out"


@function
async def named_approval(ctx: Context, order: str) -> Any:
    """Waits for an approval whose id the approver knows: `approval-<order>`."""
    decision = await ctx.promise(id=f"approval-{order}", timeout=60, kind="approval")
    return {"order": order, "decision": decision}
