"""Process any number of items in parallel, one durable child each, results in order."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runner import function

if TYPE_CHECKING:
    from runner.context import Context


@function
def process_item(item: dict[str, Any]) -> dict[str, Any]:
    return {"id": item["id"], "output": f"Processed: {item['data']} (item #{item['id']})"}


@function
async def fan_out_fan_in(ctx: Context, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    handles = [ctx.run(process_item, item) for item in items]  # all spawned before any wait
    return [await handle for handle in handles]
