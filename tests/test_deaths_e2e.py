"""A death is an attempt, a killed branch jumps the queue, a deadline holds: real processes.

The leaves (tests/apps/e2e.py) write one trace line per execution, with the attempt the
worker gave them, so the test counts executions across worker processes.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from runner.owners import owner_pid
from runner.store import NewPromise
from tests.e2e_support import Workspace
from tests.helpers import wait_until

BACKLOG = 5_000


def traces(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_leaf_that_kills_its_worker_runs_exactly_its_attempts_then_is_rejected(ws: Workspace) -> None:
    trace = ws.root / "deaths.jsonl"
    done = ws.invoke("kills_its_worker", str(trace), promise_id="doomed")
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["type"] == "WorkerDied"
    assert [line["attempt"] for line in traces(trace)] == [1, 2, 3], "Retry(attempts=3): three runs"
    assert len({line["pid"] for line in traces(trace)}) == 3, "each attempt ran in a worker of its own"

    shown = json.loads(ws.cli("promises", "get", "doomed", "--json").stdout)
    assert (shown["state"], shown["attempt"], shown["task"]) == ("rejected", 3, None)
    assert shown["error"]["type"] == "WorkerDied"
    assert "died running attempt 3 (killed by SIGKILL)" in shown["error"]["message"]


def test_unlimited_retries_cannot_crash_loop_faster_than_the_backoff(ws: Workspace) -> None:
    trace = ws.root / "loop.jsonl"
    ws.start(workers=2)
    done = ws.cli("invoke", "kills_its_worker_forever", "--no-wait", "--id", "loop",
                  "--arg", json.dumps(str(trace)))
    assert done.returncode == 0, done.stderr
    runs = wait_until(lambda: traces(trace)[:4] if len(traces(trace)) >= 4 else None, timeout=20,
                      message=lambda: f"fewer than 4 runs: {traces(trace)}")
    starts = [line["time"] for line in runs]
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    print(f"\ngaps between runs after deaths: {[round(g, 3) for g in gaps]} s (delay 0.5 s)")
    assert [line["attempt"] for line in runs] == [1, 2, 3, 4]
    assert gaps[0] < 0.5, "the first re-run after a death is immediate"
    assert all(gap >= 0.5 for gap in gaps[1:]), "a death after a death waits the policy's delay"


def test_a_branch_killed_behind_a_backlog_runs_again_within_a_second(ws: Workspace) -> None:
    trace = ws.root / "victim.jsonl"
    # Oldest first, the victim is claimed at once; 5,000 naps of 0.2 s queue behind it
    # (16 slots on 2 workers: about 60 s to drain, so at the back it would wait a minute).
    ws.store.create([NewPromise("victim", "traced_nap", [str(trace), 60]),
                     *(NewPromise(f"fill-{i}", "nap", [0.2]) for i in range(BACKLOG))])
    ws.start(workers=2)
    wait_until(lambda: traces(trace), timeout=20, message="the victim never started")
    victim = owner_pid(ws.claim_of("victim"))
    assert victim is not None
    killed_at = time.time()
    os.kill(victim, signal.SIGKILL)
    second = wait_until(lambda: traces(trace)[1:], timeout=20, message="the victim never ran again")[0]
    rerun_after = second["time"] - killed_at
    ready = ws.store.stats().ready
    print(f"\nkilled branch ran again {rerun_after * 1000:.0f} ms after the SIGKILL, {ready} still ready")
    assert second["attempt"] == 2 and second["pid"] != victim
    assert ready > BACKLOG / 2, "the backlog was still there"
    assert rerun_after < 1.0


def test_invoke_of_a_leaf_with_a_timeout_returns_at_the_deadline(ws: Workspace) -> None:
    done = ws.cli("invoke", "nap", "--json", "--id", "sleepy", "--timeout", "1s", "--arg", "10")
    returned = time.time()
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["type"] == "TimeoutError"
    root = ws.get("sleepy")
    assert root.state.value == "rejected_timedout" and root.settled_at == root.timeout
    assert root.timeout is not None and returned - root.created_at < 2.0, "returned at the deadline"
