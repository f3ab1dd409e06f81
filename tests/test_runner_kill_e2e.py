"""Crashes, end to end: SIGKILL of a worker, of a supervisor, of both, and replay after a restart.

The notify outbox counts how often each channel really ran. A channel records its send
after its delay, so a push killed mid-flight leaves no line: only its re-execution does.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import pytest

from runner.owners import gone, owner_pid
from tests.e2e_support import CHANNELS, Workspace, event, result_of
from tests.helpers import kill_group, wait_until

PUSH = 1.5  # seconds push takes: long enough to be killed mid-flight, short enough to wait for


def submit_notify(ws: Workspace, root: str) -> None:
    """Create the run with --no-wait: the supervisor already running picks it up."""
    done = ws.cli("invoke", "notify_all", "--no-wait", "--id", root,
                  "--arg", json.dumps(event(root, email=0, sms=0, slack=0, push=PUSH)))
    assert (done.returncode, done.stdout.strip()) == (0, root), done.stderr


def push_in_flight(ws: Workspace, root: str) -> str:
    """Wait until email, SMS and Slack are settled and push is claimed; the claim's owner."""
    def ready() -> str | None:
        return ws.claim_of(f"{root}.3") if ws.settled(f"{root}.0", f"{root}.1", f"{root}.2") else None

    owner = wait_until(ready, timeout=20, message=lambda: f"push never in flight: {ws.store.claims()}")
    assert owner is not None
    return owner


def attach(ws: Workspace, root: str) -> Any:
    """Wait for the run's result by invoking its id again (it attaches, never reruns)."""
    return result_of(ws.invoke("notify_all", event(root, email=0, sms=0, slack=0, push=PUSH),
                               promise_id=root))


def resumed_after(ws: Workspace, root: str) -> float:
    """Seconds from the settling of the run's last child to the settling of the run itself.

    Normally a few milliseconds: the workflow is woken by its child. A workflow left
    waiting for the worker that had it in memory, dead by then, would take AFFINITY_GRACE.
    """
    settled = [c.settled_at for c in ws.store.children(root)]
    finished = ws.get(root).settled_at
    assert finished is not None and None not in settled
    gap = finished - max(t for t in settled if t is not None)
    print(f"\n{root}: the workflow finished {gap * 1000:.0f} ms after its last child")
    return gap


def test_sigkill_of_the_worker_running_a_branch_reruns_that_branch_alone(any_ws: Workspace) -> None:
    supervisor = any_ws.start(workers=2)
    submit_notify(any_ws, "kw")
    victim = owner_pid(push_in_flight(any_ws, "kw"))
    killed_at = time.time()
    os.kill(victim, signal.SIGKILL)

    result = attach(any_ws, "kw")
    assert result["channels_notified"] == 4
    assert any_ws.deliveries() == {channel: 1 for channel in CHANNELS}
    push = next(line for line in any_ws.sends() if line["channel"] == "push")
    assert push["pid"] != victim and push["promise_id"] == "kw.3"
    assert all(line["time"] < killed_at for line in any_ws.sends() if line["channel"] != "push")
    # The outbox line is written after push's delay: its start is that time minus its duration.
    rerun_after = push["time"] - result["results"][3]["ms"] / 1000 - killed_at
    print(f"\npush ran again {rerun_after * 1000:.0f} ms after its worker's SIGKILL (target 100 ms)")
    assert rerun_after < 1.0

    def replaced() -> bool:
        workers = any_ws.supervisor().get("workers", [])
        return len(workers) == 2 and victim not in workers

    wait_until(replaced, timeout=10, message="the killed worker was not replaced")
    assert gone(victim) and supervisor.poll() is None
    assert resumed_after(any_ws, "kw") < 0.5, "the workflow waited for the worker that died"


@pytest.mark.parametrize("kill", ["process group", "supervisor alone"])
def test_sigkill_of_the_supervisor_then_a_restart_completes_the_run(any_ws: Workspace, kill: str) -> None:
    """Push reruns after the restart; email, SMS and Slack, settled before the kill, do not."""
    first = any_ws.start(workers=2, name="first")
    submit_notify(any_ws, "ks")
    push_owner = owner_pid(push_in_flight(any_ws, "ks"))
    workers = any_ws.supervisor()["workers"]
    assert push_owner in workers
    if kill == "process group":
        kill_group(first)
    else:
        # Its workers must notice (parent-death signal) and stop before writing anything more.
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        wait_until(lambda: all(gone(pid) for pid in workers), timeout=5,
                   message=lambda: f"orphaned workers outlived their supervisor: {workers}")
    assert all(gone(pid) for pid in [first.pid, *workers])
    assert any_ws.deliveries() == {"email": 1, "sms": 1, "slack": 1}
    assert not any_ws.settled("ks.3")

    restarted_at = time.time()
    any_ws.start(workers=2, name="second")
    result = attach(any_ws, "ks")

    assert result["channels_notified"] == 4
    assert any_ws.deliveries() == {channel: 1 for channel in CHANNELS}
    push = next(line for line in any_ws.sends() if line["channel"] == "push")
    assert push["pid"] not in workers
    rerun_after = push["time"] - result["results"][3]["ms"] / 1000 - restarted_at
    print(f"\npush ran again {rerun_after * 1000:.0f} ms after `runner start` was launched")
    assert resumed_after(any_ws, "ks") < 0.5, "the workflow waited for a worker of the dead generation"


def test_a_second_supervisor_on_the_store_exits_3_with_one_line(ws: Workspace) -> None:
    first = ws.start(workers=1)
    done = ws.cli("start", "--workers", "1", timeout=30)

    assert done.returncode == 3, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("runner: error: ") and "already running" in done.stderr
    assert "Traceback" not in done.stderr
    assert first.poll() is None and ws.supervisor()["pid"] == first.pid


def test_replay_down_another_path_is_parked_until_a_supervisor_starts_with_fixed_code(
        ws: Workspace) -> None:
    """The workflow's first child depends on $E2E_BRANCH; it changes across a crash and restart."""
    gate = ws.root / "gate"
    first = ws.start(workers=2, env={"E2E_BRANCH": "a"}, name="first")
    done = ws.cli("invoke", "branchy", "--no-wait", "--id", "nd", "--arg", json.dumps(str(gate)))
    assert done.returncode == 0, done.stderr
    wait_until(lambda: ws.claim_of("nd.0"), timeout=20, message="the first child never ran")
    task = ws.store.task("nd")
    assert task is not None and task.state == "waiting"  # suspended on its child, holding no worker

    kill_group(first)
    gate.touch()  # the child, run again, now returns at once
    second = ws.start(workers=2, env={"E2E_BRANCH": "b"}, name="second")
    done = ws.invoke("branchy", str(gate), promise_id="nd", env={"E2E_BRANCH": "b"})

    assert done.returncode == 4, done.stderr  # parked: not rejected, and invoke does not hang
    assert done.stdout == "" and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("runner: error: run nd is parked: non-determinism in nd at child 0")
    assert "skip_gate" in done.stderr and "wait_for_gate" in done.stderr
    assert "'runner promises retry nd'" in done.stderr
    assert ws.get("nd").state == "pending"
    # Nothing of the other path was recorded or run: the recorded child is the only one.
    children = ws.store.children("nd")
    assert [(c.id, c.func, c.value) for c in children] == [("nd.0", "wait_for_gate", "opened")]

    # The code is fixed (the branch is "a" again): the next supervisor resumes it at its start.
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=20) == 0, ws.stderr("second")
    ws.start(workers=2, env={"E2E_BRANCH": "a"}, name="third", extra=("--log-level", "info"))
    assert result_of(ws.invoke("branchy", str(gate), promise_id="nd", env={"E2E_BRANCH": "a"})) == "opened"
    assert "resumed 1 parked workflows: nd" in ws.stderr("third")
    assert [c.id for c in ws.store.children("nd")] == ["nd.0"]


@pytest.mark.parametrize("signals", [1, 2])
def test_sigterm_drains_and_a_second_one_kills(ws: Workspace, signals: int) -> None:
    """One SIGTERM: push finishes and is written. Two: push dies and reruns after a restart."""
    first = ws.start(workers=2, name="first", extra=("--log-level", "info"))
    submit_notify(ws, "dr")
    push_owner = owner_pid(push_in_flight(ws, "dr"))
    workers = ws.supervisor()["workers"]
    first.send_signal(signal.SIGTERM)
    if signals == 2:
        # Two signals sent back to back may merge into one: wait until the first was handled.
        wait_until(lambda: "draining" in ws.stderr("first"), timeout=10,
                   message=lambda: f"no drain: {ws.stderr('first')}")
        first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=20) == 0, ws.stderr("first")
    assert "supervisor stopped" in ws.stderr("first")
    assert all(gone(pid) for pid in workers)
    pushed = [line["pid"] for line in ws.sends() if line["channel"] == "push"]
    assert pushed == ([push_owner] if signals == 1 else [])  # drained: written; killed: not
    assert ws.settled("dr.3") == (signals == 1)

    ws.start(workers=2, name="second")
    assert attach(ws, "dr")["channels_notified"] == 4
    assert ws.deliveries() == {channel: 1 for channel in CHANNELS}
    if signals == 2:  # (after one, the workflow was woken before the restart)
        assert resumed_after(ws, "dr") < 0.5, "the workflow waited for a worker of the dead generation"


def test_a_killed_invoke_is_taken_over_by_the_next_invoke_of_its_id(ws: Workspace) -> None:
    """With no `runner start`, the invoke supervises; killed, the next invoke of the id finishes."""
    args = ["invoke", "notify_all", "--json", "--id", "em",
            "--arg", json.dumps(event("em", email=0, sms=0, slack=0, push=PUSH))]
    first = ws.background(*args, name="first")
    push_owner = owner_pid(push_in_flight(ws, "em"))
    kill_group(first)

    result = result_of(ws.cli(*args))
    assert result["channels_notified"] == 4
    assert ws.deliveries() == {channel: 1 for channel in CHANNELS}
    assert next(line["pid"] for line in ws.sends() if line["channel"] == "push") != push_owner
    assert resumed_after(ws, "em") < 0.5, "the workflow waited for a worker of the killed invoke"


def test_an_invoke_leaving_hands_its_embedded_supervisor_to_the_next(ws: Workspace) -> None:
    """Two invokes, no `runner start`: the first supervises both, finishes first, and leaves."""
    def invoke(root: str, push: float) -> list[str]:
        return ["invoke", "notify_all", "--json", "--id", root,
                "--arg", json.dumps(event(root, email=0, sms=0, slack=0, push=push))]

    quick = ws.background(*invoke("quick", 0.3), name="quick")
    wait_until(lambda: ws.store.supervisor() and ws.supervisor().get("pid") == quick.pid
               and ws.store.get("quick") is not None, timeout=20,
               message=lambda: f"the first invoke did not supervise: {ws.stderr('quick')}")
    slow = ws.background(*invoke("slow", PUSH), name="slow")

    quick_out, _ = quick.communicate(timeout=30)
    slow_out, _ = slow.communicate(timeout=30)
    assert (quick.returncode, slow.returncode) == (0, 0), ws.stderr("quick") + ws.stderr("slow")
    assert json.loads(quick_out)["order_id"] == "quick" and json.loads(slow_out)["order_id"] == "slow"
    sent = sorted((line["promise_id"], line["channel"]) for line in ws.sends())
    assert sent == sorted((f"{root}.{i}", channel) for root in ("quick", "slow")
                          for i, channel in enumerate(CHANNELS))
