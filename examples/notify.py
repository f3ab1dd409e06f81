"""Notify one order on four channels at once; a retry of one never re-sends the others.

Each send is recorded through `runner.effects` (so `runner chaos` can judge it from
outside the store) and appended to an outbox file of its own, so a test can count how
often each channel really executed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner import Retry, current, effects, function

if TYPE_CHECKING:
    from runner.context import Context

OUTBOX_ENV = "NOTIFY_OUTBOX"
DEFAULT_DELAYS = {"email": 0.3, "sms": 0.2, "slack": 0.1, "push": 0.4}


def outbox_path(store: Path) -> Path:
    """$NOTIFY_OUTBOX if set, else `outbox.jsonl` in the store directory."""
    override = os.environ.get(OUTBOX_ENV)
    return Path(override) if override else store / "outbox.jsonl"


def read_outbox(path: Path | str) -> list[dict[str, Any]]:
    """Every send recorded in the outbox, oldest first."""
    return effects.read(path)


def _record(channel: str, event: dict[str, Any]) -> None:
    """One line in the effects journal, the same line in the outbox: one user of the journal's API."""
    line = effects.record(channel, channel=channel, order_id=event.get("order_id"))
    effects.append(outbox_path(current().store), line)


def _send(channel: str, event: dict[str, Any]) -> dict[str, Any]:
    """Pretend to call the channel's provider: wait its delay, record the send."""
    started = time.monotonic()
    time.sleep(event.get("delays", {}).get(channel, DEFAULT_DELAYS[channel]))
    _record(channel, event)
    return {
        "channel": channel,
        "success": True,
        "ms": round((time.monotonic() - started) * 1000),
        # The promise id is stable across retries and crashes: what a real provider
        # would take as its idempotency key.
        "idempotency_key": current().id,
    }


@function
def send_email(event: dict[str, Any]) -> dict[str, Any]:
    return _send("email", event)


@function
def send_sms(event: dict[str, Any]) -> dict[str, Any]:
    return _send("sms", event)


@function
def send_slack(event: dict[str, Any]) -> dict[str, Any]:
    return _send("slack", event)


@function(retry=Retry(attempts=3, delay=0.05))
def send_push(event: dict[str, Any], simulate_crash: bool = False) -> dict[str, Any]:
    """With `simulate_crash`, the first attempt fails after being recorded; the retry succeeds."""
    result = _send("push", event)
    if simulate_crash and current().attempt == 1:
        raise ConnectionError("push provider unavailable")
    return result


@function
async def notify_all(
    ctx: Context, event: dict[str, Any], simulate_crash: bool = False
) -> dict[str, Any]:
    # Fan-out: each ctx.run returns a handle at once, so all four channels start together.
    f_email = ctx.run(send_email, event)
    f_sms = ctx.run(send_sms, event)
    f_slack = ctx.run(send_slack, event)
    f_push = ctx.run(send_push, event, simulate_crash)
    # Fan-in: if push retries, email, sms and slack stay settled and do not re-send.
    email = await f_email
    sms = await f_sms
    slack = await f_slack
    push = await f_push
    results = [email, sms, slack, push]
    # No wall time here: a replayed workflow's clock would measure the replay, not the
    # run. The caller measures wall time; these sums come from the recorded results.
    durations = [result["ms"] for result in results]
    return {
        "order_id": event["order_id"],
        "channels_notified": sum(1 for result in results if result.get("success")),
        "results": results,
        "sum_ms": sum(durations),
        "slowest_ms": max(durations),
    }
