"""A user's app, not ours: a checkout whose steps record their effects through runner.effects.

`runner chaos --app tests.apps.shop checkout --arg '{"id": "o-1"}'` judges it with nothing
of the notify example: checkout reserves stock and charges the card at once, then ships
(a workflow of its own: pack, then send the email). Each step takes the seconds named in
the order's "seconds" (else its default), so a test can put steps on either side of a kill.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from runner import current, effects, function

if TYPE_CHECKING:
    from runner.context import Context

SECONDS = {"reserve": 0.1, "charge": 0.2, "pack": 1.5, "email": 0.2}


def _step(name: str, order: dict[str, Any]) -> dict[str, Any]:
    """Do the step's work (a sleep), then record it: what the outside world would have seen."""
    time.sleep(order.get("seconds", {}).get(name, SECONDS[name]))
    effects.record(name, order=order["id"])
    return {"step": name, "key": current().id}


@function
def reserve(order: dict[str, Any]) -> dict[str, Any]:
    return _step("reserve", order)


@function
def charge(order: dict[str, Any]) -> dict[str, Any]:
    return _step("charge", order)


@function
def pack(order: dict[str, Any]) -> dict[str, Any]:
    return _step("pack", order)


@function
def email(order: dict[str, Any]) -> dict[str, Any]:
    return _step("email", order)


@function
async def ship(ctx: Context, order: dict[str, Any]) -> list[dict[str, Any]]:
    packed = await ctx.run(pack, order)
    return [packed, await ctx.run(email, order)]


@function
async def checkout(ctx: Context, order: dict[str, Any]) -> dict[str, Any]:
    reserved, charged = ctx.run(reserve, order), ctx.run(charge, order)
    paid = [await reserved, await charged]
    return {"order": order["id"], "paid": paid, "shipped": await ctx.run(ship, order)}
