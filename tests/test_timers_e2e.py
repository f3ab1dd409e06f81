"""Durable sleep and waiting on several children, with real supervisors and workers.

Timing claims are measured from the store: a timer's lag is its resolved settled_at
minus its due time. The machine is shared and noisy, so bounds are on medians and
generous, and the figures measured are printed (`pytest -s`) for the report.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from typing import Any

import pytest

from runner.combinators import DECISION
from runner.store import TIMER, TIMER_DUE, Promise, State, codec
from runner.store.state import CLAIM
from tests.e2e_support import Workspace, result_of
from tests.helpers import kill_group, wait_until


def timers(ws: Workspace) -> list[Promise]:
    return [p for p in ws.store.search(limit=100_000).items if p.func == TIMER]


def lags_ms(found: list[Promise]) -> list[float]:
    return sorted((p.settled_at or 0.0) - p.tags[TIMER_DUE] for p in found if p.state is State.RESOLVED)


def test_timers_fire_within_a_few_milliseconds_of_their_due_time(ws: Workspace) -> None:
    ws.start(workers=2)
    assert result_of(ws.invoke("staggered", 20, 0.3, 0.037)) == 20
    lags = [lag * 1000 for lag in lags_ms(timers(ws))]
    print(f"timer lag over {len(lags)} timers: median {statistics.median(lags):.1f} ms, "
          f"max {lags[-1]:.1f} ms")
    assert len(lags) == 20 and lags[0] >= 0  # never early
    assert statistics.median(lags) < 50


def test_a_sleep_across_a_supervisor_kill_fires_once_at_the_next_start(ws: Workspace) -> None:
    first = ws.start(workers=2, name="first")
    done = ws.cli("invoke", "sleeper", "--no-wait", "--id", "nap", "--arg", "1.5")
    assert done.returncode == 0, done.stderr
    wait_until(lambda: ws.store.get("nap.1") is not None, timeout=20, message="the timer was never written")
    kill_group(first)
    due = ws.get("nap.1").tags[TIMER_DUE]
    wait_until(lambda: time.time() > due + 0.5, timeout=10)  # due while no supervisor runs
    assert ws.get("nap.1").state is State.PENDING
    started = time.time()
    ws.start(workers=2, name="second")
    result = result_of(ws.invoke("sleeper", 1.5, promise_id="nap"))
    fired = ws.get("nap.1")
    assert fired.state is State.RESOLVED and started <= (fired.settled_at or 0) < started + 5
    assert result["after"]["at"] >= fired.settled_at
    assert [p.func for p in ws.store.children("nap")] == ["stamp", TIMER, "stamp"]  # slept once


@pytest.mark.parametrize(("func", "specs", "want"), [
    ("all_of", [[0.2, 1], [0.0, 2], [0.1, 3]], {"values": [1, 2, 3]}),
    ("all_of", [[5, 1], [0.1, "bad", True], [0, 3]], {"failed": "bad"}),
    ("any_of", [[5, 1], [0.0, "bad", True], [0.2, 3]], {"value": 3}),
    ("any_of", [[0.3, "x", True], [0.0, "bad", True]], {"all_failed": ["bad", "x"]}),
    ("race_of", [[5, 1], [0.2, "bad", True], [0.4, 3]], {"failed": "bad"}),
    ("race_of", [[5, 1], [0.2, 2]], {"value": 2}),
    ("in_order", [[0.6, 1], [0.0, "bad", True], [0.3, 3]], ["failed: bad", 3, 1]),
    ("with_deadline", [5, 0.3], "timed out"),
    ("with_deadline", [0.0, 5], "done"),
])
def test_combinators_with_mixed_outcomes(ws: Workspace, func: str, specs: list[Any], want: Any) -> None:
    args = specs if func == "with_deadline" else [specs]
    assert result_of(ws.invoke(func, *args, extra=("--workers", "2"))) == want


def claims_of(ws: Workspace, promise_id: str) -> int:
    """How many times the log says `promise_id` was claimed (each segment opens with a header)."""
    count = 0
    for name in sorted(os.listdir(ws.store_dir / "log")):
        for _, payload in codec.frames((ws.store_dir / "log" / name).read_bytes()):
            ops = codec.unpack(payload)
            if isinstance(ops, list):
                count += sum(op[0] == CLAIM and op[1] == promise_id for op in ops)
    return count


def test_ctx_all_wakes_its_parent_once_for_all_its_children(ws: Workspace) -> None:
    ws.start(workers=2)
    assert result_of(ws.invoke("fan_all", 300, promise_id="fan")) == 300
    assert claims_of(ws, "fan") == 2  # its first run, and one wake-up once all 300 settled
    decisions = [p for p in ws.store.children("fan") if p.func == DECISION]
    assert [d.value for d in decisions] == [-1]


def test_a_race_replays_the_recorded_winner_after_a_crash(ws: Workspace) -> None:
    first = ws.start(workers=2, name="first")
    assert ws.cli("invoke", "race_then_branch", "--no-wait", "--id", "rc", "--arg", '"m"').returncode == 0
    wait_until(lambda: ws.store.get("rc.1") is not None, timeout=20, message="the race was never written")
    assert ws.cli("promises", "resolve", "rc.1", "--value", '"second"').returncode == 0
    # The decision is written with what the workflow does next: the hold promise.
    wait_until(lambda: ws.store.get("rc.3") is not None, timeout=20, message="the race was never decided")
    kill_group(first)
    assert ws.cli("promises", "resolve", "rc.0", "--value", '"first"').returncode == 0
    assert ws.cli("promises", "resolve", "rc.3", "--value", "null").returncode == 0
    ws.start(workers=2, name="second")
    result = result_of(ws.invoke("race_then_branch", "m", promise_id="rc"))
    assert result["tag"] == "m:second"
    decision = ws.get("rc.2")
    assert (decision.func, decision.value, decision.args[0]) == (DECISION, 1, "race")


@pytest.mark.parametrize(("func", "hint"), [
    ("uses_gather", "use ctx.all(handles)"),
    ("uses_sleep", "use ctx.sleep(seconds)"),
    ("uses_wait_for", "use ctx.race([handle, ctx.sleep(seconds)])"),
])
def test_asyncio_in_a_workflow_is_refused_naming_the_ctx_call(ws: Workspace, func: str, hint: str) -> None:
    done = ws.invoke(func, promise_id=func, extra=("--workers", "1"))
    assert done.returncode == 1, done.stderr
    error = json.loads(done.stdout)
    assert error["type"] == "AsyncioInWorkflow" and hint in error["message"], error
    assert "Task got bad yield" not in done.stderr and "never awaited" not in done.stderr, done.stderr
    assert ws.store.children(func) == []  # refused before anything was scheduled or written


def test_five_hundred_sleepers_on_two_workers_cost_disk_not_processes(ws: Workspace) -> None:
    ws.start(workers=2)
    started = time.monotonic()
    until = time.time() + 8  # the sleepers are all written well before (about 2 s here)
    assert ws.cli("invoke", "many_sleepers", "--no-wait", "--id", "many", "--arg", "500",
                  "--arg", str(until)).returncode == 0

    def all_asleep() -> bool:
        stats = ws.store.stats()
        return stats.waiting >= 501  # every sleeper and their parent, on disk

    wait_until(all_asleep, timeout=20, message=lambda: f"not all asleep: {ws.store.stats()}")
    assert time.time() < until, "the sleepers were written too slowly to all sleep at once"
    assert len(ws.supervisor()["workers"]) == 2 and not ws.store.claims()
    result = result_of(ws.invoke("many_sleepers", 500, until, promise_id="many", timeout=120))
    assert result == 500
    lags = lags_ms(timers(ws))
    print(f"500 sleepers: {time.monotonic() - started:.1f} s, timer lag median "
          f"{statistics.median(lags) * 1000:.1f} ms, p99 {lags[int(len(lags) * 0.99)] * 1000:.1f} ms")
    assert len(lags) == 500 and statistics.median(lags) < 0.5  # 500 due in the same instant
