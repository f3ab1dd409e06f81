"""Human in the loop: a workflow that waits, holding no worker, until a person decides.

    runner invoke approval_flow --id refund-7 --arg '{"amount": 120}'
    runner promises resolve refund-7.0 --value '"yes"'      # in another shell

The approval is a child no function runs (`ctx.promise()`), so its id is the run's id
plus its position: `refund-7.0`. Rejecting it (`runner promises reject refund-7.0
--error "too much"`) fails the run with that error; cancelling it raises
runner.errors.Canceled here, which this workflow lets fail the run as well.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runner import function

if TYPE_CHECKING:
    from runner.context import Context


@function
def apply_decision(request: dict[str, Any], decision: Any) -> dict[str, Any]:
    return {"request": request, "decision": decision, "approved": decision in ("yes", True)}


@function
async def approval_flow(ctx: Context, request: dict[str, Any] | None = None) -> dict[str, Any]:
    decision = await ctx.promise(kind="approval")  # waits for `runner promises resolve <run>.0`
    return await ctx.run(apply_decision, request or {}, decision)
