"""Run every example end to end through the real CLI and check what it must return.

`python -m examples` prints one PASS/FAIL line per example and exits 1 on any failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from examples.notify import read_outbox

ROOT = Path(__file__).resolve().parent.parent
APPS = "examples.notify,examples.fan_out,examples.fanout_rpc,examples.factorial,examples.quotes"
TIMEOUT = 120.0


class CheckFailed(Exception):
    """An example returned something other than what it must."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


@dataclass(frozen=True)
class Example:
    label: str
    func: str
    args: list[Any]
    check: Callable[[Any, Path], None]  # (result, outbox path); raises CheckFailed


def check_notify(expected_push_sends: int) -> Callable[[Any, Path], None]:
    def check(result: Any, outbox: Path) -> None:
        expect(result["channels_notified"] == 4, f"channels_notified: {result}")
        channels = [r["channel"] for r in result["results"]]
        expect(channels == ["email", "sms", "slack", "push"], f"result channels: {channels}")
        expect(result["slowest_ms"] == max(r["ms"] for r in result["results"]), "slowest_ms")
        sends = read_outbox(outbox)
        counts = Counter(line["channel"] for line in sends)
        wanted = {"email": 1, "sms": 1, "slack": 1, "push": expected_push_sends}
        expect(counts == wanted, f"outbox sends {dict(counts)}, want {wanted}")
        keys = {r["channel"]: r["idempotency_key"] for r in result["results"]}
        for line in sends:
            expect(keys[line["channel"]] == line["promise_id"], f"idempotency key of {line}")

    return check


def check_equal(want: Any) -> Callable[[Any, Path], None]:
    def check(result: Any, outbox: Path) -> None:
        expect(result == want, f"got {result!r}, want {want!r}")

    return check


ITEMS = [{"id": i, "data": f"item-{i}"} for i in range(1, 21)]
CHANNELS = ["email", "sms", "slack", "push", "webhook"]
EXAMPLES = [
    Example("notify", "notify_all", [{"order_id": "order-42"}], check_notify(1)),
    Example("notify --crash", "notify_all", [{"order_id": "order-43"}, True], check_notify(2)),
    Example(
        "fan_out_fan_in x20",
        "fan_out_fan_in",
        [ITEMS],
        check_equal(
            [{"id": i["id"], "output": f"Processed: {i['data']} (item #{i['id']})"} for i in ITEMS]
        ),
    ),
    Example(
        "fanout x5",
        "fanout",
        [CHANNELS, "ship it"],
        check_equal({"delivered": [{"channel": c, "ok": True} for c in CHANNELS]}),
    ),
    Example("factorial(20)", "factorial", [20], check_equal(2432902008176640000)),
    Example(
        "best_quote (first good answer, nobody approves in 1 s)",
        "best_quote",
        [{"id": "q-1", "item": "lamp"}, None, 2.0, 1.0],
        check_equal({"request": "q-1", "quote": {"provider": "quick", "item": "lamp", "price": 42},
                     "approved": False, "why": "no approval in time"}),
    ),
]


def invoke(func: str, args: list[Any], workdir: Path) -> Any:
    """`runner invoke` in a fresh process on a fresh store; the result it printed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["RUNNER_APP"] = APPS
    env["NOTIFY_OUTBOX"] = str(workdir / "outbox.jsonl")  # beside the store, not inside it
    command = [sys.executable, "-m", "runner", "invoke", func, "--json"]
    command += ["--store", str(workdir / "store")]
    for arg in args:
        command += ["--arg", json.dumps(arg)]
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    if done.returncode != 0:
        raise CheckFailed(f"exit {done.returncode}: {done.stderr.strip() or done.stdout.strip()}")
    printed = json.loads(done.stdout)
    # Accept either the bare value or the settled promise record carrying it.
    if isinstance(printed, dict) and {"id", "state", "value"} <= printed.keys():
        expect(printed["state"] == "resolved", f"promise {printed['state']}: {printed['value']}")
        return printed["value"]
    return printed


def run(example: Example, workdir: Path) -> str | None:
    """None if the example passed, else why it failed."""
    try:
        result = invoke(example.func, example.args, workdir)
        example.check(result, workdir / "outbox.jsonl")
    except subprocess.TimeoutExpired:
        return f"no result within {TIMEOUT:.0f}s"
    except (CheckFailed, ValueError, KeyError, TypeError, OSError) as error:
        return f"{type(error).__name__}: {error}"
    return None


def main() -> int:
    failures = 0
    with tempfile.TemporaryDirectory(prefix="runner-examples-") as tmp:
        for number, example in enumerate(EXAMPLES):
            workdir = Path(tmp) / str(number)
            workdir.mkdir()
            started = time.monotonic()
            problem = run(example, workdir)
            elapsed = time.monotonic() - started
            if problem is None:
                print(f"PASS {example.label} ({elapsed:.2f}s)")
            else:
                failures += 1
                print(f"FAIL {example.label} ({elapsed:.2f}s): {problem}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
