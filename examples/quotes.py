"""Ask several providers at once, take the first good quote or give up at a deadline, then
wait a while for a person to approve it.

    runner invoke best_quote --id q-7 --arg '{"id": "q-7", "item": "lamp"}'
    runner promises resolve approve-q-7 --value true    # in another shell, within 30 s

Every wait is durable: the providers are children, the deadline and the approval window
are timers, the approval is a promise named `approve-<request id>` so the approver knows
its id in advance. Kill the workers at any point: the run resumes where it was, and a
replay takes the same branch (which provider won, whether the deadline came first).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from runner import Retry, function

if TYPE_CHECKING:
    from runner.context import Context

PROVIDERS = [  # the default: one down, one quick, one too slow for the deadline
    {"name": "down", "delay": 0.0, "price": 0, "fails": True},
    {"name": "quick", "delay": 0.2, "price": 42},
    {"name": "slow", "delay": 3.0, "price": 40},
]


class ProviderDown(Exception):
    """A provider that cannot quote."""


@function(retry=Retry.none())
def ask_provider(provider: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    time.sleep(provider["delay"])
    if provider.get("fails"):
        raise ProviderDown(f"{provider['name']} is down")
    return {"provider": provider["name"], "item": request["item"], "price": provider["price"]}


@function
async def best_quote(ctx: Context, request: dict[str, Any], providers: list[dict[str, Any]] | None = None,
                     deadline: float = 2.0, approval_window: float = 30.0) -> dict[str, Any]:
    asks = [ctx.run(ask_provider, p, request).options(id=f"{ctx.id}-{p['name']}",
                                                      retry=Retry(attempts=2, delay=0.0),
                                                      timeout=deadline)
            for p in providers or PROVIDERS]
    quote = await first_good(ctx, asks, ctx.sleep(deadline))
    if quote is None:
        return {"request": request["id"], "quote": None, "approved": False, "why": "no quote in time"}
    approval = ctx.promise(id=f"approve-{request['id']}", quote=quote)
    decision = await ctx.race([approval, ctx.sleep(approval_window)])  # a timeout: a race with a sleep
    why = "approved" if decision else "no approval in time" if decision is None else "refused"
    return {"request": request["id"], "quote": quote, "approved": bool(decision), "why": why}


async def first_good(ctx: Context, asks: list[Any], timer: Any) -> dict[str, Any] | None:
    """The first quote to arrive, skipping providers that fail; None once the timer fires first."""
    async for done in ctx.as_completed([*asks, timer]):
        if done is timer:
            return None
        try:
            quote: dict[str, Any] = await done
            return quote
        except (ProviderDown, TimeoutError):
            continue
    return None
