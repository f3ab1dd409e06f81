"""Recursive factorial: each level is a child workflow, so the call graph is n deep.

While a level waits for the one below it holds no worker, which is what lets a deep
recursion finish on two workers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runner import function

if TYPE_CHECKING:
    from runner.context import Context


@function
async def factorial(ctx: Context, n: int) -> int:
    if n <= 1:
        return 1
    return n * await ctx.run(factorial, n - 1)
