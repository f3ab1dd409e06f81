"""Dispatch by registered name: one `send` per channel, run by whichever worker is free.

A failed delivery is reported in the result rather than failing the whole fan-out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runner import function

if TYPE_CHECKING:
    from runner.context import Context


@function(name="send")
def send(args: dict[str, Any]) -> dict[str, Any]:
    """Stands in for a provider call (Twilio, SES, Slack, ...)."""
    return {"channel": args["channel"], "ok": True}


@function
async def fanout(ctx: Context, channels: list[str], message: str) -> dict[str, Any]:
    handles = [ctx.rpc("send", {"channel": channel, "message": message}) for channel in channels]
    delivered = []
    for channel, handle in zip(channels, handles, strict=True):
        try:
            delivered.append(await handle)
        except Exception as error:  # the child's recorded failure, not a suspension
            delivered.append({"channel": channel, "ok": False, "reason": str(error)})
    return {"delivered": delivered}
