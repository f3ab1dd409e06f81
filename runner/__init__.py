"""A durable fan-out runner: workflows spawn durable children that any worker may run.

    from runner import function

    @function
    async def notify_all(ctx, event):
        handles = [ctx.run(send_email, event), ctx.run(send_sms, event)]
        return [await h for h in handles]

and from any Python code (a web handler, a script, a test):

    client = Client(store=".runner", app="myapp")
    print(client.start(notify_all, {"order_id": "o-1"}).result(timeout=30))
"""

from .client import Client, RunHandle
from .context import Context, Current, Handle, current
from .errors import Canceled, ChildFailed, NonDeterminism, NoSupervisor, RunnerError, TimedOut, WorkerDied
from .history import RunHistory
from .local import CrashTestError, LocalSupervisor
from .registry import function, registry
from .retry import Retry

__all__ = ["Canceled", "ChildFailed", "Client", "Context", "CrashTestError", "Current", "Handle",
           "LocalSupervisor", "NoSupervisor", "NonDeterminism", "Retry", "RunHandle", "RunHistory",
           "RunnerError", "TimedOut", "WorkerDied", "current", "function", "registry"]
