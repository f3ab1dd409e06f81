"""A durable fan-out runner: workflows spawn durable children that any worker may run.

    from runner import function

    @function
    async def notify_all(ctx, event):
        handles = [ctx.run(send_email, event), ctx.run(send_sms, event)]
        return [await h for h in handles]
"""

from .context import Context, Current, Handle, current
from .errors import Canceled, ChildFailed, NonDeterminism, RunnerError, TimedOut, WorkerDied
from .registry import function, registry
from .retry import Retry

__all__ = ["Canceled", "ChildFailed", "Context", "Current", "Handle", "NonDeterminism", "Retry",
           "RunnerError", "TimedOut", "WorkerDied", "current", "function", "registry"]
