"""Functions for the tests of several supervisors on one store (tests/test_pg_supervisors.py).

Each branch naps, leaving a line when it starts and when it returns, with its pid, so
a test knows which supervisor's worker ran what, and when, whatever the store says.
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any

from runner import function

from .tracing import trace

if TYPE_CHECKING:
    from runner.context import Context


@function
def partition_nap(path: str, index: int, seconds: float) -> dict[str, Any]:
    trace(path, event="start", time=time.time())
    time.sleep(seconds)
    trace(path, event="end", time=time.time())
    return {"index": index, "pid": os.getpid()}


@function
async def spread(ctx: Context, path: str, n: int, seconds: float) -> list[dict[str, Any]]:
    """n naps at once; the result lists them in order."""
    handles = [ctx.run(partition_nap, path, i, seconds) for i in range(n)]
    return [await handle for handle in handles]


def read_trace(path: str) -> list[dict[str, Any]]:
    """Every complete line (a line cut by a SIGKILL mid-write is no event)."""
    lines = []
    with open(path, encoding="utf-8") as f:
        for text in f:
            if text.endswith("\n"):
                lines.append(json.loads(text))
    return lines
