"""Stopping `runner invoke`: Ctrl-C drains its embedded supervisor and exits; a second kills.

Ctrl-C at a terminal signals the whole foreground process group, so these tests signal
the invoke's group (workers ignore SIGINT; the supervisor inside invoke handles it).
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from runner.owners import gone
from tests.e2e_support import CHANNELS, Workspace, event, result_of
from tests.helpers import wait_until
from tests.test_runner_kill_e2e import push_in_flight


def _invoke_args(root: str, push: float) -> list[str]:
    return ["invoke", "notify_all", "--json", "--id", root,
            "--arg", json.dumps(event(root, email=0, sms=0, slack=0, push=push))]


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_one_signal_drains_exits_and_the_run_finishes_later(ws: Workspace, sig: int, code: int) -> None:
    proc = ws.background(*_invoke_args("once", 1.5), name="once")
    push_in_flight(ws, "once")
    workers = ws.supervisor()["workers"]
    os.killpg(proc.pid, sig)
    assert proc.wait(timeout=20) == code, ws.stderr("once")
    stderr = ws.stderr("once")
    assert f"interrupted by {signal.Signals(sig).name}" in stderr and "Traceback" not in stderr
    assert "runner invoke notify_all --id once" in stderr
    assert all(gone(pid) for pid in workers)
    assert ws.settled("once.3"), "a drain lets the branch in flight finish and be written"
    assert not ws.settled("once"), "the run waits on disk for the next supervisor"

    result = result_of(ws.cli(*_invoke_args("once", 1.5)))  # attach: finishes, never reruns
    assert result["channels_notified"] == 4
    assert ws.deliveries() == {channel: 1 for channel in CHANNELS}


def test_a_second_sigint_kills_the_workers_at_once(ws: Workspace) -> None:
    proc = ws.background(*_invoke_args("twice", 30), "--log-level", "info", name="twice")
    push_in_flight(ws, "twice")
    workers = ws.supervisor()["workers"]
    started = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    # Two signals sent back to back may merge into one, as two key presses never do.
    wait_until(lambda: "draining" in ws.stderr("twice"), timeout=10,
               message=lambda: f"no drain: {ws.stderr('twice')}")
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=10) == 130, ws.stderr("twice")
    assert time.monotonic() - started < 5, "the second Ctrl-C must not wait for the 30 s branch"
    assert all(gone(pid) for pid in workers)
    assert not ws.settled("twice.3")


def test_timeout_returns_at_the_deadline_not_when_the_branch_ends(ws: Workspace) -> None:
    started = time.monotonic()
    done = ws.cli("invoke", "notify_all", "--json", "--id", "late", "--timeout", "1s",
                  "--arg", json.dumps(event("late", email=0, sms=0, slack=0, push=10)))
    elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    assert ws.get("late").state.value == "rejected_timedout"
    assert elapsed < 4, f"invoke waited {elapsed:.1f}s for a branch its run had abandoned"
    assert "push" not in ws.deliveries()
