"""Errors of the runner: one root, each carrying the fields a caller needs.

The CLI turns a `RunnerError` into a one-line message and a non-zero exit, so every
message here is written to stand alone on one line.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping, Sequence
from typing import Any


class RunnerError(Exception):
    """Root of every error the runner raises on purpose."""


class RegistryError(RunnerError):
    """A function cannot be registered, or named, as asked."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


class UnknownFunction(RegistryError):
    """No function is registered under this name (typo, or its module was not loaded)."""

    def __init__(self, name: str, registered: Sequence[str] = ()) -> None:
        known = ", ".join(registered) if registered else "none"
        super().__init__(name, f"unknown function {name!r} (registered: {known})")
        self.registered = tuple(registered)


class NonDeterminism(RunnerError):
    """A replayed workflow called something other than what its store records.

    Mixing the recorded result of one call into another would be silent corruption,
    so replay stops here instead.
    """

    def __init__(self, promise_id: str, position: int, expected: str, found: str) -> None:
        super().__init__(
            f"non-determinism in {promise_id} at child {position}: "
            f"replay called {found}, the store records {expected}"
        )
        self.promise_id = promise_id
        self.position = position
        self.expected = expected
        self.found = found


class ChildIdTooLong(RunnerError):
    """A child's id (`<parent>.<position>`) would pass the store's limit on id size.

    Raised at `ctx.run` (or `ctx.rpc`, `ctx.promise`), inside the workflow, before
    anything is written: a recursion that deep, or a parent id that long, cannot be stored.
    """

    def __init__(self, parent: str, position: int, size: int, limit: int) -> None:
        super().__init__(f"child {position} of {_short(parent)} would have an id of {size} bytes, "
                         f"past the limit of {limit}: the call tree is too deep (or its ids too long)")
        self.parent = parent
        self.position = position
        self.size = size
        self.limit = limit


def _short(promise_id: str, keep: int = 60) -> str:
    """An id fit for a one-line message: a long one shows its two ends."""
    if len(promise_id) <= keep:
        return repr(promise_id)
    return f"{promise_id[:keep // 2]!r}...{promise_id[-keep // 2:]!r} ({len(promise_id)} characters)"


class AppError(RunnerError):
    """The user's app modules (where functions get registered) could not be loaded."""

    def __init__(self, message: str, module: str | None = None) -> None:
        super().__init__(message)
        self.module = module


class ChildFailed(RunnerError):
    """A child promise was rejected with an error that cannot come back as itself.

    A builtin exception comes back as itself, and so does a user's class that the
    awaiting process has imported and can rebuild from its stored arguments (see
    error_values.py). Anything else arrives as this; when the original class derives
    from a builtin one, this is also an instance of that builtin (a `BadInput(ValueError)`
    arrives as a ChildFailed that `except ValueError` catches).

    `error` is the stored mapping; `module` and `qualname` name the original class
    (None for an error stored without them), `error_args` its stored arguments.
    """

    def __init__(self, promise_id: str, type_name: str, message: str,
                 error: Mapping[str, Any] | None = None) -> None:
        # Exception.__init__, not super(): in a subclass that is also, say, a
        # UnicodeDecodeError, the next __init__ along would want that builtin's arguments.
        Exception.__init__(self, f"{type_name}: {message}" if message else type_name)
        self.promise_id = promise_id
        self.type_name = type_name
        self.message = message
        self.error: dict[str, Any] = dict(error) if error is not None else {"type": type_name,
                                                                              "message": message}
        self.module: str | None = _text_or_none(self.error.get("module"))
        self.qualname: str | None = _text_or_none(self.error.get("qualname"))
        self.error_args: list[Any] | None = self.error.get("args") if isinstance(
            self.error.get("args"), list) else None

    def __str__(self) -> str:
        # The message given above, not a builtin base's own __str__ (UnicodeDecodeError's
        # reads fields that are never set here).
        return Exception.__str__(self)


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class Canceled(ChildFailed):
    """The awaited promise was cancelled (by `runner promises cancel`, or with its run)."""


class TimedOut(ChildFailed):
    """The awaited promise passed its timeout before it settled."""


class WorkerDied(RunnerError):
    """The process running an attempt died: killed (SIGKILL, the OOM killer), exited
    (`sys.exit`, `os._exit`), crashed (a segfault), or stopped heartbeating until its
    lease lapsed.

    A death counts as an attempt. The function's retry policy is asked with this error,
    so `Retry(non_retryable=(WorkerDied,))` never runs a function again after a death;
    once the policy is spent the promise is rejected with `{"type": "WorkerDied", ...}`.
    """

    def __init__(self, promise_id: str, message: str) -> None:
        super().__init__(message)
        self.promise_id = promise_id


class BadInput(RunnerError):
    """Input from the command line that cannot be used: bad JSON, a reserved id, and so on."""


class Interrupted(RunnerError):
    """Waiting for a run was stopped by a signal; the run itself stays on disk, unharmed."""

    def __init__(self, promise_id: str, func: str, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}; run {promise_id} is kept: "
                         f"'runner invoke {func} --id {promise_id}' or 'runner start' finishes it")
        self.promise_id = promise_id
        self.signum = signum
        self.exit_code = 128 + signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class SupervisorRunning(RunnerError):
    """Another supervisor already runs on this store; two would fight over its claims."""


class AlreadySettled(BadInput):
    """A promise settled from outside was settled already; a settled promise never changes."""

    def __init__(self, promise_id: str, state: str) -> None:
        super().__init__(f"promise {promise_id!r} is already {state}; nothing changed")
        self.promise_id = promise_id
        self.state = state


class NotParked(BadInput):
    """`runner promises retry` named a promise that is not parked: there is nothing to resume."""

    def __init__(self, promise_id: str, state: str) -> None:
        super().__init__(f"promise {promise_id!r} is not parked (it is {state}); nothing changed")
        self.promise_id = promise_id
        self.state = state


class Parked(RunnerError):
    """A run cannot finish while a workflow in it is parked: its replay took another path.

    The run is kept, waiting for a fix to the code; `runner invoke` exits with this
    error's own code rather than wait for a fix it cannot see.
    """

    exit_code = 4

    def __init__(self, root: str, parked_id: str, error: str, resume: str) -> None:
        where = "" if parked_id == root else f" at {parked_id}"
        super().__init__(f"run {root} is parked{where}: {error}; once the code is fixed, '{resume}' "
                         "resumes it (so does the next supervisor to start)")
        self.promise_id = root
        self.parked_id = parked_id


class NoSupervisor(RunnerError):
    """A client waits for a run on a store that no supervisor serves: nothing would settle it.

    Start one (`runner start --store DIR`, or `with runner.LocalSupervisor(DIR)`) and wait
    again; the run is kept on disk.
    """

    def __init__(self, promise_id: str, store: str) -> None:
        super().__init__(f"no supervisor is running on {store}, so run {promise_id} cannot progress: start "
                         f"one ('runner start --store {store}', or runner.LocalSupervisor) and wait again")
        self.promise_id = promise_id


class SupervisorFailed(RunnerError):
    """A local supervisor did not come up (it exited, or its workers were not all forked in time)."""


_DURABLE = {  # what a workflow uses instead of an asyncio call
    "gather": "ctx.all(handles)", "sleep": "ctx.sleep(seconds)",
    "wait_for": "ctx.race([handle, ctx.sleep(seconds)])", "timeout": "ctx.race([handle, ctx.sleep(seconds)])",
    "wait": "ctx.any(handles), ctx.race(handles) or ctx.as_completed(handles)",
    "as_completed": "ctx.as_completed(handles)", "create_task": "ctx.run(fn, *args)",
    "ensure_future": "ctx.run(fn, *args)", "shield": "ctx.run(fn, *args)",
}


class AsyncioInWorkflow(RunnerError, TypeError):
    """A workflow used asyncio's own scheduling, which nothing records: on a replay or after
    a crash it would run again, or be lost. The message names the ctx call to use."""

    @classmethod
    def called(cls, function: str, attribute: str) -> AsyncioInWorkflow:
        what = f"asyncio.{function}()" if function else f"the event loop's {attribute}"
        instead = _DURABLE.get(function, "ctx.run, ctx.sleep, ctx.all, ctx.any or ctx.race")
        return cls(f"a workflow cannot use {what}: nothing would record it; use {instead}")

    @classmethod
    def awaited(cls, workflow: str, yielded: object) -> AsyncioInWorkflow:
        what = "asyncio.sleep(0) or a bare yield" if yielded is None else repr(yielded)
        return cls(f"workflow {workflow} awaited {what}: a workflow may only await ctx handles "
                   f"(ctx.run, ctx.sleep, ctx.all, ctx.any, ctx.race)")
