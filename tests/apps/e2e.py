"""Functions for the runner's end-to-end tests: odd values, retries, a branch on a flag.

Loaded by the CLI under test (`RUNNER_APP=...,tests.apps.e2e`); every function leaves its
trace in a file the test names, so the test can count executions across processes.
"""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING, Any

from runner import ChildFailed, Retry, current, function

from .tracing import trace as _trace

if TYPE_CHECKING:
    from runner.context import Context

BRANCH_ENV = "E2E_BRANCH"  # which path `branchy` takes: "a" (default) or "b"




# -- values the store cannot hold -----------------------------------------------------


@function
def unstorable() -> set[int]:
    """A leaf whose result is not JSON-like: the run must be rejected, not crash a worker."""
    return {1, 2, 3}


@function
def echo(value: Any) -> Any:
    return value


@function
async def spawn_unstorable(ctx: Context) -> Any:
    """A workflow handing a child an argument that cannot be stored."""
    return await ctx.run(echo, {1, 2})


# -- retries ----------------------------------------------------------------------------


@function(retry=Retry(attempts=4, delay=0.05, backoff=1.0))
def flaky(path: str, failures: int) -> dict[str, int]:
    """Fails its first `failures` attempts, then succeeds."""
    _trace(path)
    attempt = current().attempt
    if attempt <= failures:
        raise ConnectionError(f"attempt {attempt} failed")
    return {"attempt": attempt}


@function
def steady(path: str) -> str:
    _trace(path)
    return "steady"


@function(retry=Retry(attempts=4, delay=0.05, non_retryable=(PermissionError,)))
def forbidden(path: str) -> None:
    """Fails with an error its policy says not to retry."""
    _trace(path)
    raise PermissionError("the provider said no")


@function
async def retry_family(ctx: Context, trace_dir: str) -> dict[str, Any]:
    f_flaky = ctx.run(flaky, f"{trace_dir}/flaky.jsonl", 2)
    f_steady = ctx.run(steady, f"{trace_dir}/steady.jsonl")
    f_forbidden = ctx.run(forbidden, f"{trace_dir}/forbidden.jsonl")
    try:
        await f_forbidden
        refused = "not raised"
    except PermissionError as error:  # the type and message survive the trip through the store
        refused = f"{type(error).__name__}: {error}"
    return {"flaky": await f_flaky, "steady": await f_steady, "forbidden": refused}


# -- a workflow whose path depends on its environment -----------------------------------


@function
def wait_for_gate(gate: str) -> str:
    """Blocks until the file `gate` exists (or gives up after a minute)."""
    deadline = time.monotonic() + 60
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate} never opened")
        time.sleep(0.01)
    return "opened"


@function
def skip_gate(gate: str) -> str:
    return "skipped"


@function
async def branchy(ctx: Context, gate: str) -> str:
    """Not deterministic on purpose: the first child depends on $E2E_BRANCH."""
    step = wait_for_gate if os.environ.get(BRANCH_ENV, "a") == "a" else skip_gate
    return await ctx.run(step, gate)


# -- deaths and deadlines -----------------------------------------------------------------


@function(retry=Retry(attempts=3, delay=0.05))
def kills_its_worker(path: str) -> None:
    """SIGKILLs the worker running it, every attempt: each death must count as one."""
    _trace(path)
    os.kill(os.getpid(), signal.SIGKILL)


@function(retry=Retry(attempts=1_000_000, delay=0.5, backoff=1.0))
def kills_its_worker_forever(path: str) -> None:
    """The same under a policy that never runs out: only its backoff paces the re-runs."""
    _trace(path, time=time.time())
    os.kill(os.getpid(), signal.SIGKILL)


@function
def traced_nap(path: str, seconds: float) -> str:
    """Records when each attempt starts, then sleeps: a branch to kill mid-flight."""
    _trace(path, time=time.time())
    time.sleep(seconds)
    return "rested"


@function
def nap(seconds: float) -> str:
    """Sleeps: a backlog's filler, or a leaf that outlives its deadline."""
    time.sleep(seconds)
    return "rested"


# -- a workflow whose path depends on a file, parked and resumed --------------------------


@function
def counted(trace: str, label: str) -> str:
    """A leaf that leaves one line per execution in `trace`."""
    _trace(trace, label=label)
    return label


@function
async def drifting(ctx: Context, flag: str, trace: str) -> list[Any]:
    """Not deterministic on purpose: child 0 depends on whether the file `flag` exists.

    Between its two children it waits for a person (`ctx.promise()`), so a test can
    change the flag while the workflow is suspended and make its replay diverge.
    """
    first = await ctx.run(counted, trace, "drifted" if os.path.exists(flag) else "first")
    approval = await ctx.promise()
    return [first, approval, await ctx.run(counted, trace, "last")]


# -- errors that keep their shape on the way back -----------------------------------------


class BadInput(ValueError):
    """A user's class deriving from a builtin one; imported wherever this app is loaded."""


@function(retry=Retry.none())
def raise_key() -> None:
    raise KeyError("k")


@function(retry=Retry.none())
def open_missing(path: str) -> None:
    with open(path):
        pass


@function(retry=Retry.none())
def raise_bad_input(reason: str) -> None:
    raise BadInput(reason)


@function(retry=Retry.none())
def raise_local() -> None:
    """A class no other process can have imported: it comes back as ChildFailed."""

    class Unreachable(ValueError):
        pass

    raise Unreachable("defined inside a function")


def _caught(exc: Exception) -> dict[str, Any]:
    return {"class": type(exc).__name__, "str": str(exc), "args": list(exc.args),
            "errno": getattr(exc, "errno", None), "filename": getattr(exc, "filename", None),
            "child_failed": isinstance(exc, ChildFailed), "value_error": isinstance(exc, ValueError),
            "bad_input": isinstance(exc, BadInput)}


@function
async def error_shapes(ctx: Context, missing: str) -> dict[str, Any]:
    """Awaits children that raise, and reports what each error came back as."""
    handles = {"key": ctx.run(raise_key), "missing": ctx.run(open_missing, missing),
               "user": ctx.run(raise_bad_input, "no such order"), "local": ctx.run(raise_local)}
    caught = {}
    for name, handle in handles.items():
        try:
            await handle
        except KeyError as exc:  # each as its nearest `except` would see it
            caught[name] = _caught(exc)
        except OSError as exc:
            caught[name] = _caught(exc)
        except ValueError as exc:
            caught[name] = _caught(exc)
    return caught


@function
async def naps(ctx: Context, count: int, seconds: float) -> int:
    """Many short naps: a run whose completions keep writing for a while."""
    handles = [ctx.run(nap, seconds) for _ in range(count)]
    return len([await handle for handle in handles])
